"""Update rules as small pure pieces: a parameter-free *direction* and one shared *apply*.

A direction turns a gradient and its state into an update direction and new state, without
seeing the parameter, so the same direction runs on a full gradient or on a projected r×n one
(the inner rule of a low-rank optimizer). ``apply_update`` then moves the parameter:

    θ ← θ·(1 − η·λ) − η·u          decoupled weight decay λ, learning rate η

``direction_rule`` composes the two into a ``kernels.Rule`` that every backend runs (loop,
flat multi-tensor, compiled, registered kernels): each rule's math is written once, here.
Rules that need the parameter itself (LAMB's and LARS's trust ratios) are written as their own
``Rule`` on top of these pieces and cannot serve as inner rules.

Hyperparameters are Python floats (eager) or 0-d tensors (compiled); the code is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from optforge.kernels import Rule

__all__ = [
    "adam_direction",
    "apply_update",
    "direction_rule",
    "lion_direction",
    "sgd_momentum_direction",
]


def apply_update(param: Tensor, update: Tensor, *, lr: Any, weight_decay: Any) -> Tensor:
    """``θ·(1 − η·λ) − η·u``: decoupled weight decay, then the step."""
    return param * (1 - lr * weight_decay) - update * lr


def lion_direction(exp_avg: Tensor, grad: Tensor, *, beta1: Any, beta2: Any) -> tuple[Tensor, ...]:
    """Lion (Chen et al., 2023): ``u = sign(β1·m + (1−β1)·g)``; ``m ← β2·m + (1−β2)·g``."""
    update = torch.sign(exp_avg * beta1 + grad * (1 - beta1))
    return update, exp_avg * beta2 + grad * (1 - beta2)


def adam_direction(
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad: Tensor,
    *,
    beta1: Any,
    beta2: Any,
    eps: Any,
    bias_correction1: Any,
    bias_correction2: Any,
) -> tuple[Tensor, ...]:
    """Adam (Kingma and Ba, 2015): ``u = (m/(1−β1^t)) / (√(v/(1−β2^t)) + ε)``.

    ``m ← β1·m + (1−β1)·g`` and ``v ← β2·v + (1−β2)·g²`` first; the bias corrections
    ``1 − β^t`` are passed in (1.0 turns them off).
    """
    exp_avg = exp_avg * beta1 + grad * (1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
    update = (exp_avg / bias_correction1) / (torch.sqrt(exp_avg_sq / bias_correction2) + eps)
    return update, exp_avg, exp_avg_sq


def sgd_momentum_direction(
    momentum_buffer: Tensor, grad: Tensor, *, momentum: Any, dampening: Any, nesterov: bool
) -> tuple[Tensor, ...]:
    """Heavy-ball momentum: ``b ← μ·b + (1−τ)·g``; ``u = b`` (or ``g + μ·b``, Nesterov)."""
    buf = momentum_buffer * momentum + grad * (1 - dampening)
    update = grad + buf * momentum if nesterov else buf
    return update, buf


def direction_rule(direction: Callable[..., tuple[Tensor, ...]], n_state: int, name: str) -> Rule:
    """The ``Rule`` ``(param, *state, grad) -> (param', *state')`` of ``direction`` + apply.

    ``maximize`` negates the gradient; ``lr`` and ``weight_decay`` go to ``apply_update``; every
    other hyperparameter goes to the direction.
    """

    def rule(
        param: Tensor, *rest: Tensor, lr: Any, weight_decay: Any, maximize: bool, **hyper: Any
    ) -> tuple[Tensor, ...]:
        *state, grad = rest
        if maximize:
            grad = -grad
        update, *new_state = direction(*state, grad, **hyper)
        return (apply_update(param, update, lr=lr, weight_decay=weight_decay), *new_state)

    rule.__name__ = rule.__qualname__ = name
    return Rule(rule, n_out=1 + n_state, elementwise=True, name=name)
