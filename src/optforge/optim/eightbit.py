"""AdamW and Lion with 8-bit blockwise state (Dettmers et al., 2022, arXiv 2110.02861).

Each moment is kept as uint8 codes into a 256-entry dynamic map plus one fp32 absmax per block
of 256 elements (``optforge.kernels.quant``): 1 + 4/256 bytes per element instead of 4. A step
dequantizes the moments, runs the update in fp32 and quantizes them again; the parameter is
updated in its own dtype (fp32 math, one rounding at the end). Layout, code books, block size,
defaults and the 32-bit fallback for small tensors (``min_8bit_size``) follow bitsandbytes 0.50,
so a trajectory stays close to bitsandbytes' ``AdamW8bit``/``Lion8bit``
(docs/optim/eightbit.md gives the measured gap).

State per parameter with at least ``min_8bit_size`` elements (codes in the parameter's shape):

    AdamW8bit: step (fp32, CPU), exp_avg (uint8), exp_avg_absmax (fp32, nb),
               exp_avg_sq (uint8), exp_avg_sq_absmax (fp32, nb)
    Lion8bit:  exp_avg (uint8), exp_avg_absmax (fp32, nb)

and fp32 moments (bitsandbytes' 32-bit state) for smaller ones. Backends: ``"auto"`` runs a
registered kernel (Triton on CUDA) when one serves the tensors, else on CPU the fused C loop of
``kernels.eightbit_cpu`` (bit-identical to the loop, built on first use), else the loop;
``"loop"`` runs the rule eagerly per block-aligned tile (the reference); ``"compiled"`` runs
full tiles through one static ``torch.compile`` graph (~16-35 s to compile).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from optforge._validation import check_betas, check_int, check_non_negative, check_positive
from optforge.kernels import Rule, apply_rule_, eightbit_cpu, resolve_backend
from optforge.kernels.compiled import persistent_scalar
from optforge.kernels.quant import BLOCK, blocks, dequantize_blockwise, dynamic_map, prepare
from optforge.kernels.quant import quantize_blockwise as _quantize
from optforge.kernels.rule import write
from optforge.optim.adamw import bias_corrections, step_groups
from optforge.optim.base import CHECK_FINITE_DOC, FirstOrderOptimizer, StateSpec
from optforge.optim.rules import apply_update, exact_sqrt, lion_direction

__all__ = [
    "AdamW8bit",
    "Lion8bit",
    "adamw32_rule",
    "adamw8bit_rule",
    "lion32_rule",
    "lion8bit_rule",
]

_BACKENDS = ("loop", "compiled")
#: the compiled tiles' scalars are fp32 (Python floats would make inductor compute in double)
_FP32 = torch.float32


def _math_dtype(param: Tensor) -> torch.dtype:
    return torch.promote_types(param.dtype, torch.float32)


def _adamw8bit(
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_absmax: Tensor,
    exp_avg_sq: Tensor,
    exp_avg_sq_absmax: Tensor,
    grad: Tensor,
    *,
    lr: Any,
    beta1: Any,
    beta2: Any,
    eps: Any,
    weight_decay: Any,
    bias_correction1: Any,
    bias_correction2: Any,
    maximize: bool,
) -> tuple[Tensor, ...]:
    """One AdamW step on 8-bit moments, in the order of bitsandbytes' CUDA kernels:
    ``θ ← θ(1−ηλ) − (η√c2/c1)·m / (√v + ε√c2)``."""
    code1, _ = dynamic_map(True, param.device)
    code2, _ = dynamic_map(False, param.device)
    g = grad.to(_math_dtype(param))
    if maximize:
        g = -g
    m = dequantize_blockwise(exp_avg, exp_avg_absmax, code1)
    v = dequantize_blockwise(exp_avg_sq, exp_avg_sq_absmax, code2)
    p, m, v = _bnb_adamw(param.to(g.dtype), m, v, g, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay, bias_correction1=bias_correction1,
                         bias_correction2=bias_correction2)
    return (p, *_quantize(m, True), *_quantize(v, False))


def _bnb_adamw(
    param: Tensor,
    m: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    lr: Any,
    beta1: Any,
    beta2: Any,
    eps: Any,
    weight_decay: Any,
    bias_correction1: Any,
    bias_correction2: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """AdamW as bitsandbytes' CUDA 8-bit kernels order it: ``m / (√v + ε√c2)`` times
    ``η√c2/c1``, one division per element (its CPU path's ``(η/c1)·m / (√v/√c2 + ε)`` takes two,
    and ``optim.rules.adam_direction``'s ``(m/c1)/(√(v/c2) + ε)`` rounds differently again).
    The scalars are Python floats rounded once to fp32 by the op, as kernels/eightbit_cpu
    rounds them."""
    m = m * beta1 + g * (1 - beta1)
    v = v * beta2 + g * g * (1 - beta2)
    denom = exact_sqrt(v) + eps * bias_correction2**0.5
    p = param * (1 - lr * weight_decay) - (lr * bias_correction2**0.5 / bias_correction1) * (
        m / denom
    )
    return p, m, v


def _lion8bit(
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_absmax: Tensor,
    grad: Tensor,
    *,
    lr: Any,
    beta1: Any,
    beta2: Any,
    weight_decay: Any,
    maximize: bool,
) -> tuple[Tensor, ...]:
    """One Lion step on an 8-bit momentum: ``θ ← θ(1−ηλ) − η·sign(β1·m + (1−β1)·g)``,
    ``m ← β2·m + (1−β2)·g``."""
    code1, _ = dynamic_map(True, param.device)
    g = grad.to(_math_dtype(param))
    if maximize:
        g = -g
    m = dequantize_blockwise(exp_avg, exp_avg_absmax, code1)
    direction, m = lion_direction(m, g, beta1=beta1, beta2=beta2)
    p = apply_update(param.to(g.dtype), direction, lr=lr, weight_decay=weight_decay)
    return (p, *_quantize(m, True))


def _adamw32(
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad: Tensor,
    *,
    lr: Any,
    beta1: Any,
    beta2: Any,
    eps: Any,
    weight_decay: Any,
    bias_correction1: Any,
    bias_correction2: Any,
    maximize: bool,
) -> tuple[Tensor, ...]:
    """The fp32-state AdamW of tensors under ``min_8bit_size``: ``_adamw8bit``'s math."""
    g = grad.to(exp_avg.dtype)
    if maximize:
        g = -g
    return _bnb_adamw(param.to(g.dtype), exp_avg, exp_avg_sq, g, lr=lr, beta1=beta1,
                      beta2=beta2, eps=eps, weight_decay=weight_decay,
                      bias_correction1=bias_correction1, bias_correction2=bias_correction2)


def _lion32(
    param: Tensor,
    exp_avg: Tensor,
    grad: Tensor,
    *,
    lr: Any,
    beta1: Any,
    beta2: Any,
    weight_decay: Any,
    maximize: bool,
) -> tuple[Tensor, ...]:
    """The fp32-state Lion of tensors under ``min_8bit_size``: ``_lion8bit``'s math."""
    g = grad.to(exp_avg.dtype)
    if maximize:
        g = -g
    direction, m = lion_direction(exp_avg, g, beta1=beta1, beta2=beta2)
    return apply_update(param.to(g.dtype), direction, lr=lr, weight_decay=weight_decay), m


#: ``(param, exp_avg, exp_avg_absmax, exp_avg_sq, exp_avg_sq_absmax, grad)``; blockwise, so
#: not elementwise (a tensor must not be cut or concatenated at arbitrary points).
adamw8bit_rule = Rule(_adamw8bit, n_out=5, elementwise=False, name="adamw8bit")
#: ``(param, exp_avg, exp_avg_absmax, grad)``.
lion8bit_rule = Rule(_lion8bit, n_out=3, elementwise=False, name="lion8bit")
#: fp32 math and state, one rounding into the parameter's dtype (as bitsandbytes' 32-bit path).
adamw32_rule = Rule(_adamw32, n_out=3, elementwise=True, name="adamw32")
lion32_rule = Rule(_lion32, n_out=2, elementwise=True, name="lion32")


_COMPILED: dict[Rule, Callable[..., None]] = {}


def _compiled(rule: Rule) -> Callable[..., None]:
    """The rule and its writes as one static ``torch.compile`` graph over a full tile.

    Static: every full tile has ``TILE`` elements, so one graph per dtype serves every tensor
    (~16-35 s to compile on 2 cores). Not dynamic shapes, and never a partial block: inductor
    (torch 2.13, CPU) fails on dynamic (n/256, 256) views and miscompiles a tensor holding whole
    blocks and a partial one (garbage in the partial block). Indirect-indexing asserts are off:
    the indices are uint8 codes (< 256) and 17-bit buckets (< 2**17), in range by construction.
    """
    fn = _COMPILED.get(rule)
    if fn is None:

        def body(tensors: list[Tensor], hyper: dict[str, Any]) -> None:
            write(tensors[: rule.n_out], rule(*tensors, **hyper))

        body.__code__ = body.__code__.replace(co_name=f"optforge_{rule.name}")
        fn = _COMPILED[rule] = torch.compile(
            body, dynamic=False, fullgraph=True, options={"assert_indirect_indexing": False}
        )
    return fn


def run_8bit(
    rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any], backend: str
) -> None:
    """Run an 8-bit rule: a registered kernel (Triton on CUDA) when ``auto`` finds one or when
    named; on CPU under ``auto`` the fused C loop (``kernels.eightbit_cpu``) for what it serves;
    the rest per block-aligned tile (``TILE`` elements): eagerly (``loop``, ``auto``), or
    (``compiled``) full tiles through one static ``torch.compile`` graph and the rest eagerly.
    """
    if not lists[0]:
        return
    first = lists[0][0]
    if backend not in ("auto", *_BACKENDS):  # a registered kernel by name ("triton")
        apply_rule_(rule, lists, hyper, backend=backend)
        return
    if backend == "auto":
        chosen = resolve_backend("auto", rule, first.device, first.dtype)
        if chosen not in ("loop", "foreach", "compiled"):  # a registered kernel serves
            apply_rule_(rule, lists, hyper, backend=chosen)
            return
        if first.device.type == "cpu":  # the fused C loop, bit-identical to the eager rule
            rest = eightbit_cpu.run((rule.base or rule).name, lists, hyper)
            if not rest:
                return
            lists = [[lst[i] for i in rest] for lst in lists]
    fn = scalars = None
    if backend == "compiled":
        prepare(first.device)
        fn = _compiled(rule)
        scalars = {
            k: v if isinstance(v, bool) else persistent_scalar(first.device, _FP32, k, float(v))
            for k, v in hyper.items()
        }
    for tensors in zip(*lists):
        for tile in _tiles(tensors):
            if fn is not None and tile[0].numel() == TILE and tile[0].is_contiguous():
                fn(tile, scalars)
            else:
                write(tile[: rule.n_out], rule(*tile, **hyper))


def run_32bit(
    rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any], backend: str
) -> None:
    """Run a fp32-state rule (the tensors under ``min_8bit_size``): on CPU under ``auto`` the
    fused C loop for what it serves (AdamW's; bit-identical to the rule), the rest through
    ``apply_rule_``. On the benchmark's 40 norm and bias tensors: 0.7 ms of CPU time per step
    against 2.6 ms on the foreach path (1 thread) [measured], ~3% of the whole 8-bit step."""
    name = (rule.base or rule).name
    if backend == "auto" and lists[0] and lists[0][0].device.type == "cpu" and name == "adamw32":
        rest = eightbit_cpu.run(name, lists, hyper)
        if not rest:
            return
        lists = [[lst[i] for i in rest] for lst in lists]
    apply_rule_(rule, lists, hyper, backend=backend)


#: elements per eager tile: a multiple of the quantization block whose temporaries (~20 of
#: 4 B per element) stay in a core's L2 cache: 2.2x faster than whole tensors on 16 x 512²
#: (1 thread: 958 -> 441 ms per step; 2^13: 816 ms, 2^17: 423 ms) [measured].
TILE = 1 << 16


def _tiles(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    """The tensors as block-aligned 1-D tiles (views written in place); as they are if not
    contiguous. Blocks never straddle a tile, so tiling changes no result."""
    n = tensors[0].numel()
    if n == 0:
        return []
    if n <= TILE or not all(t.is_contiguous() for t in tensors):
        return [list(tensors)]
    flats = [t.detach().view(-1) for t in tensors]
    tiles = []
    for start in range(0, n, TILE):
        stop = min(start + TILE, n)
        tiles.append(
            [
                f[start:stop] if f.numel() == n else f[start // BLOCK : -(-stop // BLOCK)]
                for f in flats
            ]
        )
    return tiles


class _EightBit(FirstOrderOptimizer):
    """Shared parts: the 8-bit/32-bit state split, backends, complex refusal."""

    _moments: tuple[tuple[str, bool], ...] = ()  # (state name, signed map)
    _unscales_in_update = True

    def state_schema(self, param: Tensor, group: dict[str, Any]) -> Mapping[str, StateSpec]:
        schema: dict[str, StateSpec] = {}
        if "step" in self._state_keys():
            schema["step"] = StateSpec(dtype=torch.float32, shape=(), device="cpu")
        if param.numel() >= group["min_8bit_size"]:
            for name, _ in self._moments:
                schema[name] = StateSpec(dtype=torch.uint8)
                schema[f"{name}_absmax"] = StateSpec(
                    dtype=torch.float32, shape=(blocks(param.numel()),)
                )
        else:
            for name, _ in self._moments:
                schema[name] = StateSpec(dtype=_math_dtype(param))
        return schema

    def _state_keys(self) -> tuple[str, ...]:
        return ()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.is_complex() or not p.is_floating_point():
                self.param_groups.pop()
                self._index_cache = None
                raise TypeError(
                    f"{type(self).__name__} supports real floating-point parameters only "
                    f"(got {p.dtype}); optimize torch.view_as_real(param) for complex ones"
                )

    def _validate_group(self, group: dict[str, Any]) -> None:
        backend = group.get("backend")
        if backend == "foreach":
            raise ValueError(
                f"{type(self).__name__} has no foreach path: its state is quantized per block "
                "(use backend='auto', 'loop' or 'compiled')"
            )
        super()._validate_group(group)  # names: the built-in ones and registered kernels

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_int("min_8bit_size", group["min_8bit_size"], low=1)
        if "eps" in group:
            check_positive("eps", group["eps"])

    def _split(self, params: list[Tensor]) -> tuple[list[int], list[int]]:
        """Indices of the parameters with 8-bit state, and of those with fp32 state."""
        key = self._moments[0][0]
        quantized = [i for i, p in enumerate(params) if self.state[p][key].dtype == torch.uint8]
        full = [i for i, p in enumerate(params) if self.state[p][key].dtype != torch.uint8]
        return quantized, full


class AdamW8bit(_EightBit):
    __doc__ = f"""AdamW with 8-bit blockwise moments (Dettmers et al., 2022).

    Defaults are bitsandbytes' ``AdamW8bit`` (η = 1e-3, β = (0.9, 0.999), ε = 1e-8, λ = 0.01,
    ``min_8bit_size=4096``). State: about 2.03 bytes per parameter instead of 8 (see the module
    docstring for the entries).

    Args:
        params: parameters or param groups (fp32, bf16 or fp16; math in fp32).
        lr: learning rate η.
        betas: (β1, β2) in [0, 1).
        eps: ε added to √v̂, > 0.
        weight_decay: decoupled λ.
        min_8bit_size: tensors with fewer elements keep fp32 moments (bitsandbytes: 4096).
        maximize: ascend the objective.
        backend: ``"auto"`` (default), ``"loop"``, ``"compiled"`` or a registered kernel's name
            (``"triton"`` on CUDA); see the module docstring.
        {CHECK_FINITE_DOC}

    Example:
        >>> model = torch.nn.Linear(128, 64)
        >>> opt = AdamW8bit(model.parameters(), lr=1e-3)
        >>> model(torch.randn(8, 128)).sum().backward(); opt.step()
    """

    _moments = (("exp_avg", True), ("exp_avg_sq", False))
    rules = (adamw8bit_rule, adamw32_rule)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        min_8bit_size: int = 4096,
        maximize: bool = False,
        backend: str | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            min_8bit_size=min_8bit_size,
            maximize=maximize,
            backend=backend,
        )
        super().__init__(params, defaults, check_finite=check_finite)

    def _state_keys(self) -> tuple[str, ...]:
        return ("step",)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        beta1, beta2 = group["betas"]
        backend = self._backend(group)
        is_quantized = set(self._split(params)[0])
        for step, idx in step_groups(self.state, params).items():
            hyper = dict(
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                **bias_corrections(beta1, beta2, step),
            )
            q = [i for i in idx if i in is_quantized]
            f = [i for i in idx if i not in is_quantized]
            if q:
                ps = [params[i] for i in q]
                st = [self.state[p] for p in ps]
                lists = (
                    ps,
                    [s["exp_avg"] for s in st],
                    [s["exp_avg_absmax"] for s in st],
                    [s["exp_avg_sq"] for s in st],
                    [s["exp_avg_sq_absmax"] for s in st],
                    [grads[i] for i in q],
                )
                rule, h = self._unscaled(adamw8bit_rule, len(lists) - 1, hyper)
                run_8bit(rule, lists, h, backend)
            if f:
                ps = [params[i] for i in f]
                lists = (
                    ps,
                    [self.state[p]["exp_avg"] for p in ps],
                    [self.state[p]["exp_avg_sq"] for p in ps],
                    [grads[i] for i in f],
                )
                rule, h = self._unscaled(adamw32_rule, len(lists) - 1, hyper)
                run_32bit(rule, lists, h, backend)


class Lion8bit(_EightBit):
    __doc__ = f"""Lion (Chen et al., 2023) with an 8-bit blockwise momentum.

    Defaults are bitsandbytes' ``Lion8bit`` (η = 1e-4, β = (0.9, 0.99), λ = 0,
    ``min_8bit_size=4096``); weight decay is decoupled, as in bitsandbytes >= 0.50 and the
    paper. State: about 1.02 bytes per parameter instead of 4.

    Args:
        params: parameters or param groups (fp32, bf16 or fp16; math in fp32).
        lr: learning rate η.
        betas: (β1, β2) in [0, 1).
        weight_decay: decoupled λ.
        min_8bit_size: tensors with fewer elements keep an fp32 momentum.
        maximize: ascend the objective.
        backend: ``"auto"`` (default), ``"loop"``, ``"compiled"`` or a registered kernel's name
            (``"triton"`` on CUDA); see the module docstring.
        {CHECK_FINITE_DOC}

    Example:
        >>> model = torch.nn.Linear(128, 64)
        >>> opt = Lion8bit(model.parameters(), lr=1e-4, weight_decay=1.0)
        >>> model(torch.randn(8, 128)).sum().backward(); opt.step()
    """

    _moments = (("exp_avg", True),)
    rules = (lion8bit_rule, lion32_rule)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        min_8bit_size: int = 4096,
        maximize: bool = False,
        backend: str | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            min_8bit_size=min_8bit_size,
            maximize=maximize,
            backend=backend,
        )
        super().__init__(params, defaults, check_finite=check_finite)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        beta1, beta2 = group["betas"]
        hyper = dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )
        backend = self._backend(group)
        quantized, full = self._split(params)
        if quantized:
            ps = [params[i] for i in quantized]
            lists = (
                ps,
                [self.state[p]["exp_avg"] for p in ps],
                [self.state[p]["exp_avg_absmax"] for p in ps],
                [grads[i] for i in quantized],
            )
            rule, h = self._unscaled(lion8bit_rule, len(lists) - 1, hyper)
            run_8bit(rule, lists, h, backend)
        if full:
            ps = [params[i] for i in full]
            lists = (ps, [self.state[p]["exp_avg"] for p in ps], [grads[i] for i in full])
            rule, h = self._unscaled(lion32_rule, len(lists) - 1, hyper)
            apply_rule_(rule, lists, h, backend=backend)
