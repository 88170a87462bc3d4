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
* ``"auto"``: a registered kernel if one serves the device and dtype; else ``compiled`` on CUDA;
  on CPU the eager ``foreach`` (elementwise rules) or ``loop``, bit-equal to the reference. With
  ``OPTFORGE_AUTO_COMPILE_AFTER_S`` set, a CPU list moves to ``compiled`` once it has spent that
  many seconds eagerly (see ``resolve_backend``).

Backends registered with ``register_kernel`` (e.g. hand-written Triton kernels) take precedence
for the rule, devices and dtypes they declare. Kernels know nothing of optimizer classes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from optforge.kernels.compiled import compiled_ready, run_compiled, static_items
from optforge.kernels.foreach import run_foreach
from optforge.kernels.rule import Rule, loop

__all__ = [
    "AUTO_COMPILE_AFTER_S",
    "BACKENDS",
    "Rule",
    "apply_rule_",
    "check_backend",
    "register_kernel",
    "resolve_backend",
]

BACKENDS = ("auto", "loop", "foreach", "compiled")

#: ``auto`` on CPU can compile a list's rule once the eager path has spent this long on it: the
#: ski-rental rule (rent until the rent paid equals the price), whose total time is at most
#: twice that of the better choice made knowing the run's length in advance. The price is a
#: first compilation, ~20-60 s with an empty inductor cache on 2 cores (docs/benchmarks.md).
#: Off by default (``inf``): the switch happens at a step that depends on the machine's speed,
#: and compiled rounding differs from eager in the last bits, so a resumed run would not repeat
#: an uninterrupted one bit for bit. ``OPTFORGE_AUTO_COMPILE_AFTER_S=30`` turns it on; ``0``
#: compiles at once.
AUTO_COMPILE_AFTER_S = float(os.environ.get("OPTFORGE_AUTO_COMPILE_AFTER_S", "inf"))


Kernel = Callable[[Rule, Sequence[Sequence[Tensor]], Mapping[str, Any]], None]

_TRITON_HINT = (
    ": the Triton kernels run on CUDA tensors and are registered only when Triton is installed "
    "and a CUDA device is present (backend='auto' uses them there)"
)


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
        hint = _TRITON_HINT if backend == "triton" else ""
        raise ValueError(f"backend must be one of {names} (got {backend!r}){hint}")
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


def resolve_backend(backend: str, rule: Rule, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs ``rule`` on tensors of ``device``/``dtype``.

    An explicit backend that cannot run raises. ``auto`` picks a registered kernel when one
    serves the device and dtype, else ``compiled`` on CUDA, else (CPU) the eager ``foreach``
    for elementwise rules and ``loop`` for the others. With ``AUTO_COMPILE_AFTER_S`` finite
    (opt-in), ``apply_rule_`` moves a CPU list from that eager path to ``compiled`` once it has
    spent that many seconds there: a first compilation costs tens of seconds, which a short run
    never earns back, and a long run earns back many times.
    """
    if backend == "auto":
        for (rid, name), _ in _KERNELS.items():
            if rid == id(rule) and _registered(rule, name, device, dtype):
                return name
        if device.type == "cuda" and _compiler_works(device):
            return "compiled"
        return "foreach" if rule.elementwise else "loop"
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
    for (device, dtype, _), index in _groups(tensor_lists).items():
        if len(index) == len(tensor_lists[0]):
            lists: Sequence[Sequence[Tensor]] = tensor_lists
        else:
            lists = [[lst[i] for i in index] for lst in tensor_lists]
        chosen = resolve_backend(backend, rule, device, dtype)
        if backend == "auto" and chosen in ("foreach", "loop") and device.type == "cpu":
            if _auto_eager(rule, lists, hyper, chosen, device, dtype):
                continue
            chosen = "compiled"
        _run(chosen, rule, lists, hyper)


def _run(
    chosen: str, rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]
) -> None:
    if chosen == "loop":
        loop(rule, lists, hyper)
    elif chosen == "foreach":
        run_foreach(rule, lists, hyper)
    elif chosen == "compiled":
        run_compiled(rule, lists, hyper)
    else:
        _KERNELS[(id(rule), chosen)].fn(rule, lists, hyper)


#: eager seconds spent per list (rule, flags, device, dtype, length, first tensor).
_EAGER_SPENT: dict[tuple[Any, ...], float] = {}


def _auto_eager(
    rule: Rule,
    lists: Sequence[Sequence[Tensor]],
    hyper: Mapping[str, Any],
    eager: str,
    device: torch.device,
    dtype: torch.dtype,
) -> bool:
    """Run the eager tier of ``auto`` unless this list has paid for a compilation; True if ran.

    Lists are told apart by their rule, flags, device, dtype, length and first tensor, so one
    optimizer's steps accumulate and unrelated optimizers in one process do not.
    """
    key = (id(rule), static_items(hyper), device, dtype, len(lists[0]), id(lists[0][0]))
    spent = _EAGER_SPENT.get(key, 0.0)
    if spent >= AUTO_COMPILE_AFTER_S and compiled_ready(rule, hyper, len(lists)) is not False:
        return False
    start = time.perf_counter()
    _run(eager, rule, lists, hyper)
    if len(_EAGER_SPENT) >= 4096 and key not in _EAGER_SPENT:
        _EAGER_SPENT.pop(next(iter(_EAGER_SPENT)))
    _EAGER_SPENT[key] = spent + (time.perf_counter() - start)
    return True


def _groups(
    tensor_lists: Sequence[Sequence[Tensor]],
) -> dict[tuple[torch.device, torch.dtype, tuple[torch.dtype, ...]], list[int]]:
    """Indices grouped by the first list's device and every list's dtype, in order."""
    groups: dict[tuple[torch.device, torch.dtype, tuple[torch.dtype, ...]], list[int]] = {}
    for i, tensors in enumerate(zip(*tensor_lists)):
        first = tensors[0]
        key = (first.device, first.dtype, tuple(t.dtype for t in tensors))
        groups.setdefault(key, []).append(i)
    return groups
