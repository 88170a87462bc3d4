"""Straight-line programs over registers: a genotype for symbolic search (linear GP).

A :class:`Program` is a list of instructions ``r_out = op(r_a, r_b, c)`` over read-only input
registers (e.g. ``g``, ``m``, ``v``) and ``n_registers`` scratch registers that start at zero. The
first scratch register, ``u``, is the output. It is the representation of AutoML-Zero (Real et al.,
ICML 2020, arXiv 2003.03384), reduced to one elementwise function, and the space of update rules
that Lion's search explored (Chen et al., 2023, arXiv 2302.06675): ``u = sign(lerp(m, g, 0.9))``.

Notation: ``a``, ``b`` register operands, ``c`` an instruction's constant.

=========  ======  ==============================  =========================================
op         arity   computes                        note
=========  ======  ==============================  =========================================
add        2       a + b
sub        2       a − b
mul        2       a · b
div        2       a·b / (b² + 1e-16)              safe: a/b for |b| ≫ 1e-8, 0 at b = 0
max, min   2       elementwise max / min
lerp       2 + c   a + c·(b − a)                   c ∈ [0, 1]
neg        1       −a
abs        1       |a|
sign       1       sign(a)                         sign(0) = 0
square     1       a²
sqrt_abs   1       sqrt(|a|)
exp        1       exp(clip(a, −10, 10))           clipped so that no program overflows
tanh       1       tanh(a)
scale      1 + c   c · a                           c ∈ [−2, 2]
=========  ======  ==============================  =========================================

Evaluation works on numpy arrays and torch tensors alike (the ops exist under the same names in
both). :meth:`Program.structural_key` is the canonical text of the live instructions (dead code
dropped, registers renamed in definition order), the cheap structural hash tried before a
functional one (:mod:`optforge.search.hashing`).

Example::

    space = ProgramSpace(inputs=("g", "m"), n_registers=3, max_length=8)
    rng = np.random.default_rng(0)
    child = space.mutate(space.init(rng), rng)
    lion = Program.from_expression("sign(lerp(m, g, 0.9))", inputs=("g", "m"))
    str(lion)                                    # 'u = sign(lerp(m, g, 0.9))'
    lion(g=np.array([1.0, -2.0]), m=np.array([-0.5, 0.5]))   # array([ 1., -1.])
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from optforge._validation import check_int

__all__ = ["OPS", "Instruction", "Op", "Program", "ProgramSpace", "toy_domain"]

#: Safe-division smoothing: a·b / (b² + DIV_EPS) equals a/b to 1e-8 relative for |b| >= 1e-4.
DIV_EPS = 1e-16
#: exp's argument is clipped to [-EXP_CLIP, EXP_CLIP] (e^10 ≈ 2.2e4), so no program overflows.
EXP_CLIP = 10.0


@dataclass(frozen=True)
class Op:
    """One elementwise operation.

    Args:
        name: the op's name in programs and printed text.
        arity: register operands, 1 or 2.
        fn: ``fn(xp, a, b, c)`` with ``xp`` the ``numpy`` or ``torch`` module.
        const_range: ``(low, high)`` of the instruction constant, or ``None`` if unused.
    """

    name: str
    arity: int
    fn: Callable[[Any, Any, Any, float], Any]
    const_range: tuple[float, float] | None = None

    @property
    def has_const(self) -> bool:
        return self.const_range is not None


def _safe_div(xp: Any, a: Any, b: Any, c: float) -> Any:
    # Smooth instead of a branch: no division by zero, no warnings, identical in numpy and torch.
    return a * b / (b * b + DIV_EPS)


_OP_LIST = [
    Op("add", 2, lambda xp, a, b, c: a + b),
    Op("sub", 2, lambda xp, a, b, c: a - b),
    Op("mul", 2, lambda xp, a, b, c: a * b),
    Op("div", 2, _safe_div),
    Op("max", 2, lambda xp, a, b, c: xp.maximum(a, b)),
    Op("min", 2, lambda xp, a, b, c: xp.minimum(a, b)),
    Op("lerp", 2, lambda xp, a, b, c: a + c * (b - a), (0.0, 1.0)),
    Op("neg", 1, lambda xp, a, b, c: -a),
    Op("abs", 1, lambda xp, a, b, c: xp.abs(a)),
    Op("sign", 1, lambda xp, a, b, c: xp.sign(a)),
    Op("square", 1, lambda xp, a, b, c: a * a),
    Op("sqrt_abs", 1, lambda xp, a, b, c: xp.sqrt(xp.abs(a))),
    Op("exp", 1, lambda xp, a, b, c: xp.exp(xp.clip(a, -EXP_CLIP, EXP_CLIP))),
    Op("tanh", 1, lambda xp, a, b, c: xp.tanh(a)),
    Op("scale", 1, lambda xp, a, b, c: c * a, (-2.0, 2.0)),
]
#: Every built-in op by name.
OPS: dict[str, Op] = {op.name: op for op in _OP_LIST}


class Instruction(NamedTuple):
    """``r[out] = op(r[a], r[b], const)``; ``b`` is ignored by unary ops, ``const`` by ops without
    a constant (both are kept so that a mutation of the op can bring them back into use).

    Register indices: ``0 .. len(inputs) - 1`` are the inputs, then the scratch registers; the
    first scratch register (index ``len(inputs)``) is the output ``u``.
    """

    op: str
    out: int
    a: int
    b: int = 0
    const: float = 0.0


def _format_const(c: float) -> str:
    return f"{c:.4g}"


@dataclass(frozen=True)
class Program:
    """A straight-line program; the value of the output register ``u`` is its result.

    Args:
        instructions: the :class:`Instruction` s, executed in order.
        inputs: names of the read-only input registers (default ``("g", "m", "v")``).
        n_registers: scratch registers (>= 1), zero at the start; the first is the output ``u``,
            the others print as ``r1, r2, ...``.

    Call it with one array or tensor per input (keywords, or positionally in ``inputs`` order);
    it returns the output with the inputs' broadcast shape. Programs compare and hash by their
    instructions (exactly); use :meth:`structural_key` to ignore dead code and register names.
    """

    instructions: tuple[Instruction, ...]
    inputs: tuple[str, ...] = ("g", "m", "v")
    n_registers: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"inputs must be distinct names, at least one (got {self.inputs!r})")
        for name in self.inputs:
            if not isinstance(name, str) or not name.isidentifier() or name in OPS:
                raise ValueError(f"inputs must be identifiers that are not op names (got {name!r})")
        reserved = {self._register_name(len(self.inputs) + k) for k in range(self.n_registers)}
        if set(self.inputs) & reserved:
            raise ValueError(
                f"inputs must not reuse scratch register names {sorted(reserved)} "
                f"(got {self.inputs!r})"
            )
        check_int("n_registers", self.n_registers, low=1)
        n_all = len(self.inputs) + self.n_registers
        instructions = []
        for i, ins in enumerate(self.instructions):
            ins = Instruction(*ins)
            if ins.op not in OPS:
                raise ValueError(
                    f"instructions[{i}].op must be one of {sorted(OPS)} (got {ins.op!r})"
                )
            if not len(self.inputs) <= ins.out < n_all:
                raise ValueError(
                    f"instructions[{i}].out must be a scratch register in "
                    f"[{len(self.inputs)}, {n_all}) (got {ins.out})"
                )
            for field in ("a", "b"):
                r = getattr(ins, field)
                if (
                    isinstance(r, bool)
                    or not isinstance(r, (int, np.integer))
                    or not (0 <= r < n_all)
                ):
                    raise ValueError(
                        f"instructions[{i}].{field} must be a register in [0, {n_all}) (got {r!r})"
                    )
            if not math.isfinite(ins.const):
                raise ValueError(f"instructions[{i}].const must be finite (got {ins.const})")
            instructions.append(
                Instruction(ins.op, int(ins.out), int(ins.a), int(ins.b), float(ins.const))
            )
        object.__setattr__(self, "instructions", tuple(instructions))

    # -- naming ------------------------------------------------------------------------------

    @property
    def output(self) -> int:
        """Index of the output register ``u``."""
        return len(self.inputs)

    def _register_name(self, r: int) -> str:
        if r < len(self.inputs):
            return self.inputs[r]
        k = r - len(self.inputs)
        return "u" if k == 0 else f"r{k}"

    # -- liveness ------------------------------------------------------------------------------

    @functools.cached_property
    def live(self) -> tuple[int, ...]:
        """Indices of the instructions that affect the output (backward liveness), in order."""
        needed = {self.output}
        keep = []
        for i in range(len(self.instructions) - 1, -1, -1):
            ins = self.instructions[i]
            if ins.out not in needed:
                continue
            keep.append(i)
            needed.discard(ins.out)
            needed.add(ins.a)
            if OPS[ins.op].arity == 2:
                needed.add(ins.b)
        return tuple(reversed(keep))

    def simplified(self) -> Program:
        """The same function without dead code (instructions that do not reach ``u``)."""
        return Program(
            tuple(self.instructions[i] for i in self.live), self.inputs, self.n_registers
        )

    # -- evaluation ----------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        values = self._bind(args, kwargs)
        is_torch = any(isinstance(x, torch.Tensor) for x in values)
        xp: Any = torch if is_torch else np
        if is_torch:
            ref = next(x for x in values if isinstance(x, torch.Tensor))
            values = [torch.as_tensor(x, dtype=ref.dtype, device=ref.device) for x in values]
            zero = torch.zeros(
                torch.broadcast_shapes(*(x.shape for x in values)),
                dtype=ref.dtype,
                device=ref.device,
            )
        else:
            values = [np.asarray(x, dtype=np.result_type(x, np.float64)) for x in values]
            zero = np.zeros(
                np.broadcast_shapes(*(x.shape for x in values)), dtype=np.result_type(*values)
            )
        regs: list[Any] = list(values) + [zero] * self.n_registers
        for i in self.live:
            op, out, a, b, c = self.instructions[i]
            regs[out] = OPS[op].fn(xp, regs[a], regs[b], c)
        result = regs[self.output]
        # Keep the broadcast shape even when u is an input's broadcastable copy (e.g. u = g).
        return result + zero if result.shape != zero.shape else result

    def _bind(self, args: tuple, kwargs: dict) -> list[Any]:
        if args and kwargs:
            raise TypeError("pass the inputs either positionally or by keyword, not both")
        if args:
            if len(args) != len(self.inputs):
                raise TypeError(
                    f"expected {len(self.inputs)} inputs {self.inputs} (got {len(args)})"
                )
            return list(args)
        missing = [n for n in self.inputs if n not in kwargs]
        extra = [n for n in kwargs if n not in self.inputs]
        if missing or extra:
            raise TypeError(
                f"inputs must be exactly {self.inputs} (missing {missing}, unexpected {extra})"
            )
        return [kwargs[n] for n in self.inputs]

    # -- text ----------------------------------------------------------------------------------

    def _ssa(self) -> tuple[list[tuple[str, str, tuple[str, ...]]], str]:
        # Live instructions with registers renamed t0, t1, ... in definition order.
        sym = {r: self._register_name(r) for r in range(len(self.inputs))}
        lines = []
        for k, i in enumerate(self.live):
            op, out, a, b, c = self.instructions[i]
            spec = OPS[op]
            args = [sym.get(a, "0")] + ([sym.get(b, "0")] if spec.arity == 2 else [])
            if spec.has_const:
                args.append(repr(c))
            name = f"t{k}"
            lines.append((name, op, tuple(args)))
            sym[out] = name
        return lines, sym.get(self.output, "0")

    def structural_key(self) -> str:
        """Canonical text of the live instructions: dead code dropped, scratch registers renamed
        in definition order, constants at full precision. Equal keys ⇒ the same function;
        algebraically equal programs (``add(g, m)`` vs ``add(m, g)``) get different keys."""
        lines, out = self._ssa()
        body = ";".join(f"{n}={op}({','.join(args)})" for n, op, args in lines)
        return f"{','.join(self.inputs)}|{body}|{out}"

    def structural_hash(self) -> str:
        """128-bit blake2b hex digest of :meth:`structural_key`."""
        return hashlib.blake2b(self.structural_key().encode(), digest_size=16).hexdigest()

    def raw_key(self) -> str:
        """Text of every instruction, dead code included (the naive structural hash)."""
        parts = []
        for op, out, a, b, c in self.instructions:
            spec = OPS[op]
            args = [str(a)] + ([str(b)] if spec.arity == 2 else [])
            if spec.has_const:
                args.append(repr(c))
            parts.append(f"{out}={op}({','.join(args)})")
        return f"{','.join(self.inputs)}|{self.n_registers}|{';'.join(parts)}"

    def expression(self, max_chars: int = 400) -> str:
        """The output as one nested expression, e.g. ``sign(lerp(m, g, 0.9))``.

        Constants print with 4 significant digits. A value used twice is written twice; if the
        text would exceed ``max_chars``, :meth:`listing` of the live code is returned instead.
        """
        lines, out = self._ssa()
        text: dict[str, str] = {}
        for name, op, args in lines:
            spec = OPS[op]
            regs = [text.get(a, a) for a in args[: spec.arity]]
            if spec.has_const:
                regs.append(_format_const(float(args[-1])))
            text[name] = f"{op}({', '.join(regs)})"
            if len(text[name]) > max_chars:
                return self.listing(live_only=True)
        return text.get(out, out)

    def listing(self, live_only: bool = False) -> str:
        """One line per instruction (``r1 = mul(g, m)``), dead ones marked ``# dead``."""
        live = set(self.live)
        rows = []
        for i, (op, out, a, b, c) in enumerate(self.instructions):
            if live_only and i not in live:
                continue
            spec = OPS[op]
            args = [self._register_name(a)]
            if spec.arity == 2:
                args.append(self._register_name(b))
            if spec.has_const:
                args.append(_format_const(c))
            row = f"{self._register_name(out)} = {op}({', '.join(args)})"
            rows.append(row if i in live else row + "  # dead")
        return "\n".join(rows) if rows else "u = 0"

    def __str__(self) -> str:
        expr = self.expression()
        return expr if "\n" in expr else f"u = {expr}"

    # -- state ---------------------------------------------------------------------------------

    def to_state(self) -> dict:
        """Plain data (lists, str, int, float) that loads with ``torch.load(weights_only=True)``."""
        return {
            "inputs": list(self.inputs),
            "n_registers": self.n_registers,
            "instructions": [list(ins) for ins in self.instructions],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Program:
        """The inverse of :meth:`to_state`."""
        try:
            return cls(
                tuple(Instruction(*ins) for ins in state["instructions"]),
                tuple(state["inputs"]),
                int(state["n_registers"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"state is not a Program.to_state() dict ({exc})") from exc

    @classmethod
    def from_expression(
        cls, text: str, inputs: Sequence[str] = ("g", "m", "v"), n_registers: int = 4
    ) -> Program:
        """Compile an expression such as ``"sign(lerp(m, g, 0.9))"`` (optionally prefixed with
        ``"u = "``) into a program. A bare input ``"g"`` compiles to ``scale(g, 1.0)``; the
        constant of ``lerp``/``scale`` is a numeric literal last argument."""
        inputs = tuple(inputs)
        src = text.strip()
        if src.startswith("u") and "=" in src:
            lhs, src = src.split("=", 1)
            if lhs.strip() != "u":
                raise ValueError(f"text must be an expression or 'u = expression' (got {text!r})")
        try:
            tree = ast.parse(src.strip(), mode="eval").body
        except SyntaxError as exc:
            raise ValueError(f"text is not a valid expression (got {text!r})") from exc
        base = len(inputs)
        free = list(range(base + n_registers - 1, base, -1))  # scratch registers except u
        instructions: list[Instruction] = []

        def leaf(node: ast.AST) -> int:
            if isinstance(node, ast.Name) and node.id in inputs:
                return inputs.index(node.id)
            raise ValueError(f"unknown name or literal {ast.unparse(node)!r} in {text!r}")

        def const(node: ast.AST) -> float:
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                return -const(node.operand)
            if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
                return float(node.value)
            raise ValueError(f"expected a numeric constant, got {ast.unparse(node)!r} in {text!r}")

        def emit(node: ast.AST, target: int | None) -> int:
            if not isinstance(node, ast.Call):
                return leaf(node)
            if not isinstance(node.func, ast.Name) or node.func.id not in OPS:
                raise ValueError(f"unknown op {ast.unparse(node.func)!r} in {text!r}")
            spec = OPS[node.func.id]
            n_args = spec.arity + int(spec.has_const)
            if len(node.args) != n_args or node.keywords:
                raise ValueError(
                    f"{spec.name} takes {n_args} arguments (got {ast.unparse(node)!r})"
                )
            regs = [emit(arg, None) for arg in node.args[: spec.arity]]
            c = const(node.args[-1]) if spec.has_const else 0.0
            for r in regs:
                if r > base:  # a temporary is read once; its register is free again
                    free.append(r)
            if target is None:
                if not free:
                    raise ValueError(
                        f"n_registers={n_registers} is too few for {text!r}; pass a larger one"
                    )
                target = free.pop()
            instructions.append(
                Instruction(spec.name, target, regs[0], regs[1] if spec.arity == 2 else 0, c)
            )
            return target

        if isinstance(tree, ast.Name):
            tree = ast.Call(ast.Name("scale"), [tree, ast.Constant(1.0)], [])
        emit(tree, base)
        return cls(tuple(instructions), inputs, n_registers)


def _other(rng: np.random.Generator, n: int, current: int) -> int:
    # Uniform over range(n) without `current`.
    k = int(rng.integers(n - 1))
    return k + (k >= current)


class ProgramSpace:
    """Random programs and their mutations: the ``init``/``mutate`` pair for evolution.

    Args:
        inputs: input register names (default ``("g", "m", "v")``: gradient, first and second
            moment, as in an optimizer's update rule).
        n_registers: scratch registers, >= 1 (default 4; the card's toy domain used 4 besides
            its 2 inputs).
        ops: op names to draw from (default: all of :data:`OPS`).
        max_length: most instructions, >= 1 (default 10, the card's toy domain).
        init_length: ``(low, high)`` instruction count of random programs (default
            ``(1, max_length)``, uniform).
        mutation_weights: relative probability of each mutation, keys from ``"op"`` (new op,
            operands kept), ``"operand"`` (one of out/a/b redrawn), ``"constant"`` (perturbed by
            10% of its range or, half of the time, redrawn), ``"insert"``, ``"delete"``,
            ``"randomize"`` (one instruction redrawn) — AutoML-Zero's alter-argument,
            randomize-instruction, insert and remove. Default: equal weights. A mutation that
            cannot apply (insert at ``max_length``, delete of the last instruction, constant
            without a constant-taking instruction) is not drawn.
        const_decimals: round drawn constants to this many decimals (default ``None``: full
            precision). A grid keeps near-identical programs apart: ``sign(lerp(m, g, 0.1801))``
            and ``... 0.1803)`` differ on so few inputs that no affordable probe set separates
            them, yet training with them gives different losses (a wrong hit).

    An op or operand mutation always picks a different value; "randomize" and "constant" may
    redraw the old one. Many mutations are neutral (they touch dead code, or change the function
    nowhere that matters), which is what functional hashing exploits.
    """

    MUTATIONS = ("op", "operand", "constant", "insert", "delete", "randomize")

    def __init__(
        self,
        inputs: Sequence[str] = ("g", "m", "v"),
        *,
        n_registers: int = 4,
        ops: Sequence[str] | None = None,
        max_length: int = 10,
        init_length: tuple[int, int] | None = None,
        mutation_weights: Mapping[str, float] | None = None,
        const_decimals: int | None = None,
    ) -> None:
        self.inputs = tuple(inputs)
        self.n_registers = check_int("n_registers", n_registers, low=1)
        self.max_length = check_int("max_length", max_length, low=1)
        names = list(OPS) if ops is None else list(ops)
        unknown = [o for o in names if o not in OPS]
        if not names or unknown:
            raise ValueError(f"ops must be a non-empty subset of {sorted(OPS)} (got {list(ops)!r})")
        self.ops = tuple(names)
        low, high = (1, self.max_length) if init_length is None else init_length
        check_int("init_length[0]", low, low=1)
        check_int("init_length[1]", high, low=low)
        if high > self.max_length:
            raise ValueError(f"init_length[1] must be <= max_length={self.max_length} (got {high})")
        self.init_length = (low, high)
        weights = dict.fromkeys(self.MUTATIONS, 1.0)
        if mutation_weights is not None:
            bad = [k for k in mutation_weights if k not in self.MUTATIONS]
            if bad:
                raise ValueError(f"mutation_weights keys must be in {self.MUTATIONS} (got {bad})")
            weights.update({k: float(v) for k, v in mutation_weights.items()})
            if any(w < 0 or not math.isfinite(w) for w in weights.values()) or not any(
                weights.values()
            ):
                raise ValueError(
                    f"mutation_weights must be finite, >= 0, not all 0 (got {dict(weights)})"
                )
        self.mutation_weights = weights
        self.const_decimals = (
            None if const_decimals is None else check_int("const_decimals", const_decimals, low=0)
        )
        # Validates inputs/n_registers the same way programs do.
        Program((), self.inputs, self.n_registers)

    @property
    def n_all(self) -> int:
        return len(self.inputs) + self.n_registers

    def _const(self, c: float, low: float = -math.inf, high: float = math.inf) -> float:
        if self.const_decimals is not None:
            c = round(float(c), self.const_decimals)
        return float(min(max(c, low), high))

    def random_instruction(self, rng: np.random.Generator) -> Instruction:
        """A uniformly random instruction (op, output, operands, constant in the op's range)."""
        op = OPS[self.ops[int(rng.integers(len(self.ops)))]]
        out = len(self.inputs) + int(rng.integers(self.n_registers))
        # b is drawn for unary ops too (and ignored), so that an op mutation to a binary op
        # reads a random register rather than always the first input.
        a, b = (int(x) for x in rng.integers(self.n_all, size=2))
        c = self._const(rng.uniform(*op.const_range)) if op.has_const else 0.0
        return Instruction(op.name, out, a, b, c)

    def init(self, rng: np.random.Generator) -> Program:
        """A random program with ``init_length`` instructions."""
        n = int(rng.integers(self.init_length[0], self.init_length[1] + 1))
        return Program(
            tuple(self.random_instruction(rng) for _ in range(n)), self.inputs, self.n_registers
        )

    def mutate(self, program: Program, rng: np.random.Generator) -> Program:
        """One random mutation of ``program`` (a new program; the argument is unchanged)."""
        if not isinstance(program, Program):
            raise TypeError(f"program must be a Program (got {type(program).__name__})")
        code = list(program.instructions)
        with_const = [i for i, ins in enumerate(code) if OPS[ins.op].has_const]
        allowed = {
            "op": bool(code),
            "operand": bool(code),
            "constant": bool(with_const),
            "insert": len(code) < self.max_length,
            "delete": len(code) > 1,
            "randomize": bool(code),
        }
        kinds = [k for k in self.MUTATIONS if allowed[k] and self.mutation_weights[k] > 0]
        if not kinds:
            raise ValueError(
                f"no mutation applies to a program of {len(code)} instructions "
                f"with mutation_weights={self.mutation_weights}"
            )
        w = np.array([self.mutation_weights[k] for k in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
        if kind == "insert":
            code.insert(int(rng.integers(len(code) + 1)), self.random_instruction(rng))
        elif kind == "delete":
            del code[int(rng.integers(len(code)))]
        elif kind == "constant":
            i = with_const[int(rng.integers(len(with_const)))]
            low, high = OPS[code[i].op].const_range
            if rng.random() < 0.5:
                c = self._const(rng.uniform(low, high))
            else:
                c = self._const(code[i].const + rng.normal(0.0, 0.1 * (high - low)), low, high)
            code[i] = code[i]._replace(const=c)
        else:
            i = int(rng.integers(len(code)))
            ins = code[i]
            if kind == "randomize":
                code[i] = self.random_instruction(rng)
            elif kind == "op":
                if len(self.ops) == 1 and ins.op == self.ops[0]:
                    code[i] = self.random_instruction(rng)
                else:
                    others = [o for o in self.ops if o != ins.op]
                    op = OPS[others[int(rng.integers(len(others)))]]
                    c = ins.const
                    # A constant carried over from another constant op is kept if in range.
                    if op.has_const and (
                        not OPS[ins.op].has_const or not op.const_range[0] <= c <= op.const_range[1]
                    ):
                        c = self._const(rng.uniform(*op.const_range))
                    code[i] = ins._replace(op=op.name, const=c)
            else:  # operand: redraw out, a, or (binary ops) b, to a different register
                fields = (["out"] if self.n_registers > 1 else []) + ["a"]
                fields += ["b"] if OPS[ins.op].arity == 2 else []
                field = fields[int(rng.integers(len(fields)))]
                if field == "out":
                    k = _other(rng, self.n_registers, ins.out - len(self.inputs))
                    code[i] = ins._replace(out=len(self.inputs) + k)
                else:
                    code[i] = ins._replace(**{field: _other(rng, self.n_all, getattr(ins, field))})
        return Program(tuple(code), self.inputs, self.n_registers)


def _negative_mse(program: Program, *, x: dict[str, np.ndarray], y: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        err = float(np.mean((program(**x) - y) ** 2))
    return -min(err, 1e6) if np.isfinite(err) else -1e6


def toy_domain() -> tuple[ProgramSpace, Callable[[Program], float]]:
    """The toy program domain of functional-hashing studies (search reference card §7).

    Programs over ``g, m`` (4 registers, 10 instructions); a mutation replaces an instruction
    (p = 0.5) or one field of it, so many children compute their parent's function. Fitness is
    ``−MSE`` (capped at 1e6) against ``g·sign(m)`` on 256 fixed points. Shared by the tests and
    ``benchmarks/search_functional_hashing.py``; the fitness pickles (process pools, Dask).

    Returns:
        ``(space, fitness)``.
    """
    space = ProgramSpace(
        ("g", "m"),
        n_registers=4,
        max_length=10,
        init_length=(10, 10),
        ops=["add", "sub", "mul", "div", "sign", "square", "tanh", "sqrt_abs"],
        mutation_weights={
            "randomize": 4, "op": 1, "operand": 3, "insert": 0, "delete": 0, "constant": 0,
        },
    )
    rng = np.random.default_rng(1)
    x = {"g": 2 * rng.standard_normal(256), "m": 2 * rng.standard_normal(256)}
    y = Program.from_expression("mul(g, sign(m))", inputs=("g", "m"))(**x)
    return space, functools.partial(_negative_mse, x=x, y=y)
