"""A deep-ensemble surrogate: independently trained MLPs, mean and spread of their predictions.

Li, Rudner & Wilson, "A Study of Bayesian Neural Network Surrogates for Bayesian Optimization"
(ICLR 2024, arXiv 2305.20028) compare BNN surrogates with the GP; this is their deep-ensemble
baseline. The training protocol is theirs (``yucenli/bnn-bo``, ``models/ensemble.py`` and
``config/branin.json``): each member is a tanh MLP trained from its own random initialization on
its own random 80% of the data (drawn without replacement) by full-batch Adam on the MAP
objective ``sum_i (f(x_i) - y_i)^2 / (2 noise_var) + weight_decay / 2 ||theta||^2`` with
``noise_var = 1`` (fixed, on standardized targets) and ``weight_decay = 0.01``; the predictive
mean is the members' average and the variance their unbiased sample variance (the paper's
``NNPosterior``).

The sizes differ: the paper uses 10 members of three hidden layers of 128 units trained for
1000 Adam steps at lr 1e-3 (:meth:`DeepEnsemble.paper_protocol`); the default here is 5 members
of two layers of 64 units, 300 steps at lr 1e-2, which on Branin (N = 50, 2 seeds, measured)
reached a lower regret (0.27-0.46 vs 1.5) in a fifth of the time (0.6 s vs 2-3 s per suggestion on a
busy 2-core machine). The paper finds ensembles weaker than the GP on most problems; they are
here as a pluggable alternative, not the default.

The members are trained together as one batched network (weights of shape
``(members, fan_in, fan_out)``); since Adam is elementwise and the members share no parameters,
this equals training them one by one.

Example::

    ens = DeepEnsemble().fit(X, y, rng=np.random.default_rng(0))
    mean, var = ens.posterior(torch.from_numpy(X_query))
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from optforge._validation import check_int, check_positive
from optforge.search.bo.surrogate import Surrogate, as_training_data

__all__ = ["DeepEnsemble"]


class DeepEnsemble(Surrogate):
    """Deep ensemble of tanh MLPs (Li et al. 2024's protocol, smaller sizes), a drop-in for the GP.

    Args:
        n_members: ensemble size (>= 2, default 5; paper 10).
        hidden: hidden-layer widths (default ``(64, 64)``; paper ``(128, 128, 128)``).
        train_fraction: fraction of the data each member sees, in (0, 1] (default 0.8, paper).
        steps: full-batch Adam steps per fit (default 300; paper 1000).
        lr: Adam learning rate (default 1e-2; paper 1e-3, torch's default).
        weight_decay: Gaussian-prior precision on the weights (default 0.01).
        noise_var: fixed likelihood variance on standardized targets (default 1.0).
        condition_steps: Adam steps used to absorb believed pending points, warm-started from
            the fitted members (default 100).
    """

    def __init__(
        self,
        *,
        n_members: int = 5,
        hidden: tuple[int, ...] = (64, 64),
        train_fraction: float = 0.8,
        steps: int = 300,
        lr: float = 1e-2,
        weight_decay: float = 0.01,
        noise_var: float = 1.0,
        condition_steps: int = 100,
    ) -> None:
        self.n_members = check_int("n_members", n_members, low=2)
        if len(hidden) == 0:
            raise ValueError("hidden must list at least one layer width (got ())")
        self.hidden = tuple(check_int(f"hidden[{i}]", h, low=1) for i, h in enumerate(hidden))
        self.train_fraction = check_positive("train_fraction", train_fraction)
        if self.train_fraction > 1.0:
            raise ValueError(f"train_fraction must be in (0, 1] (got {train_fraction})")
        self.steps = check_int("steps", steps, low=1)
        self.lr = check_positive("lr", lr)
        self.weight_decay = float(weight_decay)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0 (got {weight_decay})")
        self.noise_var = check_positive("noise_var", noise_var)
        self.condition_steps = check_int("condition_steps", condition_steps, low=0)
        self._params: list[torch.Tensor] | None = None

    @classmethod
    def paper_protocol(cls) -> DeepEnsemble:
        """The sizes of Li et al. (2024): 10 members, 3 x 128 tanh, 1000 Adam steps at 1e-3."""
        return cls(n_members=10, hidden=(128, 128, 128), steps=1000, lr=1e-3)

    # ------------------------------------------------------------------------ network
    def _init_params(self, d: int, gen: torch.Generator) -> list[torch.Tensor]:
        # torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b.
        params = []
        widths = (d, *self.hidden, 1)
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            W = (
                torch.rand(self.n_members, fan_in, fan_out, generator=gen, dtype=torch.float64) * 2
                - 1
            ) * bound
            b = (
                torch.rand(self.n_members, 1, fan_out, generator=gen, dtype=torch.float64) * 2 - 1
            ) * bound
            params += [W, b]
        return params

    @staticmethod
    def _forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Members' predictions ``(members, m)`` at ``x`` ``(m, d)``."""
        h = x.unsqueeze(0).expand(params[0].shape[0], -1, -1)
        n_layers = len(params) // 2
        for k in range(n_layers):
            h = torch.baddbmm(params[2 * k + 1], h, params[2 * k])
            if k < n_layers - 1:
                h = torch.tanh(h)
        return h.squeeze(-1)

    def _train(self, params: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
        params = [p.detach().clone().requires_grad_(True) for p in params]
        # foreach: one fused loop over the few weight tensors (~3x faster steps on CPU)
        opt = torch.optim.Adam(params, lr=self.lr, foreach=True)
        X, y, mask = self._Xt, self._yt, self._mask
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            resid = self._forward(params, X) - y  # (members, n)
            nll = (mask * resid * resid).sum() / (2.0 * self.noise_var)
            prior = 0.5 * self.weight_decay * sum((p * p).sum() for p in params)
            (nll + prior).backward()
            opt.step()
        return [p.detach() for p in params]

    # ------------------------------------------------------------------------ surrogate
    def fit(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> DeepEnsemble:
        """Train every member from scratch on its own ``train_fraction`` of ``(X, y)``."""
        X, y = as_training_data(X, y)
        gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        n = len(X)
        k = max(1, math.ceil(self.train_fraction * n))
        mask = torch.zeros(self.n_members, n, dtype=torch.float64)
        for m in range(self.n_members):
            mask[m, torch.randperm(n, generator=gen)[:k]] = 1.0
        self._Xt, self._yt, self._mask = torch.from_numpy(X), torch.from_numpy(y), mask
        self._params = self._train(self._init_params(X.shape[1], gen), self.steps)
        return self

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Members' mean and unbiased variance at ``x`` ``(..., d)``."""
        if self._params is None:
            raise RuntimeError("the ensemble is not fitted: call fit() first")
        batch = x.shape[:-1]
        preds = self._forward(self._params, x.reshape(-1, x.shape[-1]))
        return preds.mean(0).reshape(batch), preds.var(0, correction=1).reshape(batch)

    def condition_on(self, X: np.ndarray, y: np.ndarray) -> DeepEnsemble:
        """A copy fine-tuned for ``condition_steps`` on the data plus the believed points
        (every member sees the believed points)."""
        if self._params is None:
            raise RuntimeError("the ensemble is not fitted: call fit() first")
        X = np.asarray(X, dtype=np.float64).reshape(-1, self._Xt.shape[1])
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        new = copy.copy(self)
        new._Xt = torch.cat([self._Xt, torch.from_numpy(X)])
        new._yt = torch.cat([self._yt, torch.from_numpy(y)])
        new._mask = torch.cat(
            [self._mask, torch.ones(self.n_members, len(X), dtype=torch.float64)], dim=1
        )
        new._params = new._train(self._params, self.condition_steps)
        return new
