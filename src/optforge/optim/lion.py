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

from torch import Tensor

from optforge._validation import check_betas, check_int, check_non_negative
from optforge.optim.base import CHECK_FINITE_DOC, FirstOrderOptimizer, StateSpec
from optforge.optim.rules import direction_rule, lion_direction

__all__ = ["Lion", "lion_rule"]


#: The Lion update of one tensor: ``lion_direction`` + ``apply_update`` (see optim.rules).
lion_rule = direction_rule(lion_direction, n_state=1, name="lion")


class Lion(FirstOrderOptimizer):
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
        foreach: run the rule once over all same-device, same-dtype tensors (flat buffers).
        fused: the rule compiled with ``torch.compile`` (one graph per 16 tensors); the fastest
            path on CPU and GPU, compiled on first use.
        backend: ``"auto"`` (default), ``"loop"``, ``"foreach"``, ``"compiled"`` or
            ``"native"`` (C loops on fp32 CPU tensors, what ``auto`` runs there; see
            ``optforge.kernels``); an alternative to the two flags above.
        stochastic_rounding: for bf16 parameters, compute the new value in fp32 and round it
            stochastically (unbiased) instead of to nearest, so steps below half a bf16 ulp are
            not lost (default False; fp16 parameters are refused).
        seed: seed of the rounding streams (keyed by seed, step and parameter index).
        {CHECK_FINITE_DOC}

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = Lion(model.parameters(), lr=1e-4, weight_decay=1.0)
        >>> model(torch.randn(8, 4)).sum().backward(); opt.step()
    """

    state_spec = {"exp_avg": StateSpec()}
    _unscales_in_update = True
    rules = (lion_rule,)

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
        backend: str | None = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            backend=backend,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
        )
        super().__init__(params, defaults, check_finite=check_finite)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_int("seed", group["seed"], 0)

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
        self._apply(lion_rule, group, (params, exp_avgs, grads), hyper)
