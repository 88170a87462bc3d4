"""Lion: EvoLved Sign Momentum (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

Notation: θ parameter, g gradient, m momentum, η lr, λ weight decay.

    θ ← θ·(1 − ηλ)                    decoupled decay, before the sign step
    c = β1·m + (1 − β1)·g
    θ ← θ − η·sign(c)                  sign(0) = 0
    m ← β2·m + (1 − β2)·g              the stored EMA uses β2

Defaults are the official ones (google/automl ``lion/lion_pytorch.py``): η = 1e-4,
β = (0.9, 0.99), λ = 0. Use an lr 3-10x smaller and a λ 3-10x larger than for AdamW.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from optforge._validation import check_betas, check_non_negative
from optforge.kernels import apply_rule_
from optforge.optim.base import CHECK_FINITE_DOC, ForgeOptimizer

__all__ = ["Lion", "lion_rule"]


def lion_rule(
    param: Tensor,
    exp_avg: Tensor,
    grad: Tensor,
    *,
    lr: Any,
    beta1: Any,
    beta2: Any,
    weight_decay: Any,
    maximize: bool,
) -> tuple[Tensor, Tensor]:
    """One Lion update of one tensor; returns ``(new_param, new_exp_avg)``. Pure.

    Arguments follow the kernels' convention: tensors written first, tensors only read last.

    Hyperparameters are Python floats (eager) or 0-d tensors (compiled); the math is the same.
    """
    if maximize:
        grad = -grad
    update = torch.sign(exp_avg * beta1 + grad * (1 - beta1))
    new_param = param * (1 - lr * weight_decay) - update * lr
    new_exp_avg = exp_avg * beta2 + grad * (1 - beta2)
    return new_param, new_exp_avg


def _foreach_lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    update = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(update, grads, alpha=1 - beta1)
    torch._foreach_sign_(update)
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)


class Lion(ForgeOptimizer):
    __doc__ = f"""Lion (Chen et al., 2023): sign of interpolated momentum, decoupled weight decay.

    Update, per tensor: ``θ ← θ(1 − ηλ) − η·sign(β1·m + (1−β1)·g)``, then
    ``m ← β2·m + (1−β2)·g``. One state buffer per parameter, in the parameter's dtype.

    Args:
        params: parameters or param groups.
        lr: learning rate η (official default 1e-4).
        betas: (β1, β2), each in [0, 1) (official default (0.9, 0.99); the paper suggests
            (0.95, 0.98) for stability).
        weight_decay: decoupled decay λ; the parameter shrinks by η·λ per step (default 0).
        maximize: ascend the objective instead of descending.
        foreach: use torch's multi-tensor ops (default: only when all params are on CUDA).
        fused: one compiled kernel per tensor (``torch.compile``); the fastest path on CPU and
            GPU, compiled on first use.
        {CHECK_FINITE_DOC}

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = Lion(model.parameters(), lr=1e-4, weight_decay=1.0)
        >>> model(torch.randn(8, 4)).sum().backward(); opt.step()
    """

    state_keys = ("exp_avg",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults, check_finite=check_finite)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        beta1, beta2 = group["betas"]
        hyper = dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )
        impl = self._implementation(group, params)
        if impl == "foreach":
            _foreach_lion(params, grads, exp_avgs, **hyper)
        else:
            apply_rule_(lion_rule, (params, exp_avgs, grads), 2, hyper, fused=impl == "fused")
