"""MAP-Elites as an ask/tell search algorithm: an archive, its emitters, and one seeded generator.

Mouret & Clune 2015 (arXiv 1504.04909); the batch form with pluggable emitters follows pyribs'
scheduler (Tjanaka et al., GECCO 2023), but evaluation is decoupled by candidate id: tell any
subset of pending candidates in any order, discard failures, and resume exactly from a
``state_dict``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from optforge._validation import check_int
from optforge.search.base import (
    Candidates,
    SearchAlgorithm,
    array_from_state,
    array_to_state,
    check_config,
    check_finite_number,
    check_ids,
    check_state_kind,
    rng_from_state,
    rng_to_state,
)
from optforge.search.qd.archive import ArchiveBase, ArchiveStats
from optforge.search.qd.emitters import EmitterBase

__all__ = ["MapElites"]

_VERSION = 1


# Objective types the fast path of tell() takes as they are; anything else (str, bool, tensors)
# goes through check_finite_number one row at a time.
_NUMBER_TYPES = {float, int, np.float64, np.float32, np.float16, np.int64, np.int32}


def _is_array_pair(results: Any) -> bool:
    """``(objectives (n,), measures (n, m))`` arrays rather than a sequence of result pairs."""
    return (
        isinstance(results, (tuple, list))
        and len(results) == 2
        and isinstance(results[0], (np.ndarray, torch.Tensor))
        and isinstance(results[1], (np.ndarray, torch.Tensor))
        and results[0].ndim == 1
        and results[1].ndim == 2
    )


def _objectives_array(objectives: Any) -> np.ndarray:
    """Objectives as float64, refusing strings and booleans as ``tell`` does (numpy would
    convert ``"1.0"`` and ``True``)."""
    if isinstance(objectives, np.ndarray) and objectives.dtype.kind in "fiu":
        return objectives.astype(np.float64, copy=False)
    if isinstance(objectives, np.ndarray) and objectives.dtype.kind != "O":
        raise TypeError(
            f"objectives must be real numbers (got an array of dtype {objectives.dtype})"
        )
    items = list(np.ravel(np.asarray(objectives, dtype=object)))
    if not set(map(type, items)) <= _NUMBER_TYPES:
        for k, v in enumerate(items):
            # TypeError for "1.0", True; a non-finite value is reported by tell_arrays with ids.
            with contextlib.suppress(ValueError):
                check_finite_number(f"objectives[{k}]", v)
    return np.asarray(objectives, dtype=np.float64)


class MapElites(SearchAlgorithm):
    """MAP-Elites (and its variants, chosen by archive and emitters) with ask/tell by id.

    ``ask(n)`` draws ``n`` candidates from the emitters (``n = None``: each emitter its
    ``batch_size``; otherwise ``n`` is split across emitters in proportion to their batch sizes).
    It returns a :class:`~optforge.search.Candidates` batch; a candidate's ``value`` is its float64
    solution vector, a row of the batch's ``values``. ``tell(ids, results)`` takes one
    ``(objective, measures)`` pair per id (objective: finite float, higher is better; measures:
    ``(measure_dim,)`` finite), or the batch's ``(objectives, measures)`` arrays, and inserts them
    into the archive in increasing id order, so a tell is independent of the order of ``ids``;
    results of a partial tell enter the archive at once.

    Args:
        archive: a :class:`GridArchive`, :class:`CVTArchive`, ... (soft thresholds included).
        emitters: one or more distinct :class:`EmitterBase` objects on ``archive``.
        seed: seeds the single ``np.random.default_rng(seed)`` all emitters draw from (>= 0).
        result_archive: optional second archive that receives every told result (CMA-MAE reports
            from an elitist result archive, since a soft archive can lose its best solution).

    Example::

        archive = GridArchive(solution_dim=100, dims=(100, 100), ranges=[(-256, 256)] * 2)
        search = MapElites(archive, [GaussianEmitter(archive, sigma=0.5, batch_size=540)], seed=0)
        for _ in range(1000):
            cands = search.ask()
            search.tell(cands, [evaluate(c.value) for c in cands])  # or, vectorized:
            # search.tell(cands, sphere(cands.values))
        search.stats.qd_score
    """

    maximize = True

    def __init__(
        self,
        archive: ArchiveBase,
        emitters: Sequence[EmitterBase] | EmitterBase,
        seed: int = 0,
        *,
        result_archive: ArchiveBase | None = None,
    ) -> None:
        if not isinstance(archive, ArchiveBase):
            raise TypeError(f"archive must be an ArchiveBase (got {type(archive).__name__})")
        if isinstance(emitters, EmitterBase):
            emitters = [emitters]
        emitters = list(emitters)
        if not emitters:
            raise ValueError("emitters must hold at least one emitter (got an empty sequence)")
        for i, e in enumerate(emitters):
            if not isinstance(e, EmitterBase):
                raise TypeError(f"emitters[{i}] must be an EmitterBase (got {type(e).__name__})")
            if e.archive is not archive:
                raise ValueError(f"emitters[{i}] reads a different archive than archive=")
        if len({id(e) for e in emitters}) != len(emitters):
            raise ValueError(
                "emitters must be distinct objects (got the same object more than once); "
                "build them with [Emitter(...) for _ in range(k)], not [Emitter(...)] * k"
            )
        if result_archive is not None:
            if not isinstance(result_archive, ArchiveBase):
                raise TypeError(
                    f"result_archive must be an ArchiveBase (got {type(result_archive).__name__})"
                )
            if (result_archive.solution_dim, result_archive.measure_dim) != (
                archive.solution_dim,
                archive.measure_dim,
            ):
                raise ValueError(
                    "result_archive must have the archive's solution_dim and measure_dim "
                    f"({archive.solution_dim}, {archive.measure_dim}) (got "
                    f"({result_archive.solution_dim}, {result_archive.measure_dim}))"
                )
        self.archive = archive
        self.emitters = emitters
        self.result_archive = result_archive
        self.seed = check_int("seed", seed, low=0)
        self._rng = np.random.default_rng(self.seed)
        self._next_id = 0
        # Pending candidates live in the batch they were asked in: id -> first id of its batch,
        # and first id -> [solutions (k, d), emitter of each row (k,), rows still pending]. Row
        # of id i is i - first. Solutions are private copies of what was asked.
        self._pending: dict[int, int] = {}
        self._batches: dict[int, list] = {}
        self.num_told = 0

    @property
    def batch_size(self) -> int:
        """The natural batch: the sum of the emitters' batch sizes."""
        return sum(e.batch_size for e in self.emitters)

    @property
    def stats(self) -> ArchiveStats:
        """Statistics of the result archive if there is one, else of the archive."""
        return (self.result_archive or self.archive).stats

    # -- ask / tell ---------------------------------------------------------------------------

    def _split(self, n: int) -> list[int]:
        sizes = np.array([e.batch_size for e in self.emitters], dtype=np.float64)
        exact = n * sizes / sizes.sum()
        counts = np.floor(exact).astype(np.int64)
        # Largest remainder, ties to the earlier emitter: deterministic and sums to n.
        extra = np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]
        counts[extra] += 1
        return counts.tolist()

    def ask(self, n: int | None = None) -> Candidates:
        """Propose ``n`` candidates (default: :attr:`batch_size`).

        Returns a :class:`~optforge.search.Candidates` batch: a sequence of ``Candidate(id,
        value)`` that also holds the batch as arrays (``.ids``, ``.values (k, d)``), so a
        vectorized evaluation builds no object per candidate.
        """
        ids, solutions = self.ask_arrays(n)
        return Candidates(int(ids[0]), solutions)

    def ask_arrays(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectorized :meth:`ask`: candidate ids ``(k,)`` int64 and solutions ``(k, d)``.

        The same proposals, ids and random stream as :meth:`ask`, without a :class:`Candidate`
        per row; pair it with :meth:`tell_arrays` where evaluation is vectorized too (as pyribs'
        ``Scheduler`` is).
        """
        if n is None:
            counts = [e.batch_size for e in self.emitters]
        else:
            counts = self._split(check_int("n", n, low=1))
        d = self.archive.solution_dim
        batches, owner = [], []
        for i, (e, k) in enumerate(zip(self.emitters, counts)):
            if k == 0:
                continue
            sol = np.asarray(e.ask(k, self._rng), dtype=np.float64)
            if sol.shape != (k, d):
                raise RuntimeError(
                    f"{type(e).__name__}.ask({k}) returned shape {sol.shape}, expected ({k}, {d})"
                )
            batches.append(sol)
            owner.extend([i] * k)
        solutions = np.concatenate(batches) if len(batches) > 1 else batches[0]
        first, k = self._next_id, len(solutions)
        ids = range(first, first + k)
        # Our copy stays intact whatever the caller does with its values.
        self._batches[first] = [solutions.copy(), np.array(owner, dtype=np.int64), k]
        self._pending.update(dict.fromkeys(ids, first))
        self._next_id += k
        owners = self._batches[first][1]
        for i, e in enumerate(self.emitters):
            rows = np.flatnonzero(owners == i)
            if rows.size:
                e.asked(first + rows)
        return np.arange(first, first + k, dtype=np.int64), solutions

    def _take(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Solutions and emitter indices of pending ids (no removal)."""
        first = self._pending.get(ids[0]) if ids else None
        if first is not None and ids[-1] - ids[0] == len(ids) - 1 and ids == sorted(ids):
            # Consecutive ids starting in one batch lie in it (a batch is a range of ids): the
            # common whole-batch tell is two slices, not a dictionary look-up per id.
            batch = self._batches[first]
            rows = slice(ids[0] - first, ids[-1] - first + 1)
            if rows.stop <= len(batch[0]):
                return batch[0][rows].copy(), batch[1][rows].copy()
        ids_arr = np.asarray(ids, dtype=np.int64)
        firsts = np.fromiter((self._pending[i] for i in ids), dtype=np.int64, count=len(ids))
        d = self.archive.solution_dim
        solutions, owner = np.empty((len(ids), d)), np.empty(len(ids), dtype=np.int64)
        for first in np.unique(firsts):
            rows = np.flatnonzero(firsts == first)
            batch = self._batches[int(first)]
            solutions[rows] = batch[0][ids_arr[rows] - first]
            owner[rows] = batch[1][ids_arr[rows] - first]
        return solutions, owner

    def _forget(self, ids: list[int]) -> None:
        if len(ids) == len(self._pending):  # every pending id (ids are pending and distinct)
            self._pending.clear()
            self._batches.clear()
            return
        for i in ids:
            first = self._pending.pop(i)
            batch = self._batches[first]
            batch[2] -= 1
            if batch[2] == 0:
                del self._batches[first]

    def _parse(self, ids: list[int], results: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        n, m = len(ids), self.archive.measure_dim
        # Fast path: well-formed pairs of numbers convert in two numpy calls (a transpose in C,
        # no Python work per row beyond len and type look-ups; this is the hot path of a tell).
        try:
            if set(map(len, results)) != {2}:
                raise TypeError
            objs, meas = zip(*results)
            # numpy would convert "1.0" and True; the slow path rejects them as every tell() does.
            if not set(map(type, objs)) <= _NUMBER_TYPES:
                raise TypeError
            objectives = np.fromiter(objs, dtype=np.float64, count=n)
            measures = np.array(meas, dtype=np.float64)
        except (TypeError, ValueError, RuntimeError):
            objectives = measures = None
        if (
            objectives is not None
            and objectives.shape == (n,)
            and measures.shape == (n, m)
            and np.isfinite(objectives).all()
            and np.isfinite(measures).all()
        ):
            return objectives, measures
        return self._parse_slowly(ids, results)

    def _parse_slowly(
        self, ids: Sequence[int | str], results: Sequence[Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        # One result at a time, to name the offending id (or "the result") in the error.
        m = self.archive.measure_dim
        objectives = np.empty(len(ids))
        measures = np.empty((len(ids), m))
        for row, (cid, r) in enumerate(zip(ids, results)):
            cid = f"id {cid}" if isinstance(cid, int) else cid
            if (
                isinstance(r, (str, bytes, dict))
                or not isinstance(r, (Sequence, np.ndarray))
                or len(r) != 2
            ):
                raise ValueError(
                    f"result for {cid} must be a pair (objective, measures) (got {r!r})"
                )
            objectives[row] = check_finite_number(f"objective of {cid}", r[0])
            b = r[1].detach().cpu().numpy() if isinstance(r[1], torch.Tensor) else r[1]
            b = np.asarray(b, dtype=np.float64)
            if b.shape != (m,):
                raise ValueError(
                    f"measures of {cid} must have shape ({m},) (m = archive.measure_dim) "
                    f"(got shape {b.shape})"
                )
            if not np.all(np.isfinite(b)):
                raise ValueError(f"measures of {cid} must be finite (got {b})")
            measures[row] = b
        return objectives, measures

    def check_result(self, result: Any) -> None:
        """Raise ``ValueError``/``TypeError`` if ``result`` is not a valid ``(objective,
        measures)`` pair; used by :func:`optforge.search.run` to route bad results to its
        failure policy."""
        self._parse_slowly(["the result"], [result])

    def tell(self, ids: Sequence[int], results: Any) -> None:
        """Report ``(objective, measures)`` for pending ``ids`` (any order, any subset).

        ``ids``: ints, ``Candidate`` s, or a :class:`~optforge.search.Candidates` batch.
        ``results``: one ``(objective, measures)`` pair per id, or the whole batch as one pair of
        arrays ``(objectives (n,), measures (n, m))`` (what a vectorized objective returns, e.g.
        ``search.tell(cands, sphere(cands.values))``; same as :meth:`tell_arrays`). The two
        cannot be confused: a pair whose objective is an ``(n,)`` array is not a valid result.

        Raises ``ValueError`` (and changes nothing) for an id that is not pending, a repeated
        id, a length mismatch, a non-finite objective or measure, or measures of the wrong shape.
        """
        if _is_array_pair(results):
            self.tell_arrays(ids, *results)
            return
        ids = check_ids(ids, self._pending, results)
        objectives, measures = self._parse(ids, results)
        self._insert(ids, objectives, measures)

    def tell_arrays(self, ids: Sequence[int], objectives: Any, measures: Any) -> None:
        """Vectorized :meth:`tell`: ``objectives (n,)`` and ``measures (n, m)`` arrays."""
        ids = check_ids(ids, self._pending)
        n, m = len(ids), self.archive.measure_dim
        if isinstance(objectives, torch.Tensor):
            objectives = objectives.detach().cpu().numpy()
        if isinstance(measures, torch.Tensor):
            measures = measures.detach().cpu().numpy()
        obj = _objectives_array(objectives)
        meas = np.asarray(measures, dtype=np.float64)
        if obj.shape != (n,) or meas.shape != (n, m):
            raise ValueError(
                f"objectives must have shape ({n},) and measures ({n}, {m}) "
                f"(got {obj.shape} and {meas.shape})"
            )
        bad = ~(np.isfinite(obj) & np.isfinite(meas).all(axis=1))
        if bad.any():
            raise ValueError(
                f"objectives and measures must be finite (got inf or nan for ids "
                f"{[ids[i] for i in np.flatnonzero(bad)[:10]]})"
            )
        self._insert(ids, obj, meas)

    def _insert(self, ids: list[int], objectives: np.ndarray, measures: np.ndarray) -> None:
        if not ids:
            return
        ids_arr = np.asarray(ids, dtype=np.int64)
        if ids_arr.size > 1 and not (ids_arr[1:] > ids_arr[:-1]).all():
            order = np.argsort(ids_arr, kind="stable")
            ids_arr, objectives, measures = ids_arr[order], objectives[order], measures[order]
            ids = ids_arr.tolist()
        solutions, owner = self._take(ids)
        feedback = self.archive.add(solutions, objectives, measures)
        if self.result_archive is not None:
            self.result_archive.add(solutions, objectives, measures)
        if len(self.emitters) == 1:  # every row is the one emitter's: no per-emitter slices
            self.emitters[0].tell(solutions, objectives, measures, feedback, ids=ids_arr)
        for i, e in enumerate(self.emitters if len(self.emitters) > 1 else ()):
            rows = np.flatnonzero(owner == i)
            if rows.size:
                sub = type(feedback)(*(a[rows] for a in feedback))
                e.tell(
                    solutions[rows],
                    objectives[rows],
                    measures[rows],
                    sub,
                    ids=ids_arr[rows],
                )
        self._forget(ids)
        self.num_told += len(ids)

    def discard(self, ids: Sequence[int]) -> None:
        """Forget pending ids whose evaluation failed."""
        ids = check_ids(ids, self._pending)
        _, owner = self._take(ids)
        self._forget(ids)
        ids_arr = np.asarray(ids, dtype=np.int64)
        for i, e in enumerate(self.emitters):
            rows = np.flatnonzero(owner == i)
            if rows.size:
                e.forget(ids_arr[rows])

    @property
    def pending(self) -> list[int]:
        return sorted(self._pending)

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        ids = self.pending
        sols, owner = self._take(ids)
        state = {
            "saved_by": type(self).__name__,
            "version": _VERSION,
            "emitter_configs": [e.config() for e in self.emitters],
            "seed": self.seed,
            "next_id": self._next_id,
            "num_told": self.num_told,
            "rng": rng_to_state(self._rng),
            "archive": self.archive.state_dict(),
            "emitters": [e.state_dict() for e in self.emitters],
            "pending_ids": torch.tensor(ids, dtype=torch.int64),
            "pending_solutions": array_to_state(sols),
            "pending_emitters": array_to_state(owner),
        }
        if self.result_archive is not None:
            state["result_archive"] = self.result_archive.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        keys = ("archive", "emitters", "seed", "next_id", "num_told", "rng", "pending_ids")
        check_state_kind(state, type(self).__name__, _VERSION, keys)
        if len(state["emitters"]) != len(self.emitters):
            raise ValueError(
                f"state has {len(state['emitters'])} emitters but this search has "
                f"{len(self.emitters)}"
            )
        if ("result_archive" in state) != (self.result_archive is not None):
            raise ValueError("state and this search disagree on having a result_archive")
        for k, (e, saved) in enumerate(zip(self.emitters, state.get("emitter_configs", []))):
            check_config(f"emitter (emitters[{k}])", saved, e.config())
        self.archive.load_state_dict(state["archive"])
        if self.result_archive is not None:
            self.result_archive.load_state_dict(state["result_archive"])
        for e, s in zip(self.emitters, state["emitters"]):
            e.load_state_dict(s)
        self.seed = int(state["seed"])
        self._next_id = int(state["next_id"])
        self.num_told = int(state["num_told"])
        self._rng = rng_from_state(state["rng"])
        sols = array_from_state(state["pending_solutions"])
        owner = array_from_state(state["pending_emitters"]).astype(np.int64)
        ids = array_from_state(state["pending_ids"]).astype(np.int64)
        self._pending, self._batches = {}, {}
        if ids.size:
            # One batch spanning the pending ids; rows of ids no longer pending stay unused.
            first, span = int(ids.min()), int(ids.max() - ids.min() + 1)
            all_sols = np.zeros((span, self.archive.solution_dim))
            all_owner = np.zeros(span, dtype=np.int64)
            all_sols[ids - first], all_owner[ids - first] = sols, owner
            self._batches[first] = [all_sols, all_owner, int(ids.size)]
            self._pending = dict.fromkeys(ids.tolist(), first)
