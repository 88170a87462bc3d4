"""CMA-ES emitters: CMA-ME (Fontaine et al. 2020) and CMA-MAE (Fontaine & Nikolaidis 2023).

An :class:`EvolutionStrategyEmitter` samples from a CMA-ES search distribution ``N(m, s^2 C)`` and
adapts it to rank solutions by what they did to the archive, not by objective alone:

- ``ranker="2imp"`` (CMA-ME's improvement emitter, the default): new cells first, then improved
  cells, then the rest; inside each group by the archive's ``value`` (improvement).
- ``ranker="imp"``: by ``value`` only (CMA-MAE, with a soft archive: ``learning_rate < 1``).
- ``ranker="obj"``: by objective (an optimizing emitter).

``selection_rule="filter"`` (default) takes as parents only the solutions the archive accepted;
``"mu"`` takes the best half. ``restart_rule="no_improvement"`` (default) restarts from a random
elite when a generation adds nothing; ``"basic"`` restarts only on CMA-ES' own stop tests
(condition number > 1e14, spread < 1e-11, flat ranking values); an int ``k`` restarts every ``k``
generations. These defaults are pyribs' (``EvolutionStrategyEmitter``, 0.12).

CMA-ES is the standard one of Hansen's tutorial (arXiv 1604.00772): weights
``w_i ∝ ln(mu + 1/2) - ln i``, cumulation ``c_c, c_s``, learning rates ``c_1, c_mu``, and the
step size ``s <- s exp(min(1, (c_s / d_s)(|p_s| / E|N(0, I)| - 1)))``. pyribs' own CMA-ES differs
in three places (it keeps ``p_c`` unscaled by ``s``, scales the rank-one term by ``c_1^2``, and
uses ``(|p_s|^2 / n - 1) / 2`` in the step-size rule); we follow the tutorial.

Generations with ask/tell by id: a *generation* is every solution sampled from one distribution
(asking again before the tell adds to it). The emitter adapts once every candidate of the
generation is told or discarded, from the told ones; a generation that was wholly discarded only
counts as one. Each result enters the archive as soon as it is told.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optforge._validation import check_int, check_non_negative, check_positive
from optforge.search.base import array_from_state, array_to_state
from optforge.search.qd.archive import AddResult, ArchiveBase
from optforge.search.qd.emitters import EmitterBase

__all__ = ["CMAES", "EvolutionStrategyEmitter"]

_RANKERS = ("2imp", "imp", "obj")
_SELECTION = ("filter", "mu")


class CMAES:
    """Covariance matrix adaptation evolution strategy state (Hansen 2016, arXiv 1604.00772).

    Args:
        dim: search-space dimension ``n``.
        sigma0: initial step size (> 0).
        batch_size: population ``lambda``; default ``4 + floor(3 ln n)`` (Hansen).
        eigen_gap: the eigendecomposition of ``C`` is refreshed lazily, once more than
            ``eigen_gap * lambda / ((c_1 + c_mu) n)`` evaluations have passed since the last one.
            Default 0.5, pyribs' value (its ``lazy_gap_evals``); Hansen's tutorial uses 0.1, and
            0 refreshes every generation. At n = 100, lambda = 36, 0.5 means one O(n^3)
            ``eigh`` every 3 generations instead of every one.
    """

    def __init__(
        self, dim: int, sigma0: float, batch_size: int | None = None, eigen_gap: float = 0.5
    ) -> None:
        self.dim = check_int("dim", dim, low=1)
        self.sigma0 = check_positive("sigma0", sigma0)
        n = self.dim
        self.batch_size = (
            4 + int(3 * math.log(n))
            if batch_size is None
            else check_int("batch_size", batch_size, low=2)
        )
        *_, c1, cmu, _ = self.strategy_parameters(self.batch_size // 2)
        self.lazy_gap = (
            check_non_negative("eigen_gap", eigen_gap) * self.batch_size / (c1 + cmu) / n
        )
        self.reset(np.zeros(n))

    def reset(self, mean: np.ndarray) -> None:
        n = self.dim
        self.mean = np.array(mean, dtype=np.float64)
        self.sigma = self.sigma0
        self.cov = np.eye(n)
        self.eigvecs = np.eye(n)
        self.eigvals = np.ones(n)
        self.invsqrt = np.eye(n)
        self.pc = np.zeros(n)
        self.ps = np.zeros(n)
        self.evals = 0
        self.updated_eval = 0

    def strategy_parameters(self, mu: int) -> tuple:
        """``(weights, mueff, cc, cs, c1, cmu, damps)`` for ``mu`` parents (Hansen's defaults)."""
        n = self.dim
        w = math.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
        w = w / w.sum()
        mueff = 1.0 / float(np.sum(w**2))
        cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
        cs = (mueff + 2) / (n + mueff + 5)
        c1 = 2 / ((n + 1.3) ** 2 + mueff)
        cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
        damps = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs
        return w, mueff, cc, cs, c1, cmu, damps

    def _refresh(self) -> None:
        if self.evals <= self.updated_eval + self.lazy_gap:
            return
        self.cov = np.triu(self.cov) + np.triu(self.cov, 1).T  # enforce symmetry
        vals, vecs = np.linalg.eigh(self.cov)
        self.eigvals = np.maximum(vals, 1e-300)
        self.eigvecs = vecs
        self.invsqrt = (vecs / np.sqrt(self.eigvals)) @ vecs.T
        self.updated_eval = self.evals

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, dim)`` draws from ``N(mean, sigma^2 C)``."""
        self._refresh()
        z = rng.standard_normal((n, self.dim))
        return self.mean + self.sigma * (z * np.sqrt(self.eigvals)) @ self.eigvecs.T

    def update(self, parents: np.ndarray, evaluated: int) -> None:
        """One CMA-ES update from ``parents (mu, dim)``, best first; ``evaluated`` = generation
        size (counts toward the lazy eigendecomposition and ``h_sigma``)."""
        self.evals += evaluated
        mu = len(parents)
        if mu == 0:
            return
        n = self.dim
        w, mueff, cc, cs, c1, cmu, damps = self.strategy_parameters(mu)
        old = self.mean
        self.mean = w @ parents
        y = (self.mean - old) / self.sigma
        self.ps = (1 - cs) * self.ps + math.sqrt(cs * (2 - cs) * mueff) * (self.invsqrt @ y)
        gens = self.evals / self.batch_size
        chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        ps_norm = float(np.linalg.norm(self.ps))
        hsig = float(ps_norm / math.sqrt(1 - (1 - cs) ** (2 * gens)) / chi_n < 1.4 + 2 / (n + 1))
        self.pc = (1 - cc) * self.pc + hsig * math.sqrt(cc * (2 - cc) * mueff) * y
        ys = (parents - old) / self.sigma
        c1a = c1 * (1 - (1 - hsig**2) * cc * (2 - cc))
        self.cov = (
            (1 - c1a - cmu * w.sum()) * self.cov
            + c1 * np.outer(self.pc, self.pc)
            + cmu * (ys.T * w) @ ys
        )
        self.sigma *= math.exp(min(1.0, (cs / damps) * (ps_norm / chi_n - 1)))

    def should_stop(self, ranking_values: np.ndarray) -> bool:
        """CMA-ES' stop tests as in pyribs: ill-conditioned ``C``, collapsed spread, or a flat
        ranking (first and last values within 1e-12)."""
        if self.eigvals.max() / self.eigvals.min() > 1e14:
            return True
        if self.sigma * math.sqrt(self.eigvals.max()) < 1e-11:
            return True
        return (
            len(ranking_values) >= 2
            and float(
                np.linalg.norm(np.asarray(ranking_values[0]) - np.asarray(ranking_values[-1]))
            )
            < 1e-12
        )

    _STATE = ("mean", "cov", "eigvecs", "eigvals", "invsqrt", "pc", "ps")

    def state_dict(self) -> dict:
        state = {k: array_to_state(getattr(self, k)) for k in self._STATE}
        state.update(sigma=self.sigma, evals=self.evals, updated_eval=self.updated_eval)
        return state

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, array_from_state(state[k]))
        self.sigma = float(state["sigma"])
        self.evals = int(state["evals"])
        self.updated_eval = int(state["updated_eval"])


class EvolutionStrategyEmitter(EmitterBase):
    """CMA-ME's emitter: CMA-ES adapted by archive improvement (see the module docstring).

    Args:
        archive: the archive whose feedback ranks solutions.
        sigma0: initial CMA-ES step size (> 0); the sphere benchmark uses 0.5.
        x0: initial mean (default zeros).
        ranker: ``"2imp"`` (default, CMA-ME), ``"imp"`` (CMA-MAE) or ``"obj"``.
        selection_rule: ``"filter"`` (default) or ``"mu"``.
        restart_rule: ``"no_improvement"`` (default), ``"basic"``, or an int period.
        feedback: ``"batch"`` (default) ranks on :attr:`AddResult.batch_status` /
            ``batch_value``, i.e. against the archive at the start of each tell, as pyribs does;
            ``"sequential"`` ranks on the one-by-one statuses, where a second row entering the
            same new cell counts as an improvement or as not added. On the 100-D sphere
            (15 x 36, 300 iterations, seed 0) "batch" reached QD 345k and "sequential" 333k,
            since batch feedback gives the filter selection more parents.
        batch_size: ``lambda``; default ``4 + floor(3 ln d)`` (pyribs and Hansen). CMA-ME on the
            sphere uses 15 emitters of 36.
        bounds: ``(lower, upper)``; out-of-bounds draws are resampled (up to 100 rounds, as in
            pyribs), then clipped.

    Example (CMA-MAE)::

        archive = GridArchive(solution_dim=100, dims=(100, 100), ranges=[(-256, 256)] * 2,
                              learning_rate=0.01, threshold_min=0.0)
        result = GridArchive(solution_dim=100, dims=(100, 100), ranges=[(-256, 256)] * 2)
        emitters = [EvolutionStrategyEmitter(archive, sigma0=0.5, ranker="imp",
                                             selection_rule="mu", restart_rule="basic",
                                             batch_size=36) for _ in range(15)]
        search = MapElites(archive, emitters, seed=0, result_archive=result)
    """

    def __init__(
        self,
        archive: ArchiveBase,
        *,
        sigma0: float,
        x0: Any = None,
        ranker: str = "2imp",
        selection_rule: str = "filter",
        restart_rule: str | int = "no_improvement",
        feedback: str = "batch",
        batch_size: int | None = None,
        bounds: Any = None,
    ) -> None:
        es = CMAES(archive.solution_dim, sigma0, batch_size)
        super().__init__(archive, batch_size=es.batch_size, x0=x0, bounds=bounds)
        if ranker not in _RANKERS:
            raise ValueError(f"ranker must be one of {_RANKERS} (got {ranker!r})")
        if selection_rule not in _SELECTION:
            raise ValueError(f"selection_rule must be one of {_SELECTION} (got {selection_rule!r})")
        if isinstance(restart_rule, int) and not isinstance(restart_rule, bool):
            check_int("restart_rule", restart_rule, low=1)
        elif restart_rule not in ("no_improvement", "basic"):
            raise ValueError(
                "restart_rule must be 'no_improvement', 'basic' or an int >= 1 "
                f"(got {restart_rule!r})"
            )
        if feedback not in ("batch", "sequential"):
            raise ValueError(f"feedback must be 'batch' or 'sequential' (got {feedback!r})")
        self.feedback = feedback
        self.ranker = ranker
        self.selection_rule = selection_rule
        self.restart_rule = restart_rule
        self.es = es
        es.reset(self.x0)
        self.restarts = 0
        self.generations = 0
        self._restart_next = False
        self._open: set[int] = set()  # ids of the current generation not yet resolved
        self._asked = 0  # size of the current generation so far
        self._buf: dict[str, list] = self._empty_buffer()

    @staticmethod
    def _empty_buffer() -> dict[str, list]:
        return {"solution": [], "objective": [], "status": [], "value": []}

    def ask(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self._restart_next:
            start = self.x0 if self.archive.empty else self.archive.sample_elites(1, rng)[0]
            self.es.reset(start)
            self._restart_next = False
        x = self.es.sample(n, rng)
        if self.bounds is not None:
            lo, hi = self.bounds
            for _ in range(100):
                bad = np.flatnonzero(((x < lo) | (x > hi)).any(axis=1))
                if bad.size == 0:
                    break
                x[bad] = self.es.sample(bad.size, rng)
            x = self._clip(x)
        return x

    def asked(self, ids: np.ndarray) -> None:
        self._open.update(ids.tolist())
        self._asked += len(ids)

    def forget(self, ids: np.ndarray) -> None:
        self._open.difference_update(ids.tolist())
        self._maybe_update()

    def tell(
        self,
        solutions: np.ndarray,
        objectives: np.ndarray,
        measures: np.ndarray,
        feedback: AddResult,
        ids: np.ndarray | None = None,
    ) -> None:
        if ids is None:  # called outside MapElites: treat the rows as one whole generation
            ids = np.arange(len(solutions))
            self._open, self._asked = set(ids.tolist()), len(ids)
        mine = np.fromiter((i in self._open for i in ids.tolist()), dtype=bool, count=len(ids))
        if mine.any():
            self._buf["solution"].append(solutions[mine])
            self._buf["objective"].append(objectives[mine])
            batch = self.feedback == "batch"
            status = feedback.batch_status if batch else feedback.status
            value = feedback.batch_value if batch else feedback.value
            self._buf["status"].append(status[mine])
            self._buf["value"].append(value[mine])
            self._open.difference_update(ids[mine].tolist())
        self._maybe_update()

    def _maybe_update(self) -> None:
        if self._open or self._asked == 0:
            return
        buf = {k: (np.concatenate(v) if v else None) for k, v in self._buf.items()}
        evaluated = self._asked
        self._asked, self._buf = 0, self._empty_buffer()
        self.generations += 1
        if buf["solution"] is None:  # every candidate of the generation was discarded
            return
        status, value, objective = buf["status"], buf["value"], buf["objective"]
        if self.ranker == "2imp":
            order = np.lexsort((-value, -status))  # status desc, then value desc
            ranking = np.stack([status, value], axis=1)
        elif self.ranker == "imp":
            order = np.argsort(-value, kind="stable")
            ranking = value
        else:
            order = np.argsort(-objective, kind="stable")
            ranking = objective
        added = int(np.count_nonzero(status))
        mu = added if self.selection_rule == "filter" else self.batch_size // 2
        mu = min(mu, len(order))
        self.es.update(buf["solution"][order[:mu]], evaluated)
        if isinstance(self.restart_rule, int):
            restart = self.generations % self.restart_rule == 0
        else:
            restart = self.restart_rule == "no_improvement" and added == 0
        if restart or self.es.should_stop(ranking[order]):
            self._restart_next = True  # the new mean is drawn at the next ask, from its rng
            self.restarts += 1

    def config(self) -> dict:
        return {
            **super().config(),
            "ranker": self.ranker,
            "selection_rule": self.selection_rule,
            "restart_rule": self.restart_rule,
            "feedback": self.feedback,
            "sigma0": self.es.sigma0,
        }

    def state_dict(self) -> dict:
        buf = {k: array_to_state(np.concatenate(v)) if v else None for k, v in self._buf.items()}
        return {
            "es": self.es.state_dict(),
            "restarts": self.restarts,
            "generations": self.generations,
            "restart_next": self._restart_next,
            "open": sorted(self._open),
            "asked": self._asked,
            "buffer": {k: v for k, v in buf.items() if v is not None},
        }

    def load_state_dict(self, state: dict) -> None:
        self.es.load_state_dict(state["es"])
        self.restarts = int(state["restarts"])
        self.generations = int(state["generations"])
        self._restart_next = bool(state["restart_next"])
        self._open = {int(i) for i in state["open"]}
        self._asked = int(state["asked"])
        self._buf = self._empty_buffer()
        for k, v in state["buffer"].items():
            self._buf[k].append(array_from_state(v))
