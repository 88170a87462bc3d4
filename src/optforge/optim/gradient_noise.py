"""Annealed gradient noise (Neelakantan et al., 2015, "Adding Gradient Noise Improves Learning
for Very Deep Networks").

Before the k-th step (k = 1, 2, ...) every gradient receives ``ξ ~ N(0, σ_k² I)`` with
``σ_k² = η / k^γ`` (the paper's ``η / (1 + t)^γ``, t = 0, 1, ...). η is a *variance*: the paper
tried η ∈ {0.01, 0.3, 1.0} and γ = 0.55 (our defaults: 0.3, 0.55).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer

from optforge._seeding import generator_for
from optforge._validation import check_int, check_non_negative
from optforge.optim.wrapper import OptimizerWrapper

__all__ = ["GradientNoise"]


class GradientNoise(OptimizerWrapper):
    """Adds annealed Gaussian noise to the gradients, then steps ``optimizer``.

    The noise of step t for the parameter at position i (counting every parameter of every
    group) is drawn from a generator seeded by ``(seed, t, i)``: runs are reproducible, a
    checkpoint holds only ``step`` and ``seed``, and data-parallel ranks that step after the
    gradient all-reduce add identical noise. The noise is added to ``p.grad`` in place, so the
    inner optimizer (and any later reader of ``.grad``) sees the noisy gradient; under Adam-like
    optimizers it is divided by √v like the gradient itself.

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
        self.seed = check_int("seed", seed)
        self.steps_done = 0
        super().__init__(optimizer)

    def noise_std(self, step: int) -> float:
        """Standard deviation σ of the noise added at 0-based step ``step``."""
        return math.sqrt(self.eta / (1 + step) ** self.gamma)

    @torch.no_grad()
    def _before_step(self) -> None:
        std = self.noise_std(self.steps_done)
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is not None and std > 0:
                    if grad.is_sparse:
                        raise RuntimeError("GradientNoise does not support sparse gradients")
                    gen = generator_for(grad.device, self.seed, self.steps_done, index)
                    noise = torch.randn(
                        grad.shape, generator=gen, dtype=grad.dtype, device=grad.device
                    )
                    grad.add_(noise, alpha=std)
                index += 1
        self.steps_done += 1

    def _wrapper_state(self) -> dict[str, Any]:
        return {
            "steps_done": torch.tensor(self.steps_done, dtype=torch.int64),
            "seed": self.seed,
            "eta": self.eta,
            "gamma": self.gamma,
        }

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.seed, self.eta, self.gamma = int(state["seed"]), state["eta"], state["gamma"]
