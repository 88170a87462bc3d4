"""SGD with momentum, one launch per group (the rule ``optim.sgd.sgd_momentum_rule``):

    b ← μ·b + (1−τ)·g ;  u = b (Nesterov: g + μ·b) ;  θ ← θ·(1 − ηλ) − η·u
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
from optforge.optim.sgd import sgd_momentum_rule

__all__ = ["register", "sgd_momentum_"]


@triton.jit
def _sgd_kernel(
    p_base, b_base, g_base,
    offsets, sizes, block_tensor, block_start, found_inf, n_tensors,
    lr, momentum, one_minus_dampening, decay, seed,
    P_KIND: tl.constexpr, B_KIND: tl.constexpr, NESTEROV: tl.constexpr,
    STOCHASTIC: tl.constexpr, CHECK_INF: tl.constexpr, MAXIMIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    t, offs, mask = locate(sizes, block_tensor, block_start, found_inf, CHECK_INF, BLOCK)
    p_ptr = p_base + tl.load(offsets + t) + offs
    b_ptr = b_base + tl.load(offsets + n_tensors + t) + offs
    g = tl.load(g_base + tl.load(offsets + 2 * n_tensors + t) + offs, mask=mask, other=0.0)
    g = g.to(tl.float32)
    if MAXIMIZE:
        g = -g
    buf = tl.load(b_ptr, mask=mask, other=0.0).to(tl.float32)
    buf = buf * momentum + g * one_minus_dampening
    update = g + buf * momentum if NESTEROV else buf
    p = tl.load(p_ptr, mask=mask, other=0.0).to(tl.float32) * decay - update * lr
    store_rounded(p_ptr, p, mask, seed, offs, P_KIND, STOCHASTIC)
    store_rounded(b_ptr, buf, mask, seed + 1, offs, B_KIND, STOCHASTIC)


def sgd_momentum_(
    lists: Sequence[Sequence[Tensor]],
    hyper: Mapping[str, Any],
    *,
    stochastic_rounding: bool = False,
    seed: int = 0,
    found_inf: Tensor | None = None,
) -> None:
    """SGD with momentum on ``(params, momentum_buffers, grads)`` in place, one launch."""
    if not lists[0]:
        return
    table = table_for(lists)
    b = table.bases
    lr, wd = float(hyper["lr"]), float(hyper["weight_decay"])
    flag = found_inf if found_inf is not None else no_flag(b[0].device)
    _sgd_kernel[grid(table)](
        b[0], b[1], b[2],
        table.offsets, table.sizes, table.block_tensor, table.block_start, flag, len(lists[0]),
        lr, float(hyper["momentum"]), 1 - float(hyper["dampening"]), 1 - lr * wd, seed,
        P_KIND=out_kind(b[0].dtype), B_KIND=out_kind(b[1].dtype),
        NESTEROV=bool(hyper["nesterov"]), STOCHASTIC=stochastic_rounding,
        CHECK_INF=found_inf is not None, MAXIMIZE=bool(hyper.get("maximize", False)),
        BLOCK=BLOCK,
    )  # fmt: skip
    count("sgd_momentum")



def register(devices: tuple[str, ...], dtypes: Sequence[torch.dtype]) -> None:
    fn = serve(sgd_momentum_)
    register_kernel(sgd_momentum_rule, "triton", fn, devices=devices, dtypes=dtypes)
