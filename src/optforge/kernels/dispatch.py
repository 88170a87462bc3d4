"""One entry point for every update: ``apply_rule_(rule, tensor_lists, hyper, backend=...)``.

An update rule is written once, as a pure per-tensor function (``Rule``). The dispatcher groups
the tensors by device and dtypes and runs each group on a backend:

* ``"loop"``: the rule called eagerly on each tensor. The reference every other path must match.
* ``"foreach"``: elementwise rules only. The rule runs eagerly on cache-sized tiles of the whole
  group: small tensors concatenated, large ones sliced (``kernels.foreach``). Equal to the loop
  bit for bit; one dispatch per op for many small tensors, cache-resident temporaries for large.
* ``"compiled"``: ``torch.compile`` graphs that update 16 tensors per call with dynamic shapes,
  one graph per (rule, flag values) for every list; hyperparameters as persistent 0-d tensors,
  so a changing lr neither recompiles nor copies (``kernels.compiled``). A compilation that
  fails warns once and falls back to the loop: training never dies of a compiler.
* ``"auto"``: a registered kernel if one serves the device and dtype (on CPU, fp32: the C loops
  of ``kernels.exact_cpu`` for Lion, AdamW, Adam's inner direction and SGD-momentum, from the
  first step, no compile); else ``compiled`` on CUDA; on CPU the eager ``foreach`` (elementwise
  rules) or ``loop``, bit-equal to the reference, and for an fp32 list of a rule whose compiled
  graph rounds exactly as eager does (``Rule.exact``), ``compiled`` once the list has spent
  ``AUTO_COMPILE_AFTER_S`` seconds eagerly (ski rental; what runs the exact rules where no C
  compiler exists). No switch changes a bit of the results, so a resumed run repeats an
  uninterrupted one whichever path each step took.

``all_finite`` checks gradients without a host sync (one C call on CPU, eager packs where the
C library is missing, a compiled reduction per 16 tensors on CUDA).

Backends registered with ``register_kernel`` (hand-written Triton kernels, the CPU C loops)
take precedence for the rule, devices and dtypes they declare; entries a kernel leaves
(strided views, other dtypes within a group) run on the tier ``auto`` would pick without it.
Kernels know nothing of optimizer classes.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from optforge.kernels import exact_cpu
from optforge.kernels.compiled import (
    compiled_all_finite,
    compiled_ready,
    run_compiled,
    static_items,
)
from optforge.kernels.foreach import PACK, run_foreach
from optforge.kernels.rule import Rule, loop, unscaled

__all__ = [
    "AUTO_COMPILE_AFTER_S",
    "BACKENDS",
    "Rule",
    "all_finite",
    "apply_rule_",
    "check_backend",
    "register_kernel",
    "resolve_backend",
    "unscaled",
]

BACKENDS = ("auto", "loop", "foreach", "compiled")

#: ``auto`` on CPU compiles a list's rule once the eager path has spent this many seconds on it:
#: the ski-rental rule (rent until the rent paid equals the price), whose total time is at most
#: twice that of the better choice made knowing the run's length in advance. The price is a
#: first compilation: 20-60 s with an empty inductor cache on 2 cores, 4-6 s warm
#: (docs/benchmarks.md); 30 s sits in the cold range, so a run whose optimizer steps take less
#: than 30 s in all never compiles. Only rules marked ``exact`` on fp32 lists switch: their
#: compiled graph gives the eager bits, so the step at which the switch happens (which depends
#: on the machine's speed) changes nothing. ``OPTFORGE_AUTO_COMPILE_AFTER_S=inf`` turns the
#: switch off; ``0`` compiles at once.
AUTO_COMPILE_AFTER_S = float(os.environ.get("OPTFORGE_AUTO_COMPILE_AFTER_S", "30"))


#: ``fn(rule, lists, hyper)``: updates the entries in place; returns None (all served) or the
#: indices of the entries it left, which run on the tier ``auto`` would pick without it (on an
#: explicit request for the kernel: the loop).
Kernel = Callable[[Rule, Sequence[Sequence[Tensor]], Mapping[str, Any]], "list[int] | None"]

_TRITON_HINT = (
    ": the Triton kernels run on CUDA tensors and are registered only when Triton is installed "
    "and a CUDA device is present (backend='auto' uses them there)"
)


@dataclass(frozen=True)
class _Registration:
    fn: Kernel
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    unscales: bool
    available: Callable[[], bool] | None
    priority: int


_KERNELS: dict[tuple[int, str], _Registration] = {}


def register_kernel(
    rule: Rule,
    backend: str,
    fn: Kernel,
    *,
    devices: Sequence[str],
    dtypes: Sequence[torch.dtype],
    unscales: bool = False,
    available: Callable[[], bool] | None = None,
    priority: int = 0,
) -> None:
    """Serve ``rule`` on ``backend`` with ``fn(rule, tensor_lists, hyper)`` for these devices
    (``"cuda"``, ``"cpu"``) and parameter dtypes. Tests compare it with the loop reference.

    ``unscales``: ``fn`` also serves ``unscaled(rule, ...)`` (a GradScaler step): it multiplies
    the gradient by ``hyper["inv_grad_scale"]`` where it reads it (absent: 1), and gets the
    wrapped rule for any entries it leaves to the loop. Kernels without it get gradients
    unscaled out of place first.

    ``available``: called (once per step) before the kernel is chosen; False makes it as if
    unregistered (a library that failed to build). ``priority``: ``auto`` takes the serving
    kernel of highest priority, the first registered among equals (the CPU C loops register at
    -1, so Triton kernels registered for CPU tensors in tests still win)."""
    _KERNELS[(id(rule), backend)] = _Registration(
        fn, frozenset(devices), frozenset(dtypes), unscales, available, priority
    )


def check_backend(backend: object) -> str:
    """The backend name, or a ValueError listing the valid ones."""
    names = (*BACKENDS, *sorted({b for _, b in _KERNELS} - set(BACKENDS)))
    if not isinstance(backend, str) or backend not in names:
        hint = _TRITON_HINT if backend == "triton" else ""
        raise ValueError(f"backend must be one of {names} (got {backend!r}){hint}")
    return backend


def _registered(rule: Rule, backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    reg = _KERNELS.get((id(rule.base or rule), backend))
    return (
        reg is not None
        and device.type in reg.devices
        and dtype in reg.dtypes
        and (reg.available is None or reg.available())
    )


def _compiler_works(device: torch.device) -> bool:
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return device.type == "cpu"


def resolve_backend(backend: str, rule: Rule, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs ``rule`` on tensors of ``device``/``dtype``.

    An explicit backend that cannot run raises. ``auto`` picks a registered kernel when one
    serves the device and dtype, else ``compiled`` on CUDA, else (CPU) the eager ``foreach``
    for elementwise rules and ``loop`` for the others. ``apply_rule_`` then moves a CPU list
    of an ``exact`` rule from that eager path to ``compiled`` once it has spent
    ``AUTO_COMPILE_AFTER_S`` seconds there: a first compilation costs tens of seconds, which a
    short run never earns back, and a long run earns back many times.
    """
    if backend == "auto":
        ranked = sorted(_KERNELS.items(), key=lambda item: -item[1].priority)  # stable
        for (rid, name), _ in ranked:
            if rid == id(rule.base or rule) and _registered(rule, name, device, dtype):
                return name
        return _builtin_auto(rule, device)
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
        hint = _TRITON_HINT if backend == "triton" else ""
        raise RuntimeError(
            f"backend {backend!r} has no kernel for {rule.name} on {device.type}/{dtype}{hint}"
        )
    return backend


def _builtin_auto(rule: Rule, device: torch.device) -> str:
    """``auto``'s choice among the built-in backends (no registered kernel serves)."""
    if device.type == "cuda" and _compiler_works(device):
        return "compiled"
    return "foreach" if rule.elementwise else "loop"


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
    if any(t.is_complex() for t in tensor_lists[0]):
        tensor_lists = [
            [torch.view_as_real(t) if t.is_complex() else t for t in lst] for lst in tensor_lists
        ]
    for (device, dtype, dtypes), index in _groups(tensor_lists).items():
        if len(index) == len(tensor_lists[0]):
            lists: Sequence[Sequence[Tensor]] = tensor_lists
        else:
            lists = [[lst[i] for i in index] for lst in tensor_lists]
        chosen = resolve_backend(backend, rule, device, dtype)
        if chosen not in BACKENDS:  # a registered kernel
            rest = _run(chosen, rule, lists, hyper)
            if not rest:
                continue
            # what it left: auto's built-in tier (ski rental included), or the loop
            lists = [[lst[i] for i in rest] for lst in lists]
            chosen = _builtin_auto(rule, device) if backend == "auto" else "loop"
        if (
            backend == "auto"
            and chosen in ("foreach", "loop")
            and device.type == "cpu"
            and rule.exact
            and all(d == torch.float32 for d in dtypes)
        ):
            # Only rules whose compiled graph rounds as eager does (``Rule.exact``), shown for
            # fp32: inductor rounds a Python scalar to bf16 before a bf16 multiply, eager ATen
            # to fp32, so bf16 lists stay eager.
            key = (id(rule), static_items(hyper), device, len(lists[0]))
            if _rent(key, lists[0][0], compiled_ready(rule, hyper, len(lists)) is not False):
                chosen = "compiled"
            else:
                with _renting(key):
                    _run(chosen, rule, lists, hyper)
                continue
        _run(chosen, rule, lists, hyper)


def _run(
    chosen: str, rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]
) -> list[int] | None:
    """Runs ``chosen``; a registered kernel's indices of entries it left (None: all done)."""
    if chosen == "loop":
        loop(rule, lists, hyper)
    elif chosen == "foreach":
        run_foreach(rule, lists, hyper)
    elif chosen == "compiled":
        run_compiled(rule, lists, hyper)
    elif rule.base is not None and _KERNELS[(id(rule.base), chosen)].unscales:
        return _KERNELS[(id(rule.base), chosen)].fn(rule, lists, hyper)
    elif rule.base is not None:
        # An ``unscaled`` rule on a kernel that takes no scale: the gradients are unscaled out
        # of place first (one extra pass, this path only).
        hyper = dict(hyper)
        inv = hyper.pop("inv_grad_scale")
        lists = list(lists)
        lists[rule.grad_list] = torch._foreach_mul(list(lists[rule.grad_list]), inv)
        return _KERNELS[(id(rule.base), chosen)].fn(rule.base, lists, hyper)
    else:
        return _KERNELS[(id(rule), chosen)].fn(rule, lists, hyper)
    return None


#: eager seconds spent per list, with a weak reference to the list's first tensor: a list is
#: told apart by its rule, flags, device, length and first tensor (alive), so one optimizer's
#: steps accumulate, and a new optimizer whose first tensor reuses a dead one's id starts at 0.
_EAGER_SPENT: dict[tuple[Any, ...], tuple[float, weakref.ref[Tensor]]] = {}


def _rent(key: tuple[Any, ...], first: Tensor, can_compile: bool) -> bool:
    """True when this list has paid for a compilation (and the compiler has not failed)."""
    spent, ref = _EAGER_SPENT.get(key, (0.0, None))
    if ref is None or ref() is not first:
        if len(_EAGER_SPENT) >= 4096:
            _EAGER_SPENT.pop(next(iter(_EAGER_SPENT)))
        spent = 0.0
        _EAGER_SPENT[key] = (spent, weakref.ref(first))
    return spent >= AUTO_COMPILE_AFTER_S and can_compile


@contextlib.contextmanager
def _renting(key: tuple[Any, ...]) -> Iterator[None]:
    """Adds the time of the eager work inside to the list's account."""
    start = time.perf_counter()
    try:
        yield
    finally:
        spent, ref = _EAGER_SPENT[key]
        _EAGER_SPENT[key] = (spent + time.perf_counter() - start, ref)


def all_finite(tensors: Sequence[Tensor], *, backend: str = "auto") -> Tensor:
    """A 0-d bool tensor: True when every element of every tensor is finite. No host sync.

    The check that runs before an update writes anything (``check_finite``). On CUDA under
    ``auto`` or ``compiled``: one compiled reduction per ``CHUNK`` tensors. On CPU, one call of
    the C loop ``exact_cpu.all_finite`` over every fp32/bf16/fp16/fp64 tensor in a dense
    layout: an integer test of the exponent bits, exact, one read at memory speed. Elsewhere,
    and where the C library cannot be built, eagerly: small tensors concatenated into packs,
    one ``sum`` per pack or large tensor, one ``stack`` at the end. A NaN or an infinity makes
    a sum non-finite, so finite sums prove every element finite; a non-finite sum may also be
    an overflow of finite values, and only then do the exact extremes (``aminmax``) decide. A
    sum reads its input at ~2x the speed of ``aminmax`` [measured: 33M fp32 elements, 1 thread,
    11.7 ms against 21.7 ms]. The compiled reduction measured ~3x slower than the eager check on
    CPU under load (docs/benchmarks.md, issue 7), so CPU never uses it.
    """
    tensors = [torch.view_as_real(t) if t.is_complex() else t for t in tensors if t.numel()]
    if not tensors:
        return torch.tensor(True)
    device = tensors[0].device
    if (
        backend in ("compiled", "auto")
        and device.type == "cuda"
        and _compiler_works(device)
        and all(t.device == device for t in tensors)
    ):
        out = compiled_all_finite(tensors)
        if out is not None:
            return out
    return _eager_all_finite(tensors)


def _eager_all_finite(tensors: Sequence[Tensor]) -> Tensor:
    if exact_cpu.available():
        # one C call over every CPU gradient it serves; the rest (CUDA, strided) go on below
        finite, tensors = exact_cpu.all_finite(tensors)
        if not finite:
            return torch.tensor(False)
        if not tensors:
            return torch.tensor(True)
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if on_cpu and bool(_reduce_packed(tensors, lambda t: [t.sum()])):
        return torch.tensor(True)  # finite sums: no element is NaN or infinite
    return _reduce_packed(tensors, torch.aminmax)


def _reduce_packed(tensors: Sequence[Tensor], reduce: Callable[[Tensor], Sequence[Tensor]]
                   ) -> Tensor:
    """Whether every value ``reduce`` gives for the tensors (small ones packed) is finite."""
    values: dict[torch.device, list[Tensor]] = {}
    packs: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    filled: dict[tuple[torch.device, torch.dtype], int] = {}  # elements in each open pack
    for t in tensors:
        if t.numel() > PACK:
            values.setdefault(t.device, []).extend(reduce(t))
            continue
        key = (t.device, t.dtype)
        pack = packs.setdefault(key, [])
        pack.append(t.reshape(-1))
        filled[key] = filled.get(key, 0) + t.numel()
        if filled[key] >= PACK:
            values.setdefault(t.device, []).extend(reduce(torch.cat(pack)))
            pack.clear()
            filled[key] = 0
    for (device, _), pack in packs.items():
        if pack:
            values.setdefault(device, []).extend(reduce(torch.cat(pack)))
    flags = [torch.stack(vals).isfinite().all() for vals in values.values()]
    return flags[0] if len(flags) == 1 else torch.stack([f.cpu() for f in flags]).all()


def _groups(
    tensor_lists: Sequence[Sequence[Tensor]],
) -> dict[tuple[torch.device, torch.dtype, tuple[torch.dtype, ...]], list[int]]:
    """Indices grouped by the first list's device and every list's dtype, in order."""
    # The common case first, one set per list instead of a key per entry: this runs at every
    # step over every tensor (~0.4 ms of Python per step on 308 tensors otherwise).
    dtypes = [{t.dtype for t in lst} for lst in tensor_lists]
    if tensor_lists[0] and all(len(d) == 1 for d in dtypes):
        devices = {t.device for t in tensor_lists[0]}
        if len(devices) == 1:
            first = tensor_lists[0][0]
            key = (first.device, first.dtype, tuple(lst[0].dtype for lst in tensor_lists))
            return {key: list(range(len(tensor_lists[0])))}
    groups: dict[tuple[torch.device, torch.dtype, tuple[torch.dtype, ...]], list[int]] = {}
    for i, tensors in enumerate(zip(*tensor_lists)):
        first = tensors[0]
        key = (first.device, first.dtype, tuple(t.dtype for t in tensors))
        groups.setdefault(key, []).append(i)
    return groups
