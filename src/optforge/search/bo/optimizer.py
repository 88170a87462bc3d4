"""Bayesian optimization as an ask/tell :class:`~optforge.search.base.SearchAlgorithm`.

The loop: a scrambled Sobol design for the first ``n_initial`` points, then for each suggestion
fit the surrogate (GP by default) to the standardized observations, maximize the acquisition
(LogEI by default) over the search space's unit-cube encoding, and decode the winner into a
configuration dict.

Pending points (asked, not yet told) are handled by the *kriging believer* heuristic
(Ginsbourger, Le Riche & Carraro, "Kriging is well-suited to parallelize optimization", 2010):
the surrogate, with its fitted hyperparameters, is conditioned on each pending point as if the
objective there equalled the posterior mean. For a GP this leaves the mean unchanged and shrinks
the variance around the pending point, so the next suggestion moves elsewhere; unlike a constant
liar it invents no value. A batch ``ask(n)`` is sequential greedy: each point of the batch is
believed before the next one is chosen, and points from earlier unanswered ``ask`` calls are
believed from the start.

Defaults and their provenance: ``n_initial = 10`` (Optuna GPSampler's ``n_startup_trials`` and
BoTorch's tutorials); LogEI (Ament et al. 2023, BoTorch's recommended default); GP details in
:mod:`optforge.search.bo.gp`; acquisition search in :mod:`optforge.search.bo.acquisition`.

Example::

    space = SearchSpace({"x": Real(-5.0, 10.0), "y": Real(0.0, 15.0)})
    bo = BayesianOptimization(space, seed=0)
    for _ in range(50):
        (cand,) = bo.ask(1)
        bo.tell([cand.id], [branin(cand.value["x"], cand.value["y"])])
    bo.best        # (config, value)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from optforge._validation import check_int, check_positive
from optforge.search.base import (
    Candidate,
    SearchAlgorithm,
    check_finite_number,
    check_ids,
    check_state_kind,
    rng_from_state,
    rng_to_state,
)
from optforge.search.bo.acquisition import UCB, Acquisition, LogEI, optimize_acquisition
from optforge.search.bo.gp import GaussianProcess
from optforge.search.bo.space import SearchSpace
from optforge.search.bo.surrogate import Surrogate

__all__ = ["BayesianOptimization"]

_STATE_VERSION = 1
_SURROGATES = ("gp", "ensemble")
_ACQUISITIONS = ("logei", "ucb")
_CATEGORICAL_KERNELS = ("onehot", "hamming")
#: Exact-GP cost grows as O(N^3); the reference card (§12) asks for a warning around here.
_COST_WARNING_N = 1000


_blas_controller = None  # threadpoolctl's view of the loaded BLAS libraries, built once


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """One BLAS thread and one torch thread while a suggestion is computed.

    A suggestion is thousands of tiny linear-algebra calls (n <= ~1000), where thread pools
    only add hand-offs, and OpenBLAS threads spin against torch's OpenMP threads on a busy
    machine (scipy >= 1.15's L-BFGS-B calls OpenBLAS; scipy issue 22438). Measured on the loaded
    2-core VM without ``OPENBLAS_NUM_THREADS``: 10 batched L-BFGS-B runs (d = 8) took 0.04-5.2 s
    wall, 1.0 ms with one BLAS thread. Optuna's GPSampler limits threads the same way
    (``optuna/_gp/thread_limiting.py``). Both settings are restored afterwards.
    """
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _blas_controller.limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(torch_threads)


def _make_surrogate(
    name: str, deterministic_objective: bool, categorical_blocks: list[list[int]]
) -> Surrogate:
    if name == "gp":
        return GaussianProcess(
            deterministic_objective=deterministic_objective, categorical_blocks=categorical_blocks
        )
    from optforge.search.bo.ensemble import DeepEnsemble

    return DeepEnsemble()


class BayesianOptimization(SearchAlgorithm):
    """Sequential model-based optimization of a scalar objective over a :class:`SearchSpace`.

    Args:
        space: the search space; candidates' values are ``{name: value}`` dicts.
        surrogate: ``"gp"`` (exact GP, Matérn-5/2 ARD, default), ``"ensemble"`` (deep
            ensemble of MLPs, Li et al. 2024's protocol) or a :class:`Surrogate` instance.
        acquisition: ``"logei"`` (default) or ``"ucb"``.
        n_initial: size of the scrambled Sobol design before the model is used (>= 1,
            default 10). The model is also skipped while fewer than 2 results are told.
        seed: seeds the Sobol design, the hyperparameter restarts and the acquisition search.
        maximize: maximize the objective instead of minimizing it (default False).
        batch_size: the natural batch of ``ask()`` without ``n`` (default 1).
        beta: UCB's exploration weight (default ``1.96**2``); ignored by LogEI.
        deterministic_objective: the objective has no noise: the GP's noise is fixed at its
            floor 1e-6 (Optuna's ``deterministic_objective``). Default False (noise fitted).
        n_raw_samples, n_restarts: acquisition search effort (defaults 2048 and 10, Optuna's;
            see :func:`~optforge.search.bo.acquisition.optimize_acquisition`).
        categorical_kernel: how the built-in GP (``surrogate="gp"``) measures a categorical:
            ``"onehot"`` (default), one lengthscale per choice, or ``"hamming"``, one
            lengthscale per categorical and distance 0 or 1 (Optuna GPSampler's kernel; see
            :mod:`~optforge.search.bo.gp`). Spaces without categoricals are unaffected.
            One-hot stays the default: on the suite's two mixed functions the Hamming kernel
            won 20 and lost 20 of 40 seed pairs against it at N = 100 (docs/benchmarks.md).

    Results (``tell``): one finite float per id, the objective value. Non-finite values raise
    ``ValueError``; use :meth:`discard` for failed evaluations.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        surrogate: str | Surrogate = "gp",
        acquisition: str = "logei",
        n_initial: int = 10,
        seed: int = 0,
        maximize: bool = False,
        batch_size: int = 1,
        beta: float = 1.96**2,
        deterministic_objective: bool = False,
        n_raw_samples: int = 2048,
        n_restarts: int = 10,
        categorical_kernel: str = "onehot",
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace (got {type(space).__name__})")
        if categorical_kernel not in _CATEGORICAL_KERNELS:
            raise ValueError(
                f"categorical_kernel must be one of {list(_CATEGORICAL_KERNELS)} "
                f"(got {categorical_kernel!r})"
            )
        self.categorical_kernel = categorical_kernel
        if isinstance(surrogate, Surrogate):
            self._surrogate_name = "custom"
            self._surrogate = surrogate
        elif surrogate in _SURROGATES:
            self._surrogate_name = surrogate
            blocks = space.categorical_blocks() if categorical_kernel == "hamming" else []
            self._surrogate = _make_surrogate(surrogate, deterministic_objective, blocks)
        else:
            raise ValueError(
                f"surrogate must be one of {list(_SURROGATES)} or a Surrogate (got {surrogate!r})"
            )
        if acquisition not in _ACQUISITIONS:
            raise ValueError(
                f"acquisition must be one of {list(_ACQUISITIONS)} (got {acquisition!r})"
            )
        self.space = space
        self.acquisition = acquisition
        self.n_initial = check_int("n_initial", n_initial, low=1)
        self.seed = check_int("seed", seed, low=0)
        self.maximize = bool(maximize)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.beta = check_positive("beta", beta)
        self.deterministic_objective = bool(deterministic_objective)
        self.n_raw_samples = check_int("n_raw_samples", n_raw_samples, low=1)
        self.n_restarts = check_int("n_restarts", n_restarts, low=1)

        self._rng = np.random.default_rng(seed)
        self._next_id = 0
        self._sobol_index = 0  # points of the Sobol sequence consumed (= points known so far)
        self._X = np.zeros((0, space.encoded_dim))  # observed encodings, in tell order
        self._y = np.zeros(0)  # observed objective values, caller's sign
        self._pending: dict[int, np.ndarray] = {}
        self._warned = False

    # ------------------------------------------------------------------------ ask/tell
    @property
    def pending(self) -> list[int]:
        return sorted(self._pending)

    @property
    def n_observations(self) -> int:
        return len(self._y)

    @property
    def best(self) -> tuple[dict[str, Any], float] | None:
        """``(config, value)`` of the best observation so far, or ``None``."""
        if not len(self._y):
            return None
        i = int(np.argmax(self._y) if self.maximize else np.argmin(self._y))
        return self.space.decode(self._X[i]), float(self._y[i])

    @property
    def observations(self) -> list[tuple[dict[str, Any], float]]:
        """Every ``(config, value)`` told or observed, in order."""
        return [(self.space.decode(x), float(v)) for x, v in zip(self._X, self._y)]

    def ask(self, n: int | None = None) -> list[Candidate]:
        """Propose ``n`` configurations (default ``batch_size``), believing pending points."""
        n = self.batch_size if n is None else check_int("n", n, low=1)
        with _single_threaded():
            return self._ask(n)

    def _ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        model: Surrogate | None = None
        acq_factory = None
        for _ in range(n):
            n_known = len(self._y) + len(self._pending)
            if n_known < self.n_initial or len(self._y) < 2:
                x = self.space.sobol(1, seed=self.seed, skip=self._sobol_index)[0]
                self._sobol_index += 1
            else:
                if model is None:
                    model, acq_factory, warm = self._fit_model()
                acq: Acquisition = acq_factory(model)
                x, _ = optimize_acquisition(
                    acq,
                    self.space,
                    self._rng,
                    warm_starts=warm,
                    n_raw_samples=self.n_raw_samples,
                    n_restarts=self.n_restarts,
                )
                with torch.no_grad():
                    believed = model.posterior(torch.from_numpy(x[None]))[0].numpy()
                model = model.condition_on(x[None], believed)
                self._sobol_index += 1
            cid = self._next_id
            self._next_id += 1
            self._pending[cid] = x
            out.append(Candidate(cid, self.space.decode(x)))
        return out

    def _fit_model(self) -> tuple[Surrogate, Any, np.ndarray]:
        if len(self._y) > _COST_WARNING_N and not self._warned and self._surrogate_name == "gp":
            warnings.warn(
                f"BayesianOptimization: {len(self._y)} observations; the exact GP costs O(N^3) "
                "per suggestion and will be slow past ~1000",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True
        score = self._y if self.maximize else -self._y  # the model maximizes
        mu, sd = float(score.mean()), max(float(score.std()), 1e-10)
        z = (score - mu) / sd  # outcome standardization shared by every surrogate
        model = self._surrogate.fit(self._X, z, self._rng)
        if self._pending:
            Xp = np.stack([self._pending[i] for i in sorted(self._pending)])
            with torch.no_grad():
                believed = model.posterior(torch.from_numpy(Xp))[0].numpy()
            model = model.condition_on(Xp, believed)
        best_z = float(z.max())
        warm = self._X[int(np.argmax(z))][None]
        if self.acquisition == "logei":
            return model, (lambda m: LogEI(m, best_z)), warm
        return model, (lambda m: UCB(m, self.beta)), warm

    def check_result(self, result: Any) -> None:
        check_finite_number("result", result)

    def tell(self, ids: Sequence[int], results: Sequence[Any]) -> None:
        """Report one finite float per pending id (any order, any subset)."""
        if isinstance(results, (str, bytes)) or not isinstance(results, Sequence | np.ndarray):
            raise TypeError(f"results must be a sequence of floats (got {type(results).__name__})")
        ids = check_ids(ids, self._pending, results)
        values = [check_finite_number(f"results[{k}]", r) for k, r in enumerate(results)]
        X = np.stack([self._pending[i] for i in ids]) if ids else np.zeros((0, self._X.shape[1]))
        for i in ids:
            del self._pending[i]
        self._X = np.concatenate([self._X, X], axis=0)
        self._y = np.concatenate([self._y, np.asarray(values, dtype=np.float64)])

    def discard(self, ids: Sequence[int]) -> None:
        """Forget pending ids whose evaluation failed."""
        for i in check_ids(ids, self._pending):
            del self._pending[i]

    def observe(self, configs: Sequence[Mapping[str, Any]], values: Sequence[Any]) -> None:
        """Add evaluations made elsewhere (a previous study, a hand-picked baseline).

        They count as known points: the Sobol design continues after them (so a stateless
        caller replaying its history never gets the same design point twice).
        """
        if len(configs) != len(values):
            raise ValueError(
                f"configs and values must have the same length "
                f"(got {len(configs)} and {len(values)})"
            )
        X = np.stack([self.space.encode(c) for c in configs]) if len(configs) else None
        y = [check_finite_number(f"values[{k}]", v) for k, v in enumerate(values)]
        if X is None:
            return
        self._X = np.concatenate([self._X, X], axis=0)
        self._y = np.concatenate([self._y, np.asarray(y, dtype=np.float64)])
        self._sobol_index += len(y)

    # --------------------------------------------------------------------------- state
    def _config(self) -> dict:
        return {
            "space": self.space.signature(),
            "surrogate": self._surrogate_name,
            "acquisition": self.acquisition,
            "n_initial": self.n_initial,
            "seed": self.seed,
            "maximize": self.maximize,
            "categorical_kernel": self.categorical_kernel,
        }

    def state_dict(self) -> dict:
        ids = self.pending
        return {
            "saved_by": type(self).__name__,
            "version": _STATE_VERSION,
            "config": self._config(),
            "next_id": self._next_id,
            "sobol_index": self._sobol_index,
            "rng": rng_to_state(self._rng),
            "observed_X": torch.from_numpy(self._X.copy()),
            "observed_y": torch.from_numpy(self._y.copy()),
            "pending_ids": torch.tensor(ids, dtype=torch.int64),
            "pending_X": torch.from_numpy(
                np.stack([self._pending[i] for i in ids])
                if ids
                else np.zeros((0, self.space.encoded_dim))
            ),
            "surrogate": self._surrogate.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        keys = ("config", "observed_X", "observed_y", "pending_ids", "surrogate")
        check_state_kind(state, type(self).__name__, _STATE_VERSION, keys)
        # states saved before categorical_kernel existed used one-hot lengthscales
        mine, theirs = self._config(), {"categorical_kernel": "onehot", **state["config"]}
        diff = [k for k in mine if mine[k] != theirs.get(k)]
        if diff:
            raise ValueError(
                "state was saved by a BayesianOptimization with a different "
                + ", ".join(f"{k} (saved {theirs.get(k)!r}, here {mine[k]!r})" for k in diff)
            )
        X = state["observed_X"].detach().numpy().astype(np.float64)
        y = state["observed_y"].detach().numpy().astype(np.float64)
        pX = state["pending_X"].detach().numpy().astype(np.float64)
        pids = [int(i) for i in state["pending_ids"]]
        if X.shape[1:] != (self.space.encoded_dim,) or len(X) != len(y) or len(pX) != len(pids):
            raise ValueError(
                f"state holds observations of the wrong shape: observed_X {tuple(X.shape)}, "
                f"observed_y {tuple(y.shape)} for encoded_dim {self.space.encoded_dim}"
            )
        self._next_id = int(state["next_id"])
        self._sobol_index = int(state["sobol_index"])
        self._rng = rng_from_state(state["rng"])
        self._X, self._y = X.copy(), y.copy()
        self._pending = {i: pX[k].copy() for k, i in enumerate(pids)}
        self._surrogate.load_state_dict(state["surrogate"])
