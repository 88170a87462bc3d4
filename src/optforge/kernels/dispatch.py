"""One entry point for every update: ``apply_rule_(rule, tensor_lists, hyper, backend=...)``.

An update rule is written once, as a pure per-tensor function (``Rule``). The dispatcher groups
the tensors by (device, dtypes) and runs each group on a backend:

* ``"loop"``: the rule called eagerly on each tensor. The reference every other path must match.
* ``"foreach"``: elementwise rules only. The group's tensors are flattened into one buffer per
  argument, the rule runs once on the buffers, and the outputs are copied back: one dispatch per
  op for the whole group instead of one per tensor (what torch's ``_foreach_`` ops buy), derived
  from the same rule. Pays two extra passes of memory traffic, so it suits many small tensors.
* ``"compiled"``: the rule compiled by ``torch.compile`` (C++/OpenMP on CPU, Triton on CUDA) into
  one kernel per tensor that reads every input once, with dynamic shapes so that one compilation
  serves every size, and hyperparameters as persistent 0-d tensors so that a changing lr neither
  recompiles nor copies. A compilation that fails (recompile limit hit in a long-lived process,
  no C++ compiler) warns once and falls back to the loop: training never dies of a compiler.
* ``"auto"``: the fastest path that can run (see ``resolve_backend``).

Backends registered with ``register_kernel`` (e.g. hand-written Triton kernels) take precedence
for the rule, devices and dtypes they declare. Kernels know nothing of optimizer classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BACKENDS",
    "Rule",
    "apply_rule_",
    "check_backend",
    "register_kernel",
    "resolve_backend",
]

BACKENDS = ("auto", "loop", "foreach", "compiled")
#: tensors at most this large are batched into one flat buffer by ``auto`` (many small biases
#: and norms cost one dispatch per op together, instead of one per op each).
SMALL_TENSOR = 1 << 15


@dataclass(frozen=True, eq=False)
class Rule:
    """A pure per-tensor update: ``fn(*written, *read, **hyper) -> new values of the written``.

    Args:
        fn: the math. Tensors written come first (parameter, state), tensors only read last
            (gradient). Hyperparameters are Python scalars (eager) or 0-d tensors (compiled):
            the same code serves both.
        n_out: how many leading tensors the rule returns new values for.
        elementwise: output element i depends only on input elements i (no norms, no
            reductions); such a rule may run on a concatenation of tensors.
    """

    fn: Callable[..., tuple[Tensor, ...]]
    n_out: int
    elementwise: bool = True
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.fn.__name__)

    def __call__(self, *tensors: Tensor, **hyper: Any) -> tuple[Tensor, ...]:
        return self.fn(*tensors, **hyper)

    def __repr__(self) -> str:
        return f"Rule({self.name})"


Kernel = Callable[[Rule, Sequence[Sequence[Tensor]], Mapping[str, Any]], None]


@dataclass(frozen=True)
class _Registration:
    fn: Kernel
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]


_KERNELS: dict[tuple[int, str], _Registration] = {}


def register_kernel(
    rule: Rule,
    backend: str,
    fn: Kernel,
    *,
    devices: Sequence[str],
    dtypes: Sequence[torch.dtype],
) -> None:
    """Serve ``rule`` on ``backend`` with ``fn(rule, tensor_lists, hyper)`` for these devices
    (``"cuda"``, ``"cpu"``) and parameter dtypes. Tests compare it with the loop reference."""
    _KERNELS[(id(rule), backend)] = _Registration(fn, frozenset(devices), frozenset(dtypes))


def check_backend(backend: object) -> str:
    """The backend name, or a ValueError listing the valid ones."""
    names = (*BACKENDS, *sorted({b for _, b in _KERNELS} - set(BACKENDS)))
    if not isinstance(backend, str) or backend not in names:
        raise ValueError(f"backend must be one of {names} (got {backend!r})")
    return backend


def _registered(rule: Rule, backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    reg = _KERNELS.get((id(rule), backend))
    return reg is not None and device.type in reg.devices and dtype in reg.dtypes


def _compiler_works(device: torch.device) -> bool:
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return device.type == "cpu"


def resolve_backend(
    backend: str, rule: Rule, device: torch.device, dtype: torch.dtype
) -> str:
    """The backend that runs ``rule`` on tensors of ``device``/``dtype``.

    An explicit backend that cannot run raises; ``auto`` picks a registered kernel when one
    serves the device and dtype, else ``compiled`` on CUDA, else ``loop``. On CPU ``auto`` does
    not compile: a first compilation takes tens of seconds, which a short run never earns back
    (pass ``backend="compiled"`` or ``fused=True`` for long runs; see docs/benchmarks.md).
    """
    if backend == "auto":
        for (rid, name), _ in _KERNELS.items():
            if rid == id(rule) and _registered(rule, name, device, dtype):
                return name
        if device.type == "cuda" and _compiler_works(device):
            return "compiled"
        return "loop"
    if backend == "foreach" and not rule.elementwise:
        raise ValueError(
            f"backend 'foreach' runs elementwise rules only; {rule.name} reduces over each tensor"
        )
    if backend == "compiled" and not _compiler_works(device):
        raise RuntimeError(
            f"backend 'compiled' cannot run on {device}: torch.compile needs Triton there"
        )
    if backend not in ("loop", "foreach", "compiled") and not _registered(
        rule, backend, device, dtype
    ):
        raise RuntimeError(
            f"backend {backend!r} has no kernel for {rule.name} on {device.type}/{dtype}"
        )
    return backend


def apply_rule_(
    rule: Rule,
    tensor_lists: Sequence[Sequence[Tensor]],
    hyper: Mapping[str, Any],
    *,
    backend: str = "auto",
) -> None:
    """Apply ``rule`` to every tensor, writing its outputs into the first ``rule.n_out`` lists.

    Args:
        rule: the per-tensor update.
        tensor_lists: parallel lists (entry i of each list belongs to one parameter).
        hyper: scalar hyperparameters. Floats may change every call at no cost; bools and None
            select a code path (one compilation each on the compiled backend).
        backend: one of ``BACKENDS`` or a registered kernel's name.
    """
    check_backend(backend)
    # A complex tensor is updated as its real view: the result equals optimizing
    # torch.view_as_real(param), for elementwise rules and norms alike.
    tensor_lists = [
        [torch.view_as_real(t) if t.is_complex() else t for t in lst] for lst in tensor_lists
    ]
    for (device, dtype), index in _groups(tensor_lists).items():
        lists = [[lst[i] for i in index] for lst in tensor_lists]
        chosen = resolve_backend(backend, rule, device, dtype)
        if chosen == "loop":
            _loop(rule, lists, hyper)
        elif chosen == "foreach":
            _foreach(rule, lists, hyper)
        elif chosen == "compiled":
            _compiled(rule, lists, hyper)
        else:
            _KERNELS[(id(rule), chosen)].fn(rule, lists, hyper)


def _groups(
    tensor_lists: Sequence[Sequence[Tensor]],
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices grouped by the first list's (device, dtype), in order of first appearance."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensor_lists[0]):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


# -- loop: the reference --------------------------------------------------------------------------
def _loop(rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]) -> None:
    for tensors in zip(*lists):
        _write(tensors[: rule.n_out], rule(*tensors, **hyper))


def _write(outs: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    for out, value in zip(outs, values):
        out.copy_(value)


# -- foreach: one flat buffer per argument ----------------------------------------------------
def _foreach(rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]) -> None:
    if len(lists[0]) == 1:
        _loop(rule, lists, hyper)
        return
    flat = [torch.cat([t.reshape(-1) for t in lst]) for lst in lists]
    new = rule(*flat, **hyper)
    sizes = [t.numel() for t in lists[0]]
    for outs, value in zip(lists[: rule.n_out], new):
        pieces = value.split(sizes)
        torch._foreach_copy_(list(outs), [p.view_as(o) for p, o in zip(pieces, outs)])


# -- compiled: torch.compile with dynamic shapes ------------------------------------------------
_COMPILED: dict[tuple[int, tuple[tuple[str, Any], ...]], Callable[..., None]] = {}
_FAILED: set[tuple[int, tuple[tuple[str, Any], ...]]] = set()
_SCALARS: dict[tuple[torch.device, torch.dtype, str], Tensor] = {}


def _static_items(hyper: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in hyper.items() if v is None or isinstance(v, bool)))


def _compiled_fn(rule: Rule, static: tuple[tuple[str, Any], ...]) -> Callable[..., None]:
    key = (id(rule), static)
    if key not in _COMPILED:
        flags = dict(static)

        def body(tensors: list[Tensor], scalars: dict[str, Tensor]) -> None:
            _write(tensors[: rule.n_out], rule(*tensors, **scalars, **flags))

        # Dynamo keeps compiled graphs, and its recompile budget, per code object: one per
        # (rule, flag values) leaves each with only dtype and size-0/1 variants to hold.
        tag = "_".join(f"{k}{int(bool(v))}" for k, v in static)
        body.__code__ = body.__code__.replace(co_name=f"fused_{rule.name}_{tag}")
        _COMPILED[key] = torch.compile(body, dynamic=True, fullgraph=True)
    return _COMPILED[key]


def _scalar(device: torch.device, dtype: torch.dtype, name: str, value: float) -> Tensor:
    """A persistent 0-d tensor holding ``value``: refilled in place, never reallocated."""
    key = (device, dtype, name)
    t = _SCALARS.get(key)
    if t is None:
        t = _SCALARS[key] = torch.tensor(value, dtype=dtype, device=device)
    else:
        t.fill_(value)  # a tiny kernel with the value as argument: no host-to-device copy
    return t


def _compiled(rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]) -> None:
    static = _static_items(hyper)
    key = (id(rule), static)
    if key in _FAILED:
        _loop(rule, lists, hyper)
        return
    fn = _compiled_fn(rule, static)
    first = lists[0][0]
    # Scalars in the parameter's compute precision (fp32 for fp32/bf16/fp16): fp64 scalars make
    # inductor run part of an fp32 rule in double (16% slower on CPU), and eager fp32 math rounds
    # Python floats to fp32 anyway.
    sdtype = torch.promote_types(first.dtype, torch.float32)
    scalars = {
        k: _scalar(first.device, sdtype, k, float(v))
        for k, v in hyper.items()
        if not (v is None or isinstance(v, bool))
    }
    for tensors in zip(*lists):
        if not all(t.is_contiguous() for t in tensors):
            _loop(rule, [[t] for t in tensors], hyper)  # strided views: rare
            continue
        try:
            fn([t.view(-1) if t.dim() else t for t in tensors], scalars)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back, once
            _FAILED.add(key)
            warnings.warn(
                f"optforge: compiling {rule.name} failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); running it eagerly from now on",
                RuntimeWarning,
                stacklevel=3,
            )
            _loop(rule, [[t] for t in tensors], hyper)
