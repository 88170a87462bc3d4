"""The compiled backend: ``torch.compile`` graphs that update ``CHUNK`` tensors per call.

One graph per (rule, flag values, number of arguments) serves every list: shapes are dynamic
and *not duck-shaped* (two tensors of equal size at compile time do not make the graph assume
they always are), so a transformer's mix of sizes, a second model, or a new parameter group
reuse it. A call takes ``CHUNK`` tensors; the last chunk is padded with small persistent
scratch tensors. This cuts the per-tensor cost of a compiled call (guards and wrappers, ~70 µs
per call on CPU) by about ``CHUNK`` times while keeping one bounded compile, where one static
graph over the whole list compiles for minutes on a 300-tensor model and again for any other
list. Elementwise rules also get small tensors (biases, norms) concatenated into one entry.

Hyperparameters are persistent 0-d tensors, refilled in place: a changing lr neither
recompiles nor copies from the host (``fill_`` passes the value as a kernel argument). Flags
(bools, None) are constants of the graph: one code object per flag combination, so each has
its own recompile budget. A compilation that fails (recompile limit hit in a long-lived
process, no C++ compiler) warns once and falls back to the loop: training never dies of a
compiler.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from optforge.kernels.rule import Rule, flat_view, loop, write

__all__ = [
    "CHUNK",
    "SMALL",
    "compiled_all_finite",
    "compiled_ready",
    "persistent_scalar",
    "run_compiled",
    "static_items",
]

#: tensors updated per compiled call.
CHUNK = 16
#: elementwise rules concatenate tensors at most this large into one entry of a chunk.
SMALL = 1 << 14

_GRAPHS: dict[tuple[Any, ...], Callable[..., None]] = {}
_FAILED: set[tuple[Any, ...]] = set()
_SCALARS: dict[tuple[torch.device, torch.dtype, str], Tensor] = {}
_SCRATCH: dict[tuple[Any, ...], list[Tensor]] = {}
_WARM: set[tuple[Any, ...]] = set()
#: the ``torch.compile`` backend; tests of the dispatch logic swap in ``"eager"`` (dynamo's
#: tracing, guards and recompile limits without inductor's minute-long C++ builds).
COMPILER: Any = "inductor"
#: elements per entry of the call that compiles a graph. Inductor decides from the sizes it
#: sees at compile time whether a loop is worth threads; dynamic shapes keep that decision for
#: every later size, so it must see sizes worth threading (not a 2-element pad).
_WARM_NUMEL = 1 << 16


def static_items(hyper: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The hyperparameters that select a code path (bools, None): constants of a graph."""
    return tuple(sorted((k, v) for k, v in hyper.items() if v is None or isinstance(v, bool)))


def _key(rule: Rule, hyper: Mapping[str, Any], nargs: int) -> tuple[Any, ...]:
    return (id(rule), static_items(hyper), nargs)


def compiled_ready(rule: Rule, hyper: Mapping[str, Any], nargs: int) -> bool | None:
    """True if the graph for this call exists, False if its compilation failed, else None."""
    key = _key(rule, hyper, nargs)
    if key in _FAILED:
        return False
    return True if key in _GRAPHS and getattr(_GRAPHS[key], "_optforge_ran", False) else None


def _graph(rule: Rule, key: tuple[Any, ...], names: tuple[str, ...]) -> Callable[..., None]:
    fn = _GRAPHS.get(key)
    if fn is not None:
        return fn
    _, static, nargs = key
    flags = dict(static)
    n_out = rule.n_out

    def body(tensors: list[Tensor], scalars: list[Tensor]) -> None:
        hyper = dict(zip(names, scalars))
        for i in range(0, len(tensors), nargs):
            entry = tensors[i : i + nargs]
            write(entry[:n_out], rule(*entry, **hyper, **flags))

    # Dynamo keeps compiled graphs, and its recompile budget, per code object: one per
    # (rule, flag values) leaves each with only dtype variants to hold.
    tag = "_".join(f"{k}{int(bool(v))}" for k, v in static)
    body.__code__ = body.__code__.replace(co_name=f"optforge_{rule.name}_{tag}")
    compiled = torch.compile(body, backend=COMPILER, dynamic=True, fullgraph=True)

    def call(tensors: list[Tensor], scalars: list[Tensor]) -> None:
        # No duck shaping: sizes equal at compile time must not become a guard. Read when a
        # graph is traced only, so patching around every call costs a dict update.
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            compiled(tensors, scalars)
        call._optforge_ran = True  # type: ignore[attr-defined]

    _GRAPHS[key] = call
    return call


def persistent_scalar(device: torch.device, dtype: torch.dtype, name: str, value: float) -> Tensor:
    """A persistent 0-d tensor holding ``value``: refilled in place, never reallocated."""
    key = (device, dtype, name)
    t = _SCALARS.get(key)
    if t is None:
        t = _SCALARS[key] = torch.tensor(value, dtype=dtype, device=device)
    else:
        t.fill_(value)  # a tiny kernel with the value as argument: no host-to-device copy
    return t


def _scratch(like: Sequence[Tensor], slot: int) -> list[Tensor]:
    """Persistent 2-element tensors that pad a chunk (distinct per slot: no aliasing guards;
    two elements: sizes 0 and 1 would be specialized)."""
    key = (tuple((t.device, t.dtype) for t in like), slot)
    pad = _SCRATCH.get(key)
    if pad is None:
        pad = _SCRATCH[key] = [torch.zeros(2, dtype=t.dtype, device=t.device) for t in like]
    return pad


def _warm_up(
    fn: Callable[..., None], key: tuple[Any, ...], like: Sequence[Tensor], scalars: list[Tensor]
) -> None:
    """Compile ``fn`` for these dtypes and device on scratch inputs of a threadable size."""
    warm = (key, tuple((t.device, t.dtype) for t in like))
    if warm in _WARM:
        return
    args = [
        torch.zeros(_WARM_NUMEL + slot, dtype=t.dtype, device=t.device)
        for slot in range(CHUNK)
        for t in like
    ]
    fn(args, scalars)
    _WARM.add(warm)


def run_compiled(rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]) -> None:
    nargs = len(lists)
    key = _key(rule, hyper, nargs)
    if key in _FAILED:
        loop(rule, lists, hyper)
        return
    first = lists[0][0]
    # Scalars in fp64, as the eager path's Python floats: a rule's scalar arithmetic
    # (``1 - beta2``, ``1 - lr * weight_decay``) then rounds as in Python, and the result is
    # rounded once to the tensor's compute dtype where it meets a tensor, as eager ATen does
    # with a Python scalar. In fp32 scalars, ``1 - 0.99`` differs from Python's in the last bit
    # and moved a quarter of Lion's momentum elements by an ulp.
    names = tuple(sorted(k for k, v in hyper.items() if not (v is None or isinstance(v, bool))))
    scalars = [persistent_scalar(first.device, torch.float64, k, float(hyper[k])) for k in names]

    entries: list[list[Tensor]] = []
    small: list[list[Tensor]] = []
    eager: list[tuple[Tensor, ...]] = []
    for tensors in zip(*lists):
        flat = flat_view(tensors)
        if flat is None:  # strided views: rare
            eager.append(tensors)
            continue
        if flat[0].requires_grad:  # parameters: requires_grad is guarded, keep one graph
            flat = [t.detach() for t in flat]
        if rule.elementwise and flat[0].numel() <= SMALL:
            small.append(flat)
        elif flat[0].numel() >= 2:  # sizes 0 and 1 would be specialized by the compiler
            entries.append(flat)
        else:
            eager.append(tensors)
    packed = None
    if len(small) == 1 and small[0][0].numel() >= 2:
        entries.append(small[0])
    elif small:
        columns = list(zip(*small))
        packed = [torch.cat(col) for col in columns]
        if packed[0].numel() >= 2:
            entries.append(packed)
        else:
            eager.extend(small)
            packed = None
    start = 0
    try:
        if entries:
            fn = _graph(rule, key, names)
            _warm_up(fn, key, entries[0], scalars)
            for start in range(0, len(entries), CHUNK):
                chunk = entries[start : start + CHUNK]
                args = [t for entry in chunk for t in entry]
                for slot in range(len(chunk), CHUNK):
                    args.extend(_scratch(chunk[0], slot))
                fn(args, scalars)
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back, once
        _FAILED.add(key)
        warnings.warn(
            f"optforge: compiling {rule.name} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); running it eagerly from now on",
            RuntimeWarning,
            stacklevel=4,
        )
        # Chunks before ``start`` ran; a call that failed to compile wrote nothing, so the
        # rest runs eagerly (the packed buffers too, then copied back below as usual).
        for entry in entries[start:]:
            write(entry[: rule.n_out], rule(*entry, **hyper))
    if packed is not None:
        sizes = [e[0].numel() for e in small]
        for outs, value in zip(list(zip(*small))[: rule.n_out], packed):
            torch._foreach_copy_(list(outs), list(value.split(sizes)))
    for tensors in eager:
        loop(rule, [[t] for t in tensors], hyper)


#: the finiteness check's graph key (one graph, like a rule's, for every list and dtype mix).
_FINITE_KEY = ("all_finite",)


def _finite_graph() -> Callable[[list[Tensor]], Tensor]:
    fn = _GRAPHS.get(_FINITE_KEY)
    if fn is not None:
        return fn

    def optforge_all_finite(tensors: list[Tensor]) -> Tensor:
        # |t|'s max is finite exactly when every element is (inductor's max propagates NaN):
        # one vectorized reduction per tensor; isfinite().all() compiles to a scalar loop.
        return torch.stack([t.abs().amax().float() for t in tensors]).isfinite().all()

    compiled = torch.compile(optforge_all_finite, backend=COMPILER, dynamic=True, fullgraph=True)

    def call(tensors: list[Tensor]) -> Tensor:
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            out = compiled(tensors)
        call._optforge_ran = True  # type: ignore[attr-defined]
        return out

    _GRAPHS[_FINITE_KEY] = call
    return call


def compiled_all_finite(tensors: Sequence[Tensor]) -> Tensor | None:
    """A 0-d bool tensor: every element of every tensor is finite (no host sync). One compiled
    reduction per ``CHUNK`` tensors, a read of each gradient and nothing written; None when the
    graph failed to compile (the caller checks eagerly)."""
    if _FINITE_KEY in _FAILED:
        return None
    entries, eager = [], []
    for t in tensors:
        flat = flat_view([t])
        if flat is None or t.numel() < 2:  # strided views; sizes 0 and 1 would be specialized
            eager.append(t)
        else:
            entries.append(flat[0].detach())
    flags = [torch.isfinite(t).all() for t in eager]
    try:
        if entries:
            fn = _finite_graph()
            warm = (_FINITE_KEY, entries[0].device, entries[0].dtype)
            if warm not in _WARM:  # compile on sizes worth threading (see _WARM_NUMEL)
                like = entries[0]
                fn([torch.zeros(_WARM_NUMEL + i, dtype=like.dtype, device=like.device)
                    for i in range(CHUNK)])
                _WARM.add(warm)
            for start in range(0, len(entries), CHUNK):
                chunk = entries[start : start + CHUNK]
                for slot in range(len(chunk), CHUNK):
                    chunk.append(_scratch(chunk[:1], slot)[0])
                flags.append(fn(chunk))
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back, once
        _FAILED.add(_FINITE_KEY)
        warnings.warn(
            f"optforge: compiling the finiteness check failed ({type(exc).__name__}); "
            "checking eagerly from now on",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    device = tensors[0].device
    return torch.stack([f.to(device) for f in flags]).all() if flags else torch.tensor(True)
