"""Lion, one launch per group (the rule ``optim.lion.lion_rule``), fp32 math:

    θ ← θ·(1 − ηλ) − η·sign(β1·m + (1−β1)·g) ;  m ← β2·m + (1−β2)·g

Parameter and momentum in their own dtypes (Lion keeps m in the parameter's), each rounded
once to nearest even (or stochastically) when bf16. 20 B/param in fp32, 10 in bf16.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from optforge.kernels import register_kernel
from optforge.kernels.triton.launch import (
    BLOCK,
    count,
    grid,
    locate,
    no_flag,
    out_kind,
    serve,
    store_rounded,
    table_for,
)
from optforge.optim.lion import lion_rule

__all__ = ["lion_", "register"]


@triton.jit
def _lion_kernel(
    p_base, m_base, g_base,
    offsets, sizes, block_tensor, block_start, found_inf, n_tensors,
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2, decay, seed, g_scale,
    P_KIND: tl.constexpr, M_KIND: tl.constexpr, STOCHASTIC: tl.constexpr,
    CHECK_INF: tl.constexpr, MAXIMIZE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, offs, mask = locate(sizes, block_tensor, block_start, found_inf, CHECK_INF, BLOCK)
    p_ptr = p_base + tl.load(offsets + t) + offs
    m_ptr = m_base + tl.load(offsets + n_tensors + t) + offs
    g = tl.load(g_base + tl.load(offsets + 2 * n_tensors + t) + offs, mask=mask, other=0.0)
    g = g.to(tl.float32) * g_scale  # GradScaler's 1/scale (1 unscaled)
    if MAXIMIZE:
        g = -g
    p = tl.load(p_ptr, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr, mask=mask, other=0.0).to(tl.float32)
    c = m * beta1 + g * one_minus_beta1
    sign = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, 0.0))
    p = p * decay - sign * lr
    m = m * beta2 + g * one_minus_beta2
    store_rounded(p_ptr, p, mask, seed, offs, P_KIND, STOCHASTIC)
    store_rounded(m_ptr, m, mask, seed + 1, offs, M_KIND, STOCHASTIC)


def lion_(
    lists: Sequence[Sequence[Tensor]],
    hyper: Mapping[str, Any],
    *,
    stochastic_rounding: bool = False,
    seed: int = 0,
    found_inf: Tensor | None = None,
) -> None:
    """Lion on ``(params, exp_avgs, grads)`` in place, one launch."""
    if not lists[0]:
        return
    table = table_for(lists)
    b = table.bases
    lr, wd = float(hyper["lr"]), float(hyper["weight_decay"])
    beta1, beta2 = float(hyper["beta1"]), float(hyper["beta2"])
    flag = found_inf if found_inf is not None else no_flag(b[0].device)
    _lion_kernel[grid(table)](
        b[0], b[1], b[2],
        table.offsets, table.sizes, table.block_tensor, table.block_start, flag, len(lists[0]),
        lr, beta1, 1 - beta1, beta2, 1 - beta2, 1 - lr * wd, seed,
        float(hyper.get("inv_grad_scale", 1.0)),
        P_KIND=out_kind(b[0].dtype), M_KIND=out_kind(b[1].dtype),
        STOCHASTIC=stochastic_rounding, CHECK_INF=found_inf is not None,
        MAXIMIZE=bool(hyper.get("maximize", False)), BLOCK=BLOCK,
    )  # fmt: skip
    count("lion")



def register(devices: tuple[str, ...], dtypes: Sequence[torch.dtype]) -> None:
    register_kernel(lion_rule, "triton", serve(lion_), devices=devices, dtypes=dtypes,
                    unscales=True)
