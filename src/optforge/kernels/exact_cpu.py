"""The ``"native"`` backend: compile-free C loops for the exact elementwise rules on CPU.

``exact_cpu.c`` runs Lion, AdamW (and Adam's direction alone, the low-rank inner rule) and
SGD with momentum on fp32 CPU tensors, one call per list, its fixed-size blocks shared out over
``torch.get_num_threads()`` OpenMP threads across all tensors: one read of every input and one
write of every output (Lion: 20 B per parameter, AdamW: 28), where the eager rule writes a
temporary per operation. Its arithmetic is the rule's (``optim.rules``), operation for
operation, rounded as eager ATen rounds, so the results are **bit-identical** to
``backend="loop"`` (tests/kernels/test_exact_cpu.py): a checkpoint resumes exactly on any path.
Registered for those rules under ``auto``, so the default construction runs it from the first
step, with no ``torch.compile`` and no ski rental (``kernels.dispatch``).

Also ``all_finite``: whether every element of a list of fp32/bf16/fp16/fp64 tensors is finite,
one call, an integer test of the exponent bits (exact, and no float reassociation to vectorize).

Built on first use by ``kernels.cbuild`` (about a second, cached). Without a compiler, or with
``OPTFORGE_NATIVE_EXACT=0``, ``available()`` is False and everything runs on the other tiers.
A kernel call serves the entries it can: fp32 CPU tensors sharing one dense layout
(contiguous, channels_last, ...), Python-number hyperparameters and the flags the rules have
(maximize, nesterov, dampening, weight decay, a GradScaler's unscale); it returns the indices of
the others (other dtypes, strided views, tensor-valued hyperparameters, stochastic-rounding
bits), which the dispatch runs on the tier ``auto`` would use without it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from optforge.kernels import cbuild
from optforge.kernels.rule import Rule, flat_view

__all__ = ["all_finite", "available", "register"]

_SOURCE = Path(__file__).with_name("exact_cpu.c")
#: -ffp-contract=off: no fused multiply-add, every operation rounds as eager ATen's does.
#: -fno-math-errno lets sqrtf be the IEEE instruction (correctly rounded: rules.exact_sqrt's
#: value) without an errno branch; -fno-trapping-math changes no result either.
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
          "-fno-trapping-math", "-shared", "-fPIC")
_BLOCK = 0  # elements per block, read from the library (exact_block)
#: dtype codes of all_finite
_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}


def _declare(lib: Any) -> None:
    global _BLOCK
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.lion.argtypes = [i64, p, p, p, p, p, p, c_int, c_int, c_int]
    lib.adam.argtypes = [i64, p, p, p, p, p, p, p, c_int, c_int, c_int, c_int]
    lib.sgd_momentum.argtypes = [i64, p, p, p, p, p, p, c_int, c_int, c_int, c_int]
    lib.all_finite.argtypes = [i64, p, p, p, p, c_int]
    lib.all_finite.restype = c_int
    lib.exact_block.restype = i64
    lib.lion.restype = lib.adam.restype = lib.sgd_momentum.restype = None
    _BLOCK = int(lib.exact_block())


def _load() -> Any:
    """The compiled library, built on first use; None (and a warning once) if it cannot be."""
    return cbuild.load(
        _SOURCE, _FLAGS, switch="OPTFORGE_NATIVE_EXACT", declare=_declare,
        fallback="Lion, AdamW and SGD run their eager rule on CPU (compiled after 30 s)",
    )


def available() -> bool:
    """The library is built (or can be) and enabled."""
    return _load() is not None


def _tables(sizes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """numel per tensor and the cumulative block counts (``first``, one longer)."""
    numel = torch.tensor(sizes, dtype=torch.int64)
    first = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    torch.cumsum((numel + _BLOCK - 1) // _BLOCK, 0, out=first[1:])
    return numel, first


def _addresses(tensors: Sequence[Tensor]) -> Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)


def all_finite(tensors: Sequence[Tensor]) -> tuple[bool, list[Tensor]]:
    """(whether every element of the tensors it serves is finite, the tensors it does not
    serve): CPU tensors of fp32, bf16, fp16 or fp64 in one dense layout, in one call."""
    lib = _load()
    if lib is None:
        return True, list(tensors)
    served: list[Tensor] = []
    rest: list[Tensor] = []
    for t in tensors:
        ok = t.is_cpu and t.dtype in _KINDS and (t.is_contiguous() or flat_view([t]) is not None)
        (served if ok else rest).append(t)
    if not served:
        return True, rest
    numel, first = _tables([t.numel() for t in served])
    kinds = torch.tensor([_KINDS[t.dtype] for t in served], dtype=torch.int32)
    addr = _addresses(served)
    ok = lib.all_finite(len(served), numel.data_ptr(), first.data_ptr(), addr.data_ptr(),
                        kinds.data_ptr(), torch.get_num_threads())
    return bool(ok), rest


def _f32(values: Sequence[float]) -> Tensor:
    """The values rounded to fp32 (nearest even), as eager ATen rounds a Python scalar that
    meets an fp32 tensor; the scalar arithmetic before it was done in double, as in the rule."""
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


#: per kernel: the hyperparameter names its rule takes (besides inv_grad_scale) and the number
#: of tensor lists; any other set of names (a rule or caller it was not written for) falls back
_LION = ({"lr", "beta1", "beta2", "weight_decay", "maximize"}, 3)
_ADAMW = ({"lr", "beta1", "beta2", "eps", "weight_decay", "maximize", "bias_correction1",
           "bias_correction2"}, 4)
_ADAM_INNER = ({"beta1", "beta2", "eps", "bias_correction1", "bias_correction2"}, 4)
_SGD = ({"lr", "weight_decay", "maximize", "momentum", "dampening", "nesterov"}, 3)
#: the boolean hyperparameters (code paths); every other one must be a Python number
_FLAGS_NAMES = ("maximize", "nesterov")


def _accepts(spec: tuple[set[str], int], hyper: Mapping[str, Any]) -> bool:
    names = set(hyper) - {"inv_grad_scale"}
    if names != spec[0]:
        return False
    return all(
        isinstance(v, bool) if k in _FLAGS_NAMES else _number(v) for k, v in hyper.items()
    )


def _call(kind: str, lib: Any, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]
          ) -> None:
    numel, first = _tables([t.numel() for t in lists[0]])
    addr = [_addresses(lst) for lst in lists]
    ptrs = [a.data_ptr() for a in addr]
    threads = torch.get_num_threads()
    unscale = "inv_grad_scale" in hyper
    inv = float(hyper.get("inv_grad_scale", 1.0))
    maximize = int(bool(hyper.get("maximize", False)))
    n = len(lists[0])
    if kind == "sgd":
        lr, wd = float(hyper["lr"]), float(hyper["weight_decay"])
        h = _f32([lr, float(hyper["momentum"]), 1 - float(hyper["dampening"]), 1 - lr * wd, inv])
        lib.sgd_momentum(n, numel.data_ptr(), first.data_ptr(), *ptrs, h.data_ptr(), maximize,
                         int(unscale), int(hyper["nesterov"]), threads)
        return
    b1, b2 = float(hyper["beta1"]), float(hyper["beta2"])
    lr = float(hyper.get("lr", 0.0))
    decay = 1 - lr * float(hyper.get("weight_decay", 0.0))
    values = [lr, b1, 1 - b1, b2, 1 - b2, decay, inv]
    if kind == "lion":
        h = _f32(values)
        lib.lion(n, numel.data_ptr(), first.data_ptr(), *ptrs, h.data_ptr(), maximize,
                 int(unscale), threads)
        return
    values += [float(hyper["eps"]), float(hyper["bias_correction1"]),
               float(hyper["bias_correction2"])]
    h = _f32(values)
    lib.adam(n, numel.data_ptr(), first.data_ptr(), *ptrs, h.data_ptr(), maximize,
             int(unscale), int(kind == "adam_inner"), threads)


def _fp32_cpu_dense(lists: Sequence[Sequence[Tensor]]) -> list[bool]:
    """Per entry: every tensor fp32, on the CPU, and all in one dense layout. This runs over
    every tensor at every step, so the common case is flat comprehensions of attribute tests
    (~3x faster than a generator per entry on 308 tensors)."""
    f32 = torch.float32
    if not all(t.dtype == f32 and t.is_cpu for lst in lists for t in lst):
        return [
            all(t.dtype == f32 and t.is_cpu for t in entry) and flat_view(entry) is not None
            for entry in zip(*lists)
        ]
    contiguous = zip(*[[t.is_contiguous() for t in lst] for lst in lists])
    return [
        all(flags) or flat_view(entry) is not None
        for flags, entry in zip(contiguous, zip(*lists))
    ]


def _kernel(kind: str, spec: tuple[set[str], int]) -> Callable[..., list[int]]:
    """The ``register_kernel`` function of one C loop: runs the entries it serves in one call,
    returns the indices of the others."""
    n_lists = spec[1]

    def fn(rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]
           ) -> list[int]:
        everything = list(range(len(lists[0])))
        lib = _load()
        if lib is None or len(lists) != n_lists or not _accepts(spec, hyper):
            return everything
        served, rest = [], []
        for i, ok in enumerate(_fp32_cpu_dense(lists)):
            (served if ok else rest).append(i)
        if served:
            chosen = lists if not rest else [[lst[i] for i in served] for lst in lists]
            _call(kind, lib, chosen, hyper)
        return rest

    return fn


def register() -> None:
    """Register the C loops under the backend name ``"native"`` for fp32 CPU tensors. Nothing
    is built until ``auto`` or ``backend="native"`` first meets such a list."""
    from optforge.kernels.dispatch import register_kernel
    from optforge.optim.adamw import adam_inner_rule, adamw_rule
    from optforge.optim.lion import lion_rule
    from optforge.optim.sgd import sgd_momentum_rule

    for rule, kind, spec in (
        (lion_rule, "lion", _LION),
        (adamw_rule, "adamw", _ADAMW),
        (adam_inner_rule, "adam_inner", _ADAM_INNER),
        (sgd_momentum_rule, "sgd", _SGD),
    ):
        register_kernel(
            rule, "native", _kernel(kind, spec), devices=("cpu",), dtypes=(torch.float32,),
            unscales=kind != "adam_inner", available=available, priority=-1,
        )
