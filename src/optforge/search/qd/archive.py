"""Cell archives for quality diversity: storage, batch insertion, statistics.

An archive maps measures (behaviour descriptors) to cells and keeps at most one elite per cell
(Mouret & Clune 2015, arXiv 1504.04909). :class:`GridArchive` and :class:`CVTArchive` differ only
in :meth:`ArchiveBase.index_of`; everything else lives here.

Notation (shapes): ``n`` solutions in a batch, ``d = solution_dim``, ``m = measure_dim``,
``C = cells``. Storage is dense: ``solutions (C, d)``, ``objectives (C,)``, ``measures (C, m)``,
``thresholds (C,)``, ``occupied (C,)``.

Insertion rule (``threshold_min = -inf``, plain MAP-Elites): a candidate enters its cell when its
objective is *strictly* greater than the cell's current elite (any objective enters an empty cell
when ``threshold_min = -inf``). :meth:`ArchiveBase.add` inserts a batch in one vectorized pass and
gives exactly the archive *and the statuses* that inserting the rows one by one, in order, gives:
two candidates of one batch that hit the same empty cell are ``NEW`` then ``IMPROVE_EXISTING``
(if the second is better) or ``NOT_ADDED``. pyribs 0.12 compares every row with the cell's state at
the start of the batch instead, so both would be ``NEW`` there; the final archive is the same.

Soft archives (CMA-MAE, Fontaine & Nikolaidis 2023, arXiv 2205.10752): with a finite
``threshold_min`` (and any ``learning_rate = alpha``, 1 included, as in pyribs) a candidate
enters when its objective exceeds the cell *threshold* ``t``, and a cell that accepts ``k``
objectives with sum ``S`` in one batch moves to ``t' = (1 - alpha)^k t + (S / k)(1 - (1 -
alpha)^k)`` (pyribs' batch rule, compared against the thresholds at the start of the batch; it
is not the same as k sequential inserts).

Statistics follow pyribs: ``qd_score = sum over elites of (objective - qd_score_offset)``,
``norm_qd_score = qd_score / cells``, ``coverage = num_elites / cells`` (a fraction, not percent),
``obj_max`` and :attr:`ArchiveBase.best_elite`: the best elite ever added.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from optforge._validation import check_in_range, check_int
from optforge.search.base import array_from_state, array_to_state, check_config

__all__ = ["AddResult", "AddStatus", "ArchiveBase", "ArchiveStats"]


class AddStatus(enum.IntEnum):
    """What :meth:`ArchiveBase.add` did with a candidate (pyribs' codes)."""

    NOT_ADDED = 0
    IMPROVE_EXISTING = 1
    NEW = 2


class AddResult(NamedTuple):
    """Per-candidate feedback of :meth:`ArchiveBase.add`.

    Attributes:
        status: ``(n,)`` int8 :class:`AddStatus` codes.
        value: ``(n,)`` float64: for ``NEW`` the objective minus ``threshold_min`` (minus 0 when
            ``threshold_min = -inf``); otherwise the objective minus the cell's threshold just
            before this candidate (its elite's objective for plain MAP-Elites), so it is negative
            for ``NOT_ADDED``. Emitters rank on it (CMA-ME's improvement).
        index: ``(n,)`` int64 cell of each candidate.
        batch_status: ``(n,)`` the status against the archive as it was at the start of the
            batch, ignoring earlier rows of the same batch (pyribs 0.12's statuses): every row
            that beats its cell's starting threshold is ``NEW`` or ``IMPROVE_EXISTING``.
        batch_value: ``(n,)`` the value against the starting thresholds (pyribs' values).
            CMA-ME's emitters rank on these by default (see :class:`EvolutionStrategyEmitter`).
    """

    status: np.ndarray
    value: np.ndarray
    index: np.ndarray
    batch_status: np.ndarray
    batch_value: np.ndarray


@dataclass(frozen=True)
class ArchiveStats:
    """Archive statistics (pyribs definitions; ``coverage`` is a fraction in [0, 1]).

    ``obj_max``/``obj_mean`` are ``nan`` for an empty archive.
    """

    num_elites: int
    coverage: float
    qd_score: float
    norm_qd_score: float
    obj_max: float
    obj_mean: float


def _as_batch(name: str, value: Any, width: int, width_name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(
            f"{name} must be an array of shape (batch_size, {width}) ({width} = {width_name}) "
            f"(got shape {arr.shape})"
        )
    return arr


def _check_finite(name: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))
        raise ValueError(f"{name} must be finite (got inf or nan in rows {bad[:10].tolist()})")


class ArchiveBase(ABC):
    """Dense storage of one elite per cell; subclasses define the cells (:meth:`index_of`).

    Args:
        solution_dim: length ``d`` of a solution vector (>= 1).
        cells: number of cells ``C`` (>= 1).
        measure_dim: length ``m`` of a measure vector (>= 1).
        learning_rate: CMA-MAE's ``alpha`` in (0, 1]; ``None`` (default) means 1, plain
            MAP-Elites, and then ``threshold_min`` must stay ``-inf`` (pyribs' rule: a threshold
            without a learning rate is a CMA-MAE setting used by mistake as a filter).
        threshold_min: initial threshold of an empty cell; ``-inf`` (default) lets any objective
            into an empty cell and a cell's threshold is its elite's objective. A finite value
            (CMA-MAE; 0 on the sphere benchmark) turns on pyribs' batch threshold update
            ``t <- (1 - alpha)^k t + mean(accepted) (1 - (1 - alpha)^k)``, also at ``alpha = 1``
            (where ``t`` becomes the mean of the batch's accepted objectives in the cell).

    ``best_elite`` and ``stats.obj_max`` report the best elite ever added, as pyribs does: a soft
    archive can replace its best elite by a worse one, and the best found stays reported.
        qd_score_offset: subtracted from each elite's objective in ``qd_score`` so the score
            counts only positive contributions (pyribs convention; 0 on the sphere benchmark,
            whose objectives lie in [0, 100]).
    """

    def __init__(
        self,
        *,
        solution_dim: int,
        cells: int,
        measure_dim: int,
        learning_rate: float | None = None,
        threshold_min: float = -math.inf,
        qd_score_offset: float = 0.0,
    ) -> None:
        self.solution_dim = check_int("solution_dim", solution_dim, low=1)
        self.cells = check_int("cells", cells, low=1)
        self.measure_dim = check_int("measure_dim", measure_dim, low=1)
        if isinstance(threshold_min, bool) or not isinstance(threshold_min, (int, float)):
            raise TypeError(f"threshold_min must be a real number (got {threshold_min!r})")
        if math.isnan(threshold_min) or threshold_min == math.inf:
            raise ValueError(f"threshold_min must be finite or -inf (got {threshold_min})")
        if learning_rate is None and threshold_min != -math.inf:
            raise ValueError(
                f"threshold_min={threshold_min} was set without a learning_rate: threshold_min "
                "is CMA-MAE's, not a filter on objectives; pass learning_rate too (pyribs' rule)"
            )
        lr = 1.0 if learning_rate is None else learning_rate
        lr = check_in_range("learning_rate", lr, 0.0, 1.0, high_inclusive=True)
        if lr == 0.0:
            raise ValueError(f"learning_rate must be in (0, 1] (got {learning_rate})")
        self.learning_rate = lr
        if lr < 1.0 and threshold_min == -math.inf:
            raise ValueError(
                f"threshold_min must be finite when learning_rate < 1 (got learning_rate={lr}, "
                "threshold_min=-inf): a soft threshold needs a finite starting point"
            )
        self.threshold_min = float(threshold_min)
        self.qd_score_offset = float(
            check_in_range("qd_score_offset", qd_score_offset, -math.inf, math.inf)
        )
        self.clear()

    # -- cells --------------------------------------------------------------------------------

    @abstractmethod
    def index_of(self, measures: np.ndarray) -> np.ndarray:
        """``(n,)`` int64 cell index of each row of ``measures (n, m)``."""

    def index_of_single(self, measures: Any) -> int:
        """The cell of one ``(m,)`` measure vector."""
        arr = np.asarray(measures, dtype=np.float64)
        if arr.shape != (self.measure_dim,):
            raise ValueError(
                f"measures must have shape ({self.measure_dim},) (got shape {arr.shape})"
            )
        return int(self.index_of(arr[None])[0])

    # -- storage ------------------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every elite and reset thresholds to ``threshold_min``."""
        self._solutions = np.zeros((self.cells, self.solution_dim))
        self._objectives = np.zeros(self.cells)
        self._measures = np.zeros((self.cells, self.measure_dim))
        self._thresholds = np.full(self.cells, self.threshold_min)
        self._occupied = np.zeros(self.cells, dtype=bool)
        self._best: dict[str, Any] | None = None  # the best elite ever added (pyribs' rule)

    @property
    def empty(self) -> bool:
        return not self._occupied.any()

    def __len__(self) -> int:
        """Number of elites."""
        return int(np.count_nonzero(self._occupied))

    def add(self, solutions: Any, objectives: Any, measures: Any) -> AddResult:
        """Insert a batch; same archive and statuses as inserting the rows in order.

        Args:
            solutions: ``(n, d)``.
            objectives: ``(n,)``, finite.
            measures: ``(n, m)``, finite.

        Returns:
            :class:`AddResult` with each candidate's status, value and cell.
        """
        sol = _as_batch("solutions", solutions, self.solution_dim, "solution_dim")
        obj = np.asarray(objectives, dtype=np.float64)
        meas = _as_batch("measures", measures, self.measure_dim, "measure_dim")
        n = len(sol)
        if obj.shape != (n,) or len(meas) != n:
            raise ValueError(
                f"objectives must have shape ({n},) and measures ({n}, {self.measure_dim}) to "
                f"match solutions (got objectives {obj.shape}, measures {meas.shape})"
            )
        _check_finite("objectives", obj)
        _check_finite("measures", meas)
        idx = self.index_of(meas).astype(np.int64, copy=False)
        if n == 0:
            empty = np.zeros(0)
            return AddResult(np.zeros(0, np.int8), empty, idx, np.zeros(0, np.int8), empty)
        if self.threshold_min == -math.inf:
            return self._add_sequential(sol, obj, meas, idx)
        return self._add_soft(sol, obj, meas, idx)

    def _track_best(self, cells: np.ndarray, src: np.ndarray, sol, obj, meas) -> None:
        # pyribs: the best of the batch's inserted elites (lowest cell on ties) replaces the
        # best ever added if strictly better.
        k = int(np.argmax(obj[src]))
        if self._best is None or obj[src[k]] > self._best["objective"]:
            self._best = {
                "index": int(cells[k]),
                "solution": sol[src[k]].copy(),
                "objective": float(obj[src[k]]),
                "measures": meas[src[k]].copy(),
            }

    def _add_sequential(
        self, sol: np.ndarray, obj: np.ndarray, meas: np.ndarray, idx: np.ndarray
    ) -> AddResult:
        n = len(obj)
        # Group rows by cell, keeping batch order inside each group (stable sort).
        order = np.argsort(idx, kind="stable")
        s_idx, s_obj = idx[order], obj[order]
        starts = np.empty(n, dtype=bool)
        starts[0] = True
        np.not_equal(s_idx[1:], s_idx[:-1], out=starts[1:])
        gid = np.cumsum(starts) - 1
        # Exclusive running max of the objective within each group, computed exactly on
        # integer ranks: key = group * n + rank increases from group to group, so a single
        # global maximum.accumulate restarts at each group boundary.
        by_obj = np.argsort(s_obj, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[by_obj] = np.arange(n)
        key = gid * n + rank
        incl = np.maximum.accumulate(key)
        prev_rank = np.empty(n, dtype=np.int64)
        prev_rank[0] = -1
        prev_rank[1:] = incl[:-1] - gid[1:] * n
        prev_rank[starts] = -1
        prev_max = np.where(prev_rank >= 0, s_obj[by_obj[np.maximum(prev_rank, 0)]], -np.inf)

        t0 = self._thresholds[s_idx]
        occ0 = self._occupied[s_idx]
        before = np.maximum(t0, prev_max)
        added = s_obj > before
        # An earlier row of the batch entered this cell iff the best earlier row beat t0.
        occupied_before = occ0 | (prev_max > t0)
        new = added & ~occupied_before
        status = np.where(added, np.where(new, 2, 1), 0).astype(np.int8)
        base = 0.0 if self.threshold_min == -math.inf else self.threshold_min
        value = s_obj - np.where(new, base, before)

        # The final elite of a cell is its last added row (each added row beats all before).
        a_pos = np.flatnonzero(added)
        if a_pos.size:
            a_gid = gid[a_pos]
            last = np.empty(a_pos.size, dtype=bool)
            last[-1] = True
            np.not_equal(a_gid[1:], a_gid[:-1], out=last[:-1])
            win = a_pos[last]
            cells, src = s_idx[win], order[win]
            self._solutions[cells] = sol[src]
            self._objectives[cells] = obj[src]
            self._measures[cells] = meas[src]
            self._thresholds[cells] = obj[src]
            self._occupied[cells] = True
            self._track_best(cells, src, sol, obj, meas)

        out_status = np.empty(n, dtype=np.int8)
        out_value = np.empty(n)
        out_status[order] = status
        out_value[order] = value
        # The same comparisons against the batch's starting state only (pyribs' feedback).
        b_added = s_obj > t0
        b_new = b_added & ~occ0
        b_status = np.empty(n, dtype=np.int8)
        b_value = np.empty(n)
        b_status[order] = np.where(b_added, np.where(b_new, 2, 1), 0)
        b_value[order] = s_obj - np.where(b_new, base, t0)
        return AddResult(out_status, out_value, idx, b_status, b_value)

    def _add_soft(
        self, sol: np.ndarray, obj: np.ndarray, meas: np.ndarray, idx: np.ndarray
    ) -> AddResult:
        t0 = self._thresholds[idx]
        occ0 = self._occupied[idx]
        added = obj > t0
        new = added & ~occ0
        status = np.where(added, np.where(new, 2, 1), 0).astype(np.int8)
        value = obj - np.where(new, self.threshold_min, t0)
        if added.any():
            a_idx, a_obj = idx[added], obj[added]
            cells, inv = np.unique(a_idx, return_inverse=True)
            k = np.bincount(inv)
            s = np.bincount(inv, weights=a_obj)
            decay = (1.0 - self.learning_rate) ** k
            t_old = self._thresholds[cells]
            # The elite is the best accepted row of each cell (first on ties), as in pyribs.
            order = np.lexsort((np.arange(a_obj.size), -a_obj, inv))
            first = np.empty(order.size, dtype=bool)
            first[0] = True
            np.not_equal(inv[order][1:], inv[order][:-1], out=first[1:])
            src = np.flatnonzero(added)[order[first]]
            self._solutions[cells] = sol[src]
            self._objectives[cells] = obj[src]
            self._measures[cells] = meas[src]
            self._thresholds[cells] = decay * t_old + (s / k) * (1.0 - decay)
            self._occupied[cells] = True
            self._track_best(cells, src, sol, obj, meas)
        # Soft archives compare every row with the starting thresholds already.
        return AddResult(status, value, idx, status, value)

    def add_single(self, solution: Any, objective: float, measures: Any) -> AddResult:
        """Insert one candidate (a batch of one)."""
        return self.add(
            np.asarray(solution, dtype=np.float64)[None],
            np.asarray([objective], dtype=np.float64),
            np.asarray(measures, dtype=np.float64)[None],
        )

    # -- reading ------------------------------------------------------------------------------

    def elites(self) -> dict[str, np.ndarray]:
        """Copies of the occupied cells: ``index``, ``solution``, ``objective``, ``measures``,
        ``threshold``, in increasing cell order."""
        occ = np.flatnonzero(self._occupied)
        return {
            "index": occ,
            "solution": self._solutions[occ].copy(),
            "objective": self._objectives[occ].copy(),
            "measures": self._measures[occ].copy(),
            "threshold": self._thresholds[occ].copy(),
        }

    def retrieve(self, measures: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Elites at the cells of ``measures (n, m)``: ``(occupied (n,), fields)``; rows of empty
        cells hold ``nan``."""
        meas = _as_batch("measures", measures, self.measure_dim, "measure_dim")
        _check_finite("measures", meas)
        idx = self.index_of(meas)
        occ = self._occupied[idx]
        sol = np.where(occ[:, None], self._solutions[idx], np.nan)
        obj = np.where(occ, self._objectives[idx], np.nan)
        mea = np.where(occ[:, None], self._measures[idx], np.nan)
        return occ, {"index": idx, "solution": sol, "objective": obj, "measures": mea}

    def sample_elites(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, d)`` solutions of elites drawn uniformly with replacement (MAP-Elites'
        selection). Raises ``RuntimeError`` on an empty archive."""
        occ = np.flatnonzero(self._occupied)
        if occ.size == 0:
            raise RuntimeError("cannot sample elites from an empty archive")
        return self._solutions[occ[rng.integers(occ.size, size=n)]]

    @property
    def stats(self) -> ArchiveStats:
        occ = self._occupied
        k = int(np.count_nonzero(occ))
        if k == 0:
            return ArchiveStats(0, 0.0, 0.0, 0.0, math.nan, math.nan)
        obj = self._objectives[occ]
        qd = float(np.sum(obj - self.qd_score_offset))
        return ArchiveStats(
            num_elites=k,
            coverage=k / self.cells,
            qd_score=qd,
            norm_qd_score=qd / self.cells,
            obj_max=self._best["objective"] if self._best is not None else float(obj.max()),
            obj_mean=float(obj.mean()),
        )

    @property
    def best_elite(self) -> dict[str, Any] | None:
        """The best elite ever added (``index``, ``solution``, ``objective``, ``measures``), or
        ``None``; it may since have been replaced in a soft archive (pyribs' rule)."""
        if self._best is None:
            return None
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self._best.items()}

    # -- state --------------------------------------------------------------------------------

    def config(self) -> dict:
        """The settings a saved state must share with this archive (plain data)."""
        return {
            "kind": type(self).__name__,
            "solution_dim": self.solution_dim,
            "cells": self.cells,
            "measure_dim": self.measure_dim,
            "learning_rate": self.learning_rate,
            "threshold_min": self.threshold_min,
        }

    def state_dict(self) -> dict:
        """The elites (occupied cells only) as tensors, plus the cell thresholds."""
        occ = np.flatnonzero(self._occupied)
        return {
            "config": self.config(),
            "cells": self.cells,
            "solution_dim": self.solution_dim,
            "measure_dim": self.measure_dim,
            "index": array_to_state(occ),
            "solution": array_to_state(self._solutions[occ]),
            "objective": array_to_state(self._objectives[occ]),
            "measures": array_to_state(self._measures[occ]),
            "thresholds": array_to_state(self._thresholds),
            "best": None
            if self._best is None
            else {
                "index": self._best["index"],
                "objective": self._best["objective"],
                "solution": array_to_state(self._best["solution"]),
                "measures": array_to_state(self._best["measures"]),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        if "config" in state:  # states saved before configs were recorded lack it
            check_config("archive", state["config"], self.config())
        for key in ("cells", "solution_dim", "measure_dim"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"state has {key} = {state.get(key)} but this archive has "
                    f"{key} = {getattr(self, key)}"
                )
        for key in ("index", "solution", "objective", "measures", "thresholds"):
            if not isinstance(state.get(key), torch.Tensor):
                raise ValueError(f"state[{key!r}] must be a tensor (got {type(state.get(key))})")
        self.clear()
        occ = array_from_state(state["index"]).astype(np.int64)
        self._solutions[occ] = array_from_state(state["solution"])
        self._objectives[occ] = array_from_state(state["objective"])
        self._measures[occ] = array_from_state(state["measures"])
        self._thresholds[:] = array_from_state(state["thresholds"])
        self._occupied[occ] = True
        best = state.get("best")
        if best is not None:
            self._best = {
                "index": int(best["index"]),
                "solution": array_from_state(best["solution"]),
                "objective": float(best["objective"]),
                "measures": array_from_state(best["measures"]),
            }
        elif occ.size and "best" not in state:  # saved before the best was recorded
            i = occ[np.argmax(self._objectives[occ])]
            self._best = {
                "index": int(i),
                "solution": self._solutions[i].copy(),
                "objective": float(self._objectives[i]),
                "measures": self._measures[i].copy(),
            }
