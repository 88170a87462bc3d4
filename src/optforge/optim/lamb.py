"""LAMB: Layer-wise Adaptive Moments for Batch training (You et al., 2020, "Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes").

Per tensor θ, as the paper's reference implementation (tensorflow/addons ``lamb.py``) computes it:

    m ← β1·m + (1 − β1)·g ;   v ← β2·v + (1 − β2)·g²
    u = (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε) + λ·θ
    r = ‖θ‖ / ‖u‖    (1 when either norm is 0)
    θ ← θ − η·r·u

"LAMB" differs between implementations; every difference is a named keyword here (see ``LAMB``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from optforge._validation import check_betas, check_non_negative, check_positive
from optforge.kernels import Rule, apply_rule_
from optforge.optim.base import CHECK_FINITE_DOC, FirstOrderOptimizer, StateSpec
from optforge.optim.rules import adam_direction
from optforge.optim.trust_ratio import norm, trust_ratio

__all__ = ["LAMB", "lamb_rule"]


def _lamb(
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad: Tensor,
    *,
    lr: Any,
    beta1: Any,
    beta2: Any,
    eps: Any,
    weight_decay: Any,
    bias_correction1: Any,
    bias_correction2: Any,
    grad_scale: Any,
    adapt: bool,
    max_weight_norm: Any,
    max_trust_ratio: Any,
    maximize: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LAMB update: Adam's direction plus λ·θ, scaled by the trust ratio ‖θ‖/‖u‖."""
    if maximize:
        grad = -grad
    update, exp_avg, exp_avg_sq = adam_direction(
        exp_avg,
        exp_avg_sq,
        grad * grad_scale,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        bias_correction1=bias_correction1,
        bias_correction2=bias_correction2,
    )
    update = update + param * weight_decay
    if adapt:
        param_norm, update_norm = norm(param), norm(update)
        if max_weight_norm is not None:
            param_norm = torch.clamp(param_norm, max=max_weight_norm)
        ratio = trust_ratio(
            param_norm, update_norm, (param_norm > 0) & (update_norm > 0), max_trust_ratio
        )
        update = update * ratio
    return param - update * lr, exp_avg, exp_avg_sq


#: needs the parameter (the trust ratio): not usable as an inner rule.
lamb_rule = Rule(_lamb, n_out=3, elementwise=False, name="lamb")


class LAMB(FirstOrderOptimizer):
    __doc__ = f"""LAMB (You et al., 2020): Adam's direction scaled per tensor by ‖θ‖/‖u‖.

    Defaults follow the paper's reference (tensorflow/addons: η = 1e-3, β = (0.9, 0.999),
    ε = 1e-6, bias correction on, uncapped ratio) except ``weight_decay=0.01``, NVIDIA apex's
    default (TFA's is 0). Variants of other implementations, each a keyword:

    ============================  ================================================================
    implementation                keywords
    ============================  ================================================================
    tensorflow/addons, optax      defaults
    NVIDIA apex FusedLAMB         ``max_grad_norm=1.0, adapt_no_decay=False``
    cybertronai/pytorch-lamb      ``bias_correction=False, max_weight_norm=10.0``
    bitsandbytes LAMB             ``max_trust_ratio=1.0`` (the ratio can only shrink steps)
    ============================  ================================================================

    Args:
        params: parameters or param groups.
        lr: learning rate η (1e-3).
        betas: (β1, β2) in [0, 1) ((0.9, 0.999)).
        eps: ε added to √v̂, > 0 (1e-6).
        weight_decay: λ, decoupled, inside the trust ratio (0.01, apex).
        bias_correction: divide the moments by (1 − β^t) (True; paper v3 / cybertronai: False).
        max_weight_norm: clamp ‖θ‖ at this value in the ratio (None; cybertronai and
            pytorch_optimizer use 10).
        max_trust_ratio: cap the trust ratio (None).
        max_grad_norm: clip the global gradient norm over all groups before the update, as
            apex does (None: no clipping; apex's default is 1.0).
        adapt_no_decay: apply the trust ratio to parameters whose group has weight_decay == 0
            (True, as TFA; apex without ``use_nvlamb`` skips them: False).
        maximize: ascend the objective.
        fused: one compiled kernel per tensor (``torch.compile``).
        backend: ``"auto"`` (default), ``"loop"`` or ``"compiled"`` (``optforge.kernels``).
        {CHECK_FINITE_DOC}

    The gradient is never modified in place (apex overwrites ``p.grad`` with the update).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = LAMB(model.parameters(), lr=1e-3, weight_decay=0.01)
        >>> model(torch.randn(8, 4)).sum().backward(); opt.step()
    """

    state_spec = {
        "step": StateSpec(dtype=torch.float32, shape=(), device="cpu"),
        "exp_avg": StateSpec(),
        "exp_avg_sq": StateSpec(),
    }
    rules = (lamb_rule,)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        *,
        bias_correction: bool = True,
        max_weight_norm: float | None = None,
        max_trust_ratio: float | None = None,
        max_grad_norm: float | None = None,
        adapt_no_decay: bool = True,
        maximize: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        check_finite: bool = True,
    ) -> None:
        if max_grad_norm is not None:
            check_positive("max_grad_norm", max_grad_norm)
        self.max_grad_norm = max_grad_norm
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            max_weight_norm=max_weight_norm,
            max_trust_ratio=max_trust_ratio,
            adapt_no_decay=adapt_no_decay,
            maximize=maximize,
            fused=fused,
            backend=backend,
        )
        self._grad_scale = 1.0
        super().__init__(params, defaults, check_finite=check_finite)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_betas(group["betas"])
        check_positive("eps", group["eps"])
        check_non_negative("weight_decay", group["weight_decay"])
        for key in ("max_weight_norm", "max_trust_ratio"):
            if group[key] is not None:
                check_positive(key, group[key])

    def _before_update(self, grads: list[Tensor]) -> None:
        self._grad_scale = 1.0
        if self.max_grad_norm is not None and grads:
            norms = [norm(g).to(grads[0].device) for g in grads]
            total = float(torch.linalg.vector_norm(torch.stack(norms)))
            self._grad_scale = 1.0 / max(1.0, total / self.max_grad_norm)  # apex's rule

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        beta1, beta2 = group["betas"]
        adapt = group["adapt_no_decay"] or group["weight_decay"] != 0
        hyper: dict[str, Any] = dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            grad_scale=self._grad_scale,
            adapt=adapt,
            max_weight_norm=group["max_weight_norm"],
            max_trust_ratio=group["max_trust_ratio"],
            maximize=group["maximize"],
        )
        backend = self._backend(group)
        # Parameters that share a step count share bias corrections, hence one call per count.
        by_step: dict[float, list[int]] = {}
        for i, p in enumerate(params):
            state = self.state[p]
            state["step"] += 1
            by_step.setdefault(float(state["step"]), []).append(i)
        for step, idx in by_step.items():
            if group["bias_correction"]:
                hyper["bias_correction1"] = 1 - beta1**step
                hyper["bias_correction2"] = 1 - beta2**step
            else:
                hyper["bias_correction1"] = hyper["bias_correction2"] = 1.0
            ps = [params[i] for i in idx]
            lists = (
                ps,
                [self.state[p]["exp_avg"] for p in ps],
                [self.state[p]["exp_avg_sq"] for p in ps],
                [grads[i] for i in idx],
            )
            apply_rule_(lamb_rule, lists, hyper, backend=backend)
