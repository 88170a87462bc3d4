"""SGD with heavy-ball momentum: the rule ``sgd_momentum_rule`` (``sgd_momentum_direction`` +
``apply_update``, the rule the Triton SGD kernel is registered for) and ``SGD``, torch.optim.SGD's
semantics on top of it.

    b ← μ·b + (1 − τ)·g ;  u = b  (Nesterov: g + μ·b) ;  θ ← θ·(1 − ηλ) − η·u

The rule's weight decay is decoupled (SGDW). ``SGD`` keeps it at 0 and adds torch's L2 term
λθ to the gradient instead, and starts each momentum buffer at the first gradient (b₁ = g, not
(1 − τ)·g), as torch does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from optforge._validation import check_in_range, check_non_negative
from optforge.optim.base import CHECK_FINITE_DOC, FirstOrderOptimizer, StateSpec
from optforge.optim.rules import direction_rule, sgd_momentum_direction

__all__ = ["SGD", "sgd_momentum_rule", "sgd_rule"]

#: ``(param, momentum_buffer, grad)``; hyper: lr, weight_decay, maximize, momentum, dampening,
#: nesterov.
sgd_momentum_rule = direction_rule(sgd_momentum_direction, n_state=1, name="sgd_momentum")


def sgd_direction(grad: Tensor) -> tuple[Tensor, ...]:
    """Plain SGD: ``u = g`` (no state)."""
    return (grad,)


#: ``(param, grad)``; hyper: lr, weight_decay, maximize. SGD without momentum.
sgd_rule = direction_rule(sgd_direction, n_state=0, name="sgd")

_BUFFER = {"momentum_buffer": StateSpec()}
#: torch.optim.SGD's words for its checks (its messages, kept so code matching them still does).
_TORCH_WORDS = {"lr": "learning rate", "momentum": "momentum value",
                "weight_decay": "weight_decay value"}  # fmt: skip


class SGD(FirstOrderOptimizer):
    __doc__ = f"""Stochastic gradient descent with optional momentum: ``torch.optim.SGD``'s
    semantics and defaults, on optforge's rule and backends.

    Per parameter (torch's formulation: lr outside the buffer, the buffer started at the first
    gradient, dampening from the second step on):

        g ← ∇ (maximize: −∇) + λ·θ                  L2 weight decay, coupled
        b ← g at the first step, else μ·b + (1 − τ)·g           (μ ≠ 0)
        u = b, or g + μ·b with Nesterov (Sutskever et al., 2013); u = g without momentum
        θ ← θ − η·u

    Heavy-ball momentum is Polyak's (1964). Defaults are torch's: η = 1e-3, μ = 0, τ = 0,
    λ = 0, no Nesterov. Results equal torch.optim.SGD's up to rounding: torch computes
    ``a + α·b`` with one rounding (a fused multiply-add), the rule with two (docs/optim/sgd.md).

    State: ``momentum_buffer`` in the parameter's dtype, only where momentum is used (none for
    plain SGD, as torch).

    Args:
        params: parameters or param groups.
        lr: learning rate η, >= 0 (1e-3).
        momentum: μ, >= 0 (0: plain SGD, no state).
        dampening: τ; the gradient enters the buffer scaled by 1 − τ (0).
        weight_decay: λ >= 0, added to the gradient as λ·θ (L2), as torch.optim.SGD (0).
        nesterov: Nesterov momentum; needs μ > 0 and τ = 0 (False).
        maximize: ascend the objective.
        foreach: run the rule once over all same-device, same-dtype tensors.
        fused: compiled kernels (``torch.compile``).
        backend: ``"auto"`` (default), ``"loop"``, ``"foreach"`` or ``"compiled"``; on CUDA with
            Triton installed, ``auto`` runs the registered Triton kernel for momentum SGD.
        {CHECK_FINITE_DOC}

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        >>> model(torch.randn(8, 4)).sum().backward(); opt.step()
    """

    rules = (sgd_momentum_rule, sgd_rule)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            backend=backend,
        )
        super().__init__(params, defaults, check_finite=check_finite)
        #: ids of parameters whose buffer was created this step: it starts at the gradient
        self._new_buffers: set[int] = set()

    def _check_group(self, group: dict[str, Any]) -> None:
        for key, words in _TORCH_WORDS.items():
            try:
                check_non_negative(key, group[key])
            except ValueError as exc:
                raise ValueError(f"Invalid {words}: {group[key]}; {exc}") from None
        check_in_range("dampening", group["dampening"], -math.inf, math.inf)  # finite
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"nesterov must be True or False (got {group['nesterov']!r})")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening (got momentum="
                f"{group['momentum']}, dampening={group['dampening']})"
            )

    def state_schema(self, param: Tensor, group: dict[str, Any]) -> Mapping[str, StateSpec]:
        return _BUFFER if group["momentum"] != 0 else {}

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super()._init_state(param, state, group)
        if state:
            self._new_buffers.add(id(param))

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        maximize, wd = group["maximize"], group["weight_decay"]
        if wd != 0:
            # torch's L2 term g + λθ, after maximize's sign flip: a pass of its own, as torch's
            # foreach path (and equal to its per-tensor ``grad.add(param, alpha=λ)``); the
            # rule's decoupled decay stays 0.
            grads = torch._foreach_add(
                torch._foreach_neg(grads) if maximize else grads, params, alpha=wd
            )
            maximize = False
        hyper: dict[str, Any] = dict(lr=group["lr"], weight_decay=0.0, maximize=maximize)
        if group["momentum"] == 0:
            for p in params:  # a buffer left by earlier steps with momentum: dropped
                self.state.pop(p, None)
            self._apply(sgd_rule, group, (params, grads), hyper)
            return
        hyper.update(momentum=group["momentum"], nesterov=group["nesterov"])
        new = [id(p) in self._new_buffers for p in params]
        self._new_buffers.difference_update(id(p) for p in params)
        # a new buffer is 0: with τ = 0 the rule's μ·0 + 1·g gives torch's b₁ = g exactly
        for is_new, dampening in ((False, group["dampening"]), (True, 0.0)):
            idx = [i for i, flag in enumerate(new) if flag == is_new]
            if idx:
                lists = tuple(
                    [lst[i] for i in idx]
                    for lst in (params, [self.state[p]["momentum_buffer"] for p in params], grads)
                )
                self._apply(sgd_momentum_rule, group, lists, {**hyper, "dampening": dampening})
