"""Annealed gradient noise (Neelakantan et al., 2015, "Adding Gradient Noise Improves Learning
for Very Deep Networks").

Before the k-th step (k = 1, 2, ...) every gradient receives ``ξ ~ N(0, σ_k² I)`` with
``σ_k² = η / k^γ`` (the paper's ``η / (1 + t)^γ``, t = 0, 1, ...). η is a *variance*: the paper
tried η ∈ {0.01, 0.3, 1.0} and γ = 0.55 (our defaults: 0.3, 0.55).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optforge._seeding import generator_for
from optforge._validation import check_count, check_int, check_non_negative
from optforge.optim.wrapper import OptimizerWrapper

__all__ = ["GradientNoise"]


class GradientNoise(OptimizerWrapper):
    """Adds annealed Gaussian noise to the gradients, then steps ``optimizer``.

    The noise of step t for the parameter at position i (counting every parameter of every
    group) is drawn from a generator seeded by ``(seed, t, i)``: runs are reproducible, a
    checkpoint holds only ``step`` and ``seed``, and data-parallel ranks that step after the
    gradient all-reduce add identical noise. The inner optimizer steps on ``grad + ξ`` (under
    Adam-like optimizers the noise is divided by √v like the gradient itself); afterwards
    ``p.grad`` is the caller's clean gradient again, also when the inner step raises, in which
    case the noise counter does not advance either. Costs one gradient-sized buffer during the step.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        eta: noise variance at the first step η (paper: one of 0.01, 0.3, 1.0; default 0.3).
        gamma: annealing exponent γ (paper: 0.55).
        seed: integer seed of the noise stream.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = GradientNoise(torch.optim.SGD(model.parameters(), lr=0.1), eta=0.01)
        >>> model(torch.randn(8, 4)).sum().backward(); opt.step()
    """

    def __init__(
        self, optimizer: Optimizer, eta: float = 0.3, gamma: float = 0.55, seed: int = 0
    ) -> None:
        self.eta = check_non_negative("eta", eta)
        self.gamma = check_non_negative("gamma", gamma)
        self.seed = _check_seed(seed)
        self.steps_done = 0
        super().__init__(optimizer)

    def noise_std(self, step: int) -> float:
        """Standard deviation σ of the noise added at 0-based step ``step``."""
        return math.sqrt(self.eta / (1 + step) ** self.gamma)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clean = self._swap_in_noisy_gradients()
        try:
            self._step_inner()
        finally:
            # Put the caller's gradients back, step or no step: if the inner step raises (e.g.
            # a non-finite check), neither .grad nor the noise counter has moved.
            for p, grad in clean:
                p.grad = grad
        if any(p.grad is not None for group in self.param_groups for p in group["params"]):
            self.steps_done += 1  # a step without any gradient is no step of the schedule
        return loss

    @torch.no_grad()
    def _swap_in_noisy_gradients(self) -> list[tuple[Tensor, Tensor]]:
        """Give every parameter ``grad + ξ`` (a new tensor); return the clean gradients."""
        std = self.noise_std(self.steps_done)
        clean = []
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is not None and std > 0:
                    if grad.is_sparse:
                        raise RuntimeError("GradientNoise does not support sparse gradients")
                    gen = generator_for(grad.device, self.seed, self.steps_done, index)
                    # complex gradients get the noise of their real view (each part N(0, σ²))
                    real = torch.view_as_real(grad) if grad.is_complex() else grad
                    noise = torch.randn(
                        real.shape, generator=gen, dtype=real.dtype, device=real.device
                    )
                    noisy = real.add(noise, alpha=std)
                    clean.append((p, grad))
                    p.grad = torch.view_as_complex(noisy) if grad.is_complex() else noisy
                index += 1
        return clean

    def _wrapper_state(self) -> dict[str, Any]:
        return {
            "steps_done": torch.tensor(self.steps_done, dtype=torch.int64),
            "seed": self.seed,
            "eta": self.eta,
            "gamma": self.gamma,
        }

    def _parse_wrapper_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "steps_done": check_count("steps_done", state["steps_done"]),
            "seed": _check_seed(state["seed"]),
            "eta": check_non_negative("eta", state["eta"]),
            "gamma": check_non_negative("gamma", state["gamma"]),
        }


def _check_seed(seed: object) -> int:
    seed = check_int("seed", seed, 0)
    if seed >= 2**64:  # the counter-based streams mix 64-bit keys; larger seeds would alias
        raise ValueError(f"seed must be < 2**64 (got {seed})")
    return seed
