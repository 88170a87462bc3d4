"""Update rules as small pure pieces: a parameter-free *direction* and one shared *apply*.

A direction turns a gradient and its state into an update direction and new state, without
seeing the parameter, so the same direction runs on a full gradient or on a projected r×n one
(the inner rule of a low-rank optimizer). ``apply_update`` then moves the parameter:

    θ ← θ·(1 − η·λ) − η·u          decoupled weight decay λ, learning rate η

``direction_rule`` composes the two into a ``kernels.Rule`` that every backend runs (loop,
flat multi-tensor, compiled, registered kernels): each rule's math is written once, here.

For bf16 parameters the apply step can round stochastically (``random_bits``): the new value is
computed in fp32 and rounded up or down with probabilities that make the rounding unbiased, so
updates smaller than half a bf16 ulp still move the parameter on average instead of vanishing
(Gupta et al., 2015; Zamirai et al., 2020). The bits are an input, drawn by the caller from a
seeded generator: the rule stays pure and a run stays reproducible.
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
    "exact_sqrt",
    "lion_direction",
    "random_rounding_bits",
    "sgd_momentum_direction",
    "stochastic_round_bf16",
]


def apply_update(
    param: Tensor,
    update: Tensor,
    *,
    lr: Any,
    weight_decay: Any,
    random_bits: Tensor | None = None,
) -> Tensor:
    """``θ·(1 − η·λ) − η·u``: decoupled weight decay, then the step.

    With ``random_bits`` (int32 in [0, 2**16), one per element) the result is computed in fp32
    and rounded stochastically to bf16 values (returned in fp32, exactly representable in bf16).
    """
    if random_bits is None:
        return param * (1 - lr * weight_decay) - update * lr
    new = param.float() * (1 - lr * weight_decay) - update.float() * lr
    return stochastic_round_bf16(new, random_bits)


def stochastic_round_bf16(value: Tensor, random_bits: Tensor) -> Tensor:
    """fp32 ``value`` rounded to a neighbouring bf16 value, up with probability equal to the
    distance from the lower one (in units of the gap): unbiased. Returned in fp32.

    bf16 keeps the top 16 bits of an fp32: adding 16 random low bits to the magnitude, then
    clearing them, carries into the kept bits with exactly that probability.
    """
    bits = value.view(torch.int32) + random_bits
    return (bits & -65536).view(torch.float32)  # -65536 == 0xFFFF0000 as int32


def random_rounding_bits(shape: torch.Size, generator: torch.Generator) -> Tensor:
    """The ``random_bits`` for ``stochastic_round_bf16``: int32 uniform in [0, 2**16)."""
    return torch.randint(
        0, 1 << 16, shape, generator=generator, dtype=torch.int32, device=generator.device
    )


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
    # The gradient meets the moments in their dtype: an fp16 g² under fp32 moments underflows
    # to 0 for |g| < 2^-12 (v stays 0 and the step becomes m̂/ε, ~1e3x too large).
    grad = grad.to(exp_avg.dtype)
    exp_avg = exp_avg * beta1 + grad * (1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
    update = (exp_avg / bias_correction1) / (exact_sqrt(exp_avg_sq / bias_correction2) + eps)
    return update, exp_avg, exp_avg_sq


def exact_sqrt(x: Tensor) -> Tensor:
    """``√x`` correctly rounded, on every backend.

    Eager ``torch.sqrt`` on CPU runs a vector-math library for fp32 (MKL/Sleef, within 1 ulp
    but not always the nearest value: ~0.7% of elements differ), while compiled code uses the
    IEEE instruction. A square root taken in fp64 and rounded once to fp32 is the correctly
    rounded fp32 one (53 ≥ 2·24 + 2 bits), so both paths agree bit for bit; bf16/fp16 go
    through that fp32 value, then round to nearest.
    """
    if x.dtype == torch.float64:
        return torch.sqrt(x)
    return torch.sqrt(x.double()).float().to(x.dtype)


def sgd_momentum_direction(
    momentum_buffer: Tensor, grad: Tensor, *, momentum: Any, dampening: Any, nesterov: bool
) -> tuple[Tensor, ...]:
    """Heavy-ball momentum: ``b ← μ·b + (1−τ)·g``; ``u = b`` (or ``g + μ·b``, Nesterov)."""
    buf = momentum_buffer * momentum + grad * (1 - dampening)
    update = grad + buf * momentum if nesterov else buf
    return update, buf


def direction_rule(direction: Callable[..., tuple[Tensor, ...]], n_state: int, name: str) -> Rule:
    """The ``Rule`` ``(param, *state, grad[, random_bits]) -> (param', *state')`` of
    ``direction`` + apply.

    ``maximize`` negates the gradient; ``lr`` and ``weight_decay`` go to ``apply_update`` (with
    ``random_bits`` when given: stochastic rounding); every other hyperparameter goes to the
    direction.
    """

    def rule(
        param: Tensor, *rest: Tensor, lr: Any, weight_decay: Any, maximize: bool, **hyper: Any
    ) -> tuple[Tensor, ...]:
        # (param, *state, grad) or, rounding stochastically, (param, *state, grad, random_bits)
        state, grad = rest[:n_state], rest[n_state]
        bits = rest[n_state + 1] if len(rest) > n_state + 1 else None
        if maximize:
            grad = -grad
        update, *new_state = direction(*state, grad, **hyper)
        new_param = apply_update(param, update, lr=lr, weight_decay=weight_decay, random_bits=bits)
        return (new_param, *new_state)

    rule.__name__ = rule.__qualname__ = name
    exact = direction in _EXACT_DIRECTIONS
    return Rule(rule, n_out=1 + n_state, elementwise=True, name=name, exact=exact)


#: directions whose ops round the same eagerly and compiled (tests/kernels/test_exact.py shows
#: it for the rules made of them, on fp32); ``apply_update`` is exact too.
_EXACT_DIRECTIONS = frozenset({lion_direction, adam_direction, sgd_momentum_direction})
