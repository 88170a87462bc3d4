"""The multi-tensor launch: one grid over every block of every tensor of a group.

Layout: each list's tensors are addressed as ``base + offset[i]`` (elements), where ``base`` is
the list's first tensor and ``offset`` an int64 table; a block table maps each program to
(tensor, first element). One int64 buffer holds all tables, copied to the device once per new
list of tensors (cached by data pointers and sizes). Element offsets rather than a table of raw
pointers: no integer-to-pointer casts, so the same kernel runs compiled and in the
interpreter. ``BLOCK`` elements per program, 1024 as FlashOptim's and torch's fused AdamW
(no autotune: an in-place kernel re-run by the autotuner would apply the update several times).

Also the bf16 stores every kernel shares: round-to-nearest-even by integer arithmetic (the
interpreter truncates fp32->bf16 casts, compiled Triton rounds to nearest even; this makes both
bit-exact) and stochastic rounding (random low 16 bits added before truncation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from optforge.kernels.rule import loop

__all__ = ["BLOCK", "LAUNCHES", "TensorTable", "store_rounded", "table_for"]

BLOCK = 1024
#: kernel launches per kernel name, for tests and benchmarks (``launches()``).
LAUNCHES: dict[str, int] = {}


def count(name: str) -> None:
    LAUNCHES[name] = LAUNCHES.get(name, 0) + 1


@dataclass
class TensorTable:
    """Offsets of every list's tensors from its first, sizes and the block table, on device."""

    bases: list[Tensor]
    offsets: Tensor  # (n_lists, T) int64, elements from bases[j]
    sizes: Tensor  # (T,) int64
    block_tensor: Tensor  # (n_blocks,) int64
    block_start: Tensor  # (n_blocks,) int64
    n_blocks: int


_CACHE: dict[tuple, TensorTable] = {}


def table_for(lists: Sequence[Sequence[Tensor]], block: int = BLOCK) -> TensorTable:
    """The table of ``lists`` (parallel lists, tensors contiguous; entry i of each list has the
    same number of elements, except lists whose tensors are per-tensor scalars)."""
    key = tuple((t.data_ptr(), t.numel()) for lst in lists for t in lst) + (block,)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    for lst in lists:
        for t in lst:
            if not t.is_contiguous():
                raise ValueError("the Triton kernels take contiguous tensors only")
    bases = [lst[0] for lst in lists]
    offsets = [
        [(t.data_ptr() - lst[0].data_ptr()) // t.element_size() for t in lst] for lst in lists
    ]
    sizes = [t.numel() for t in lists[0]]
    block_tensor, block_start = [], []
    for i, n in enumerate(sizes):
        for s in range(0, n, block):
            block_tensor.append(i)
            block_start.append(s)
    n_lists, n_tensors, n_blocks = len(lists), len(sizes), len(block_tensor)
    flat = torch.tensor(
        [x for row in offsets for x in row] + sizes + block_tensor + block_start,
        dtype=torch.int64,
    ).to(bases[0].device, non_blocking=True)
    cut = n_lists * n_tensors
    table = TensorTable(
        bases,
        flat[:cut].view(n_lists, n_tensors),
        flat[cut : cut + n_tensors],
        flat[cut + n_tensors : cut + n_tensors + n_blocks],
        flat[cut + n_tensors + n_blocks :],
        n_blocks,
    )
    if len(_CACHE) >= 256:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = table
    return table


@triton.jit
def store_rounded(ptr, x, mask, seed, offs, OUT_KIND: tl.constexpr, STOCHASTIC: tl.constexpr):
    """Store fp32 ``x`` as fp32 (OUT_KIND 0), bf16 (1: nearest even, or stochastic) or fp16 (2).

    bf16 by integer arithmetic on finite values: u + 0x7FFF + (bit 16 of u), low half cleared
    (nearest even); stochastic: u + 16 random bits, low half cleared (unbiased). Then the cast
    of a value with a clear low half is exact in both the interpreter and compiled code.
    """
    if OUT_KIND == 0:
        tl.store(ptr, x, mask=mask)
    elif OUT_KIND == 1:
        u = x.to(tl.uint32, bitcast=True)
        if STOCHASTIC:
            noise = tl.randint(seed, offs).to(tl.uint32) & 0xFFFF
            r = (u + noise) & 0xFFFF0000
        else:
            r = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        # inf and NaN keep their bits (no carry into the exponent)
        finite = (u & 0x7F800000) != 0x7F800000
        r = tl.where(finite, r, u & 0xFFFF0000 | ((u & 0xFFFF) != 0).to(tl.uint32) << 16)
        tl.store(ptr, r.to(tl.float32, bitcast=True).to(tl.bfloat16), mask=mask)
    else:
        tl.store(ptr, x.to(tl.float16), mask=mask)


def out_kind(dtype: torch.dtype) -> int:
    return {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}[dtype]


def grid(table: TensorTable) -> tuple[int]:
    return (table.n_blocks,)


__all__ += ["count", "grid", "out_kind", "triton"]


@triton.jit
def locate(
    sizes, block_tensor, block_start, found_inf, CHECK_INF: tl.constexpr, BLOCK: tl.constexpr
):
    """This program's tensor index, element offsets and mask (False everywhere when
    ``found_inf`` holds a non-zero value: the writes are skipped with no host sync)."""
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    offs = tl.load(block_start + pid) + tl.arange(0, BLOCK)
    mask = offs < tl.load(sizes + t)
    if CHECK_INF:
        # a block-shaped load of the one flag (a scalar & block mask fails in the interpreter)
        mask = mask & (tl.load(found_inf + offs * 0) == 0)
    return t, offs, mask


def no_flag(device: torch.device) -> Tensor:
    """A zero fp32 flag for launches without ``found_inf`` (never read: CHECK_INF is off)."""
    flag = _FLAGS.get(device)
    if flag is None:
        flag = _FLAGS[device] = torch.zeros(1, dtype=torch.float32, device=device)
    return flag


_FLAGS: dict[torch.device, Tensor] = {}
__all__ += ["locate", "no_flag"]


def serve(kernel: Any) -> Any:
    """The ``register_kernel`` function of ``kernel(lists, hyper)``: contiguous entries go to
    the kernel in one launch, any others (views, channels_last) to the rule's loop."""

    def fn(rule: Any, lists: Sequence[Sequence[Tensor]], hyper: Any) -> None:
        if len(lists) > rule.n_out + 1:
            # The optimizer's stochastic-rounding bits (an extra list, OptimizerBase._apply):
            # the kernels draw their own, so the rule's loop keeps the optimizer's streams,
            # reproducible and resumable as on every other backend.
            loop(rule, lists, hyper)
            return
        dense = [i for i in range(len(lists[0])) if all(lst[i].is_contiguous() for lst in lists)]
        if len(dense) == len(lists[0]):
            kernel(lists, hyper)
            return
        if dense:
            kernel([[lst[i] for i in dense] for lst in lists], hyper)
        rest = [i for i in range(len(lists[0])) if i not in set(dense)]
        loop(rule, [[lst[i] for i in rest] for lst in lists], hyper)

    return fn


__all__ += ["serve"]
