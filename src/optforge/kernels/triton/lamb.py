"""LAMB in two launches per group (the rule ``optim.lamb.lamb_rule``), 40 B/param in fp32:

1. moments: m, v updated and written; each program adds its block's Σθ² and Σu² into the
   tensor's two slots of a norm buffer (atomic adds: block partials, no per-tensor launch);
2. update: u recomputed from the new m, v; r = ‖θ‖/‖u‖ (1 where a norm is 0; ‖θ‖ clamped at
   ``max_weight_norm``, r at ``max_trust_ratio``); θ ← θ − η·r·u.

    u = (m/c1) / (√(v/c2) + ε) + λ·θ
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
from optforge.optim.lamb import lamb_rule

__all__ = ["lamb_", "register"]


@triton.jit
def _lamb_moments_kernel(
    p_base, m_base, v_base, g_base, norms,
    offsets, sizes, block_tensor, block_start, found_inf, n_tensors,
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, bc1, bc2, grad_scale,
    M_KIND: tl.constexpr, CHECK_INF: tl.constexpr, MAXIMIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    t, offs, mask = locate(sizes, block_tensor, block_start, found_inf, CHECK_INF, BLOCK)
    m_ptr = m_base + tl.load(offsets + n_tensors + t) + offs
    v_ptr = v_base + tl.load(offsets + 2 * n_tensors + t) + offs
    g = tl.load(g_base + tl.load(offsets + 3 * n_tensors + t) + offs, mask=mask, other=0.0)
    g = g.to(tl.float32)
    if MAXIMIZE:
        g = -g
    g = g * grad_scale
    p = tl.load(p_base + tl.load(offsets + t) + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr, mask=mask, other=0.0).to(tl.float32) * beta1 + g * one_minus_beta1
    v = tl.load(v_ptr, mask=mask, other=0.0).to(tl.float32) * beta2 + g * g * one_minus_beta2
    store_rounded(m_ptr, m, mask, 0, offs, M_KIND, False)  # LAMB's moments: the param's dtype
    store_rounded(v_ptr, v, mask, 0, offs, M_KIND, False)
    u = (m / bc1) / (tl.sqrt(v / bc2) + eps) + p * weight_decay
    u = tl.where(mask, u, 0.0)
    tl.atomic_add(norms + 2 * t, tl.sum(p * p, axis=0))
    tl.atomic_add(norms + 2 * t + 1, tl.sum(u * u, axis=0))


@triton.jit
def _lamb_update_kernel(
    p_base, m_base, v_base, norms,
    offsets, sizes, block_tensor, block_start, found_inf, n_tensors,
    lr, eps, weight_decay, bc1, bc2, max_weight_norm, max_trust_ratio,
    P_KIND: tl.constexpr, ADAPT: tl.constexpr, CHECK_INF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, offs, mask = locate(sizes, block_tensor, block_start, found_inf, CHECK_INF, BLOCK)
    p_ptr = p_base + tl.load(offsets + t) + offs
    p = tl.load(p_ptr, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_base + tl.load(offsets + n_tensors + t) + offs, mask=mask, other=0.0)
    v = tl.load(v_base + tl.load(offsets + 2 * n_tensors + t) + offs, mask=mask, other=0.0)
    u = (m.to(tl.float32) / bc1) / (tl.sqrt(v.to(tl.float32) / bc2) + eps) + p * weight_decay
    if ADAPT:
        p_norm = tl.minimum(tl.sqrt(tl.load(norms + 2 * t)), max_weight_norm)
        u_norm = tl.sqrt(tl.load(norms + 2 * t + 1))
        valid = (p_norm > 0) & (u_norm > 0)
        ratio = tl.where(valid, p_norm / tl.where(valid, u_norm, 1.0), 1.0)
        ratio = tl.minimum(ratio, max_trust_ratio)
        u = u * ratio
    store_rounded(p_ptr, p - u * lr, mask, 0, offs, P_KIND, False)


def lamb_(
    lists: Sequence[Sequence[Tensor]],
    hyper: Mapping[str, Any],
    *,
    found_inf: Tensor | None = None,
) -> None:
    """LAMB on ``(params, exp_avgs, exp_avg_sqs, grads)`` in place: two launches."""
    params = lists[0]
    if not params:
        return
    table = table_for(lists)
    b = table.bases
    beta1, beta2 = float(hyper["beta1"]), float(hyper["beta2"])
    adapt = bool(hyper["adapt"])
    norms = torch.zeros(2 * len(params), dtype=torch.float32, device=b[0].device)
    flag = found_inf if found_inf is not None else no_flag(b[0].device)
    common = (table.offsets, table.sizes, table.block_tensor, table.block_start, flag, len(params))
    eps, wd = float(hyper["eps"]), float(hyper["weight_decay"])
    bc1, bc2 = float(hyper["bias_correction1"]), float(hyper["bias_correction2"])
    _lamb_moments_kernel[grid(table)](
        b[0], b[1], b[2], b[3], norms, *common,
        beta1, 1 - beta1, beta2, 1 - beta2, eps, wd, bc1, bc2, float(hyper["grad_scale"]),
        M_KIND=out_kind(b[1].dtype), CHECK_INF=found_inf is not None,
        MAXIMIZE=bool(hyper.get("maximize", False)), BLOCK=BLOCK,
    )  # fmt: skip
    count("lamb_moments")
    inf = float("inf")
    max_w = hyper.get("max_weight_norm")
    max_r = hyper.get("max_trust_ratio")
    _lamb_update_kernel[grid(table)](
        b[0], b[1], b[2], norms, *common,
        float(hyper["lr"]), eps, wd, bc1, bc2,
        inf if max_w is None else float(max_w), inf if max_r is None else float(max_r),
        P_KIND=out_kind(b[0].dtype), ADAPT=adapt, CHECK_INF=found_inf is not None,
        BLOCK=BLOCK,
    )  # fmt: skip
    count("lamb_update")



def register(devices: tuple[str, ...], dtypes: Sequence[torch.dtype]) -> None:
    register_kernel(lamb_rule, "triton", serve(lamb_), devices=devices, dtypes=dtypes)
