"""AdamW and the inner Adam of low-rank optimizers, one launch per group.

AdamW per element, fp32 math (the rule ``optim.adamw.adamw_rule``):

    m ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
    θ ← θ·(1 − ηλ) − η · (m/c1) / (√(v/c2) + ε)        c1, c2 = 1 − β^t from the host

bf16/fp16 parameters are read and written in their dtype (rounded once, to nearest even or
stochastically), or through fp32 master weights (``master``: read and written in fp32, the
parameter written as its rounding) in the same kernel. ``found_inf`` (a 1-element fp32 tensor,
non-zero = skip) makes the kernel write nothing, without a host sync.
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
from optforge.optim.adamw import adam_inner_rule, adamw_master_rule, adamw_rule

__all__ = ["adam_inner_", "adamw_", "adamw_master_", "register"]


@triton.jit
def _adamw_kernel(
    p_base, m_base, v_base, g_base, w_base,
    offsets, sizes, block_tensor, block_start, found_inf, n_tensors,
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay, bc1, bc2, seed, g_scale,
    P_KIND: tl.constexpr, HAS_MASTER: tl.constexpr, STOCHASTIC: tl.constexpr,
    CHECK_INF: tl.constexpr, MAXIMIZE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, offs, mask = locate(sizes, block_tensor, block_start, found_inf, CHECK_INF, BLOCK)
    p_ptr = p_base + tl.load(offsets + t) + offs
    m_ptr = m_base + tl.load(offsets + n_tensors + t) + offs
    v_ptr = v_base + tl.load(offsets + 2 * n_tensors + t) + offs
    g_ptr = g_base + tl.load(offsets + 3 * n_tensors + t) + offs
    g = tl.load(g_ptr, mask=mask, other=0.0).to(tl.float32) * g_scale  # GradScaler's 1/scale
    if MAXIMIZE:
        g = -g
    m = tl.load(m_ptr, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr, mask=mask, other=0.0).to(tl.float32)
    if HAS_MASTER:
        w_ptr = w_base + tl.load(offsets + 4 * n_tensors + t) + offs
        p = tl.load(w_ptr, mask=mask, other=0.0)
    else:
        p = tl.load(p_ptr, mask=mask, other=0.0).to(tl.float32)
    m = m * beta1 + g * one_minus_beta1
    v = v * beta2 + g * g * one_minus_beta2
    update = (m / bc1) / (tl.sqrt(v / bc2) + eps)
    p = p * decay - update * lr
    tl.store(m_ptr, m, mask=mask)
    tl.store(v_ptr, v, mask=mask)
    if HAS_MASTER:
        tl.store(w_ptr, p, mask=mask)
    store_rounded(p_ptr, p, mask, seed, offs, P_KIND, STOCHASTIC)


def adamw_(
    lists: Sequence[Sequence[Tensor]],
    hyper: Mapping[str, Any],
    *,
    master: Sequence[Tensor] | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    found_inf: Tensor | None = None,
) -> None:
    """AdamW on ``(params, exp_avgs, exp_avg_sqs, grads)`` (one dtype per list, fp32 moments),
    in place, one launch. ``master``: fp32 master weights of bf16/fp16 params."""
    params = lists[0]
    if not params:
        return
    for lst in lists[1:3]:
        if any(t.dtype != torch.float32 for t in lst):
            raise TypeError("the Triton AdamW kernel keeps fp32 moments (at_least_fp32 state)")
    all_lists = [*lists, *([master] if master is not None else [])]
    table = table_for(all_lists)
    bases = table.bases
    lr, wd = float(hyper["lr"]), float(hyper["weight_decay"])
    beta1, beta2 = float(hyper["beta1"]), float(hyper["beta2"])
    flag = found_inf if found_inf is not None else no_flag(params[0].device)
    _adamw_kernel[grid(table)](
        bases[0], bases[1], bases[2], bases[3], bases[4] if master is not None else bases[1],
        table.offsets, table.sizes, table.block_tensor, table.block_start, flag, len(params),
        lr, beta1, 1 - beta1, beta2, 1 - beta2, float(hyper["eps"]), 1 - lr * wd,
        float(hyper["bias_correction1"]), float(hyper["bias_correction2"]), seed,
        float(hyper.get("inv_grad_scale", 1.0)),
        P_KIND=out_kind(params[0].dtype), HAS_MASTER=master is not None,
        STOCHASTIC=stochastic_rounding, CHECK_INF=found_inf is not None,
        MAXIMIZE=bool(hyper.get("maximize", False)), BLOCK=BLOCK,
    )  # fmt: skip
    count("adamw")


@triton.jit
def _adam_inner_kernel(
    u_base, m_base, v_base, g_base,
    offsets, sizes, block_tensor, block_start, found_inf, n_tensors,
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, bc1, bc2,
    U_KIND: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, offs, mask = locate(sizes, block_tensor, block_start, found_inf, False, BLOCK)
    u_ptr = u_base + tl.load(offsets + t) + offs
    m_ptr = m_base + tl.load(offsets + n_tensors + t) + offs
    v_ptr = v_base + tl.load(offsets + 2 * n_tensors + t) + offs
    g = tl.load(g_base + tl.load(offsets + 3 * n_tensors + t) + offs, mask=mask, other=0.0)
    g = g.to(tl.float32)
    m = tl.load(m_ptr, mask=mask, other=0.0).to(tl.float32) * beta1 + g * one_minus_beta1
    v = tl.load(v_ptr, mask=mask, other=0.0).to(tl.float32) * beta2 + g * g * one_minus_beta2
    tl.store(m_ptr, m, mask=mask)
    tl.store(v_ptr, v, mask=mask)
    store_rounded(u_ptr, (m / bc1) / (tl.sqrt(v / bc2) + eps), mask, 0, offs, U_KIND, False)


def adam_inner_(lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]) -> None:
    """Adam's direction on projected states ``(updates, exp_avgs, exp_avg_sqs, grads)``."""
    if not lists[0]:
        return
    table = table_for(lists)
    b = table.bases
    beta1, beta2 = float(hyper["beta1"]), float(hyper["beta2"])
    _adam_inner_kernel[grid(table)](
        b[0], b[1], b[2], b[3],
        table.offsets, table.sizes, table.block_tensor, table.block_start,
        no_flag(b[0].device), len(lists[0]),
        beta1, 1 - beta1, beta2, 1 - beta2, float(hyper["eps"]),
        float(hyper["bias_correction1"]), float(hyper["bias_correction2"]),
        U_KIND=out_kind(b[0].dtype), BLOCK=BLOCK,
    )  # fmt: skip
    count("adam_inner")




def adamw_master_(lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]) -> None:
    """``optim.adamw.adamw_master_rule`` on ``(params, masters, exp_avgs, exp_avg_sqs, grads)``:
    AdamW on the fp32 masters, each parameter written as its master's rounding, one launch."""
    params, masters, exp_avgs, exp_avg_sqs, grads = lists
    adamw_((params, exp_avgs, exp_avg_sqs, grads), hyper, master=masters)


def register(devices: tuple[str, ...], dtypes: Sequence[torch.dtype]) -> None:
    register_kernel(adamw_rule, "triton", serve(adamw_), devices=devices, dtypes=dtypes,
                    unscales=True)
    register_kernel(adamw_master_rule, "triton", serve(adamw_master_), devices=devices,
                    dtypes=dtypes, unscales=True)  # fmt: skip
    register_kernel(adam_inner_rule, "triton", serve(adam_inner_), devices=devices, dtypes=dtypes)
