"""The surrogate interface: what the acquisition needs from a model of the objective.

A surrogate is fitted to encoded inputs ``X`` (shape ``(n, d)``, in ``[0, 1]^d``) and targets
``y`` (shape ``(n,)``, larger is better), and answers with the marginal posterior mean and
variance of the latent objective at query points, differentiably in torch so that the
acquisition can be polished by gradient. :class:`~optforge.search.bo.gp.GaussianProcess` and
:class:`~optforge.search.bo.ensemble.DeepEnsemble` implement it; any other model can be plugged
into :class:`~optforge.search.bo.optimizer.BayesianOptimization` by implementing these methods
(Li et al., ICLR 2024, find no surrogate that wins everywhere, hence the seam).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

__all__ = ["Surrogate", "as_training_data"]


class Surrogate(ABC):
    """A probabilistic regression model of the objective (larger ``y`` is better)."""

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Surrogate:
        """Fit to ``X`` ``(n, d)`` and ``y`` ``(n,)``; draw any randomness from ``rng``.

        May warm-start from the previous fit (keep what it needs in :meth:`state_dict`).
        Returns ``self``.
        """

    @abstractmethod
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance of the latent objective at ``x`` ``(..., d)``.

        Both have shape ``x.shape[:-1]``, float64, differentiable with respect to ``x``.
        """

    @abstractmethod
    def condition_on(self, X: np.ndarray, y: np.ndarray) -> Surrogate:
        """A copy that also believes ``y`` ``(m,)`` at ``X`` ``(m, d)``, hyperparameters fixed.

        Used for pending points (kriging believer); ``self`` is not changed.
        """

    @property
    def lengthscales(self) -> np.ndarray | None:
        """Per-column input lengthscales ``(d,)`` if the model has them (used to precondition
        the acquisition search), else ``None``."""
        return None

    def state_dict(self) -> dict:
        """What a later :meth:`fit` warm-starts from (tensors and plain numbers only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        return None


def as_training_data(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` as float64 arrays; ``X`` must be ``n x d`` with ``n >= 1`` and ``y`` ``(n,)``."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],) or X.shape[0] == 0:
        raise ValueError(
            f"X must have shape (n, d) with n >= 1 and y shape (n,) (got X {X.shape}, y {y.shape})"
        )
    return X, y
