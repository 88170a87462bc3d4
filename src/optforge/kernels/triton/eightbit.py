"""AdamW and Lion on 8-bit blockwise state (``optim.eightbit``'s rules), one launch per group.

One program per 256-element quantization block: dequantize the moments (a gather from the
256-entry code book times the block's absmax), update in fp32, take the block's new absmax
with one in-program reduction and requantize with the same table lookup as the CPU path
(``kernels.quant``: 17 top bits of the fp32 value index the count of midpoints below, one
compare finishes). 16.06 B/param for fp32 parameters and gradients, 10.06 for bf16.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from optforge.kernels import register_kernel
from optforge.kernels.quant import BLOCK as QBLOCK
from optforge.kernels.quant import _lookup, dynamic_map
from optforge.kernels.triton.launch import (
    count,
    grid,
    locate,
    no_flag,
    out_kind,
    serve,
    store_rounded,
    table_for,
)
from optforge.optim.eightbit import adamw8bit_rule, lion8bit_rule

__all__ = ["adamw8bit_", "lion8bit_", "register"]


@triton.jit
def _requantize(x, mask, codes_ptr, absmax_ptr, table, mids, QBLOCK: tl.constexpr):
    """Store the codes and the absmax of one block of fp32 values ``x``."""
    x = tl.where(mask, x, 0.0)
    absmax = tl.max(tl.abs(x), axis=0)
    y = x * (1.0 / tl.where(absmax > 0, absmax, 1.0))  # quant.quantize_blockwise's rounding
    bucket = (y.to(tl.int32, bitcast=True) >> 15) & 0x1FFFF
    below = tl.load(table + bucket, mask=mask, other=0)
    code = below + (y > tl.load(mids + below, mask=mask, other=0.0)).to(tl.int32)
    tl.store(codes_ptr, code.to(tl.uint8), mask=mask)
    lane = tl.arange(0, QBLOCK)
    first = mask & (lane == 0)  # one lane stores the block's scale (skipped with found_inf)
    tl.store(absmax_ptr + lane * 0, tl.zeros([QBLOCK], tl.float32) + absmax, mask=first)


@triton.jit
def _adamw8bit_kernel(
    p_base, m_base, ma_base, v_base, va_base, g_base,
    code1, table1, mids1, code2, table2, mids2,
    offsets, sizes, block_tensor, block_start, found_inf, n_tensors,
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps_c2, decay, step_size,
    P_KIND: tl.constexpr, CHECK_INF: tl.constexpr, MAXIMIZE: tl.constexpr,
    QBLOCK: tl.constexpr,
):  # fmt: skip
    t, offs, mask = locate(sizes, block_tensor, block_start, found_inf, CHECK_INF, QBLOCK)
    blk = tl.load(block_start + tl.program_id(0)) // QBLOCK
    p_ptr = p_base + tl.load(offsets + t) + offs
    m_ptr = m_base + tl.load(offsets + n_tensors + t) + offs
    ma_ptr = ma_base + tl.load(offsets + 2 * n_tensors + t) + blk
    v_ptr = v_base + tl.load(offsets + 3 * n_tensors + t) + offs
    va_ptr = va_base + tl.load(offsets + 4 * n_tensors + t) + blk
    g = tl.load(g_base + tl.load(offsets + 5 * n_tensors + t) + offs, mask=mask, other=0.0)
    g = g.to(tl.float32)
    if MAXIMIZE:
        g = -g
    mc = tl.load(m_ptr, mask=mask, other=0).to(tl.int32)
    vc = tl.load(v_ptr, mask=mask, other=0).to(tl.int32)
    m = tl.load(code1 + mc, mask=mask, other=0.0) * tl.load(ma_ptr)
    v = tl.load(code2 + vc, mask=mask, other=0.0) * tl.load(va_ptr)
    m = m * beta1 + g * one_minus_beta1
    v = v * beta2 + g * g * one_minus_beta2
    denom = tl.sqrt(v) + eps_c2
    p = tl.load(p_ptr, mask=mask, other=0.0).to(tl.float32) * decay - step_size * (m / denom)
    store_rounded(p_ptr, p, mask, 0, offs, P_KIND, False)
    _requantize(m, mask, m_ptr, ma_ptr, table1, mids1, QBLOCK)
    _requantize(v, mask, v_ptr, va_ptr, table2, mids2, QBLOCK)


@triton.jit
def _lion8bit_kernel(
    p_base, m_base, ma_base, g_base, code1, table1, mids1,
    offsets, sizes, block_tensor, block_start, found_inf, n_tensors,
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2, decay,
    P_KIND: tl.constexpr, CHECK_INF: tl.constexpr, MAXIMIZE: tl.constexpr,
    QBLOCK: tl.constexpr,
):  # fmt: skip
    t, offs, mask = locate(sizes, block_tensor, block_start, found_inf, CHECK_INF, QBLOCK)
    blk = tl.load(block_start + tl.program_id(0)) // QBLOCK
    p_ptr = p_base + tl.load(offsets + t) + offs
    m_ptr = m_base + tl.load(offsets + n_tensors + t) + offs
    ma_ptr = ma_base + tl.load(offsets + 2 * n_tensors + t) + blk
    g = tl.load(g_base + tl.load(offsets + 3 * n_tensors + t) + offs, mask=mask, other=0.0)
    g = g.to(tl.float32)
    if MAXIMIZE:
        g = -g
    mc = tl.load(m_ptr, mask=mask, other=0).to(tl.int32)
    m = tl.load(code1 + mc, mask=mask, other=0.0) * tl.load(ma_ptr)
    c = m * beta1 + g * one_minus_beta1
    sign = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, 0.0))
    p = tl.load(p_ptr, mask=mask, other=0.0).to(tl.float32) * decay - sign * lr
    store_rounded(p_ptr, p, mask, 0, offs, P_KIND, False)
    _requantize(m * beta2 + g * one_minus_beta2, mask, m_ptr, ma_ptr, table1, mids1, QBLOCK)


def _books(device: torch.device, signed: bool) -> tuple[Tensor, Tensor, Tensor]:
    code, _ = dynamic_map(signed, device)
    table, mids = _lookup(signed, device)
    return code, table, mids


def adamw8bit_(
    lists: Sequence[Sequence[Tensor]],
    hyper: Mapping[str, Any],
    *,
    found_inf: Tensor | None = None,
) -> None:
    """AdamW8bit on ``(params, exp_avgs, exp_avg_absmaxes, exp_avg_sqs, exp_avg_sq_absmaxes,
    grads)`` in place, one launch."""
    if not lists[0]:
        return
    table = table_for(lists, block=QBLOCK)
    b = table.bases
    device = b[0].device
    lr, wd = float(hyper["lr"]), float(hyper["weight_decay"])
    beta1, beta2 = float(hyper["beta1"]), float(hyper["beta2"])
    flag = found_inf if found_inf is not None else no_flag(device)
    c2 = float(hyper["bias_correction2"]) ** 0.5  # the eager rule's scalars, fp32 args
    _adamw8bit_kernel[grid(table)](
        *b, *_books(device, True), *_books(device, False),
        table.offsets, table.sizes, table.block_tensor, table.block_start, flag, len(lists[0]),
        beta1, 1 - beta1, beta2, 1 - beta2, float(hyper["eps"]) * c2, 1 - lr * wd,
        lr * c2 / float(hyper["bias_correction1"]),
        P_KIND=out_kind(b[0].dtype), CHECK_INF=found_inf is not None,
        MAXIMIZE=bool(hyper.get("maximize", False)), QBLOCK=QBLOCK,
    )  # fmt: skip
    count("adamw8bit")


def lion8bit_(
    lists: Sequence[Sequence[Tensor]],
    hyper: Mapping[str, Any],
    *,
    found_inf: Tensor | None = None,
) -> None:
    """Lion8bit on ``(params, exp_avgs, exp_avg_absmaxes, grads)`` in place, one launch."""
    if not lists[0]:
        return
    table = table_for(lists, block=QBLOCK)
    b = table.bases
    device = b[0].device
    lr, wd = float(hyper["lr"]), float(hyper["weight_decay"])
    beta1, beta2 = float(hyper["beta1"]), float(hyper["beta2"])
    flag = found_inf if found_inf is not None else no_flag(device)
    _lion8bit_kernel[grid(table)](
        *b, *_books(device, True),
        table.offsets, table.sizes, table.block_tensor, table.block_start, flag, len(lists[0]),
        lr, beta1, 1 - beta1, beta2, 1 - beta2, 1 - lr * wd,
        P_KIND=out_kind(b[0].dtype), CHECK_INF=found_inf is not None,
        MAXIMIZE=bool(hyper.get("maximize", False)), QBLOCK=QBLOCK,
    )  # fmt: skip
    count("lion8bit")




def register(devices: tuple[str, ...], dtypes: Sequence[torch.dtype]) -> None:
    register_kernel(adamw8bit_rule, "triton", serve(adamw8bit_), devices=devices, dtypes=dtypes)
    register_kernel(lion8bit_rule, "triton", serve(lion8bit_), devices=devices, dtypes=dtypes)
