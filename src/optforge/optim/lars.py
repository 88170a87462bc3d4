"""LARS: Layer-wise Adaptive Rate Scaling (You, Gitman and Ginsburg, 2017, "Large Batch Training
of Convolutional Networks"), Algorithm 1.

Per tensor θ, with trust coefficient η_tc, weight decay β, momentum μ and global lr γ:

    λ_local = η_tc·‖θ‖ / (‖g‖ + β‖θ‖ + ε)      (1 when ‖θ‖ or ‖g‖ is 0)
    v ← μ·v + γ·λ_local·(g + β·θ)
    θ ← θ − v
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from optforge._validation import check_in_range, check_non_negative, check_positive
from optforge.kernels import Rule, apply_rule_
from optforge.optim.base import CHECK_FINITE_DOC, FirstOrderOptimizer, StateSpec
from optforge.optim.trust_ratio import norm, trust_ratio

__all__ = ["LARS", "lars_rule"]


def _lars(
    param: Tensor,
    momentum_buffer: Tensor,
    grad: Tensor,
    *,
    lr: Any,
    momentum: Any,
    weight_decay: Any,
    trust_coefficient: Any,
    eps: Any,
    adapt: bool,
    maximize: bool,
) -> tuple[Tensor, Tensor]:
    """One LARS update of one tensor; returns ``(new_param, new_momentum_buffer)``. Pure."""
    if maximize:
        grad = -grad
    scale: Any = 1.0
    if adapt:
        p_norm, g_norm = norm(param), norm(grad)
        scale = trust_ratio(
            trust_coefficient * p_norm,
            g_norm + weight_decay * p_norm + eps,
            (p_norm > 0) & (g_norm > 0),
        )
    buf = momentum_buffer * momentum + (grad + param * weight_decay) * (scale * lr)
    return param - buf, buf


#: needs the parameter (the trust ratio): not usable as an inner rule.
lars_rule = Rule(_lars, n_out=2, elementwise=False, name="lars")


class LARS(FirstOrderOptimizer):
    __doc__ = f"""LARS (You et al., 2017): SGD with momentum and a per-layer trust ratio.

    Defaults are the paper's (Alg. 1 and Sec. 4): trust coefficient η_tc = 0.001, momentum 0.9;
    the paper's AlexNet-BN runs use weight decay 5e-4 (default here 0, as torch.optim.SGD).
    There is no default global lr: it depends on the batch size (the paper scales it with a
    polynomial decay schedule).

    Args:
        params: parameters or param groups.
        lr: global learning rate γ (required).
        momentum: μ in [0, 1) (0.9).
        weight_decay: β, added to the gradient and to the ratio's denominator (0).
        trust_coefficient: η_tc > 0 (0.001).
        eps: added to the ratio's denominator, >= 0 (0).
        adapt_no_decay: apply the trust ratio to parameters whose group has weight_decay == 0
            (True; MLPerf's LARS excludes biases and norms from both: False with
            ``create_optimizer``'s no-decay group).
        maximize: ascend the objective.
        fused: one compiled kernel per tensor (``torch.compile``).
        backend: ``"auto"`` (default), ``"loop"`` or ``"compiled"`` (``optforge.kernels``).
        {CHECK_FINITE_DOC}

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = LARS(model.parameters(), lr=1.0, weight_decay=5e-4)
        >>> model(torch.randn(8, 4)).sum().backward(); opt.step()
    """

    state_spec = {"momentum_buffer": StateSpec()}
    _unscales_in_update = True
    rules = (lars_rule,)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
        *,
        adapt_no_decay: bool = True,
        maximize: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            adapt_no_decay=adapt_no_decay,
            maximize=maximize,
            fused=fused,
            backend=backend,
        )
        super().__init__(params, defaults, check_finite=check_finite)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_in_range("momentum", group["momentum"], 0.0, 1.0)
        check_non_negative("weight_decay", group["weight_decay"])
        check_positive("trust_coefficient", group["trust_coefficient"])
        check_non_negative("eps", group["eps"])

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        hyper = dict(
            lr=group["lr"],
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            trust_coefficient=group["trust_coefficient"],
            eps=group["eps"],
            adapt=group["adapt_no_decay"] or group["weight_decay"] != 0,
            maximize=group["maximize"],
        )
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        rule, hyper = self._unscaled(lars_rule, 2, hyper)
        apply_rule_(rule, (params, bufs, grads), hyper, backend=self._backend(group))
