"""Scoring protocols: AlgoPerf's rules exactly (``algoperf``), or optforge's (``optforge``).

=====================================  ==============================  ===========================
rule                                   ``algoperf``                    ``optforge``
=====================================  ==============================  ===========================
best trial of a study                  earliest evaluation reaching    least time (steps) to
                                       the target (ties: lowest trial  target
                                       number); its time at that
                                       evaluation
held-out variant                       variant ``inf`` where base is;  base ``inf`` where the
                                       4x cut-off over every column;   variant missed its target,
                                       then base ``inf`` where the     then the 4x cut-off
                                       variant is
profile denominator ``n``              number of base workloads of     number of scored workloads
                                       the benchmark (AlgoPerf: 8)     in the run
trial seeds                            one seed per study, shared by   one seed per (study, trial)
                                       its trials
evaluation cadence                     every ``eval_period_time_sec``  every ``eval_every_steps``
                                       of training time, and after     steps (steps to target are
                                       the first step                  then deterministic)
=====================================  ==============================  ===========================

The ``algoperf`` column follows ``scoring/performance_profile.py`` (``get_best_trial_index``,
``get_workloads_time_to_target``, ``compute_performance_profiles``) and
``submission_runner.py`` (seeds, cadence) of mlcommons/algorithmic-efficiency v0.6. The
ratio step keeps the reference's pandas ``DataFrame.update`` behaviour: a ratio that is NaN
leaves the time in place, and a workload missing from a submission is NaN, not ``inf``.

Example::

    >>> get_protocol("algoperf").shared_study_seed, get_protocol("optforge").eval_by_time
    (True, False)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from optforge.bench.scoring import (
    NUM_POINTS,
    R_MAX,
    Profile,
    divide_times,
    profile_from_ratios,
)

__all__ = [
    "PROTOCOLS", "Protocol", "algoperf_aggregate", "algoperf_profile", "algoperf_study_values",
    "first_reach_index", "get_protocol",
]


@dataclass(frozen=True)
class Protocol:
    """The rules a run is planned and scored by (see the module docstring)."""

    name: str
    shared_study_seed: bool
    eval_by_time: bool
    best_trial: str  # "earliest_eval" or "least_time"
    held_out: str  # "algoperf" or "optforge"
    fixed_workload_count: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOLS = {
    "algoperf": Protocol("algoperf", True, True, "earliest_eval", "algoperf", True),
    "optforge": Protocol("optforge", False, False, "least_time", "optforge", False),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name`` (``"algoperf"`` or ``"optforge"``)."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)} (got {name!r})")
    return PROTOCOLS[name]


def first_reach_index(record: Mapping[str, Any]) -> int | None:
    """Index of the first evaluation in ``record["curve"]`` meeting the record's target."""
    target, higher = record.get("target"), record.get("higher_is_better", True)
    if target is None:
        return None
    for i, point in enumerate(record.get("curve") or []):
        m = point.get("metric")
        if m is None or not math.isfinite(m):
            continue
        if (m >= target) if higher else (m <= target):
            return i
    return None


_CURVE_KEY = {"time_to_target_s": "train_time_s", "steps_to_target": "step"}


def algoperf_study_values(
    records: Iterable[Mapping[str, Any]], key: str = "time_to_target_s"
) -> dict[tuple[str, str], dict[int, float]]:
    """``(submission, workload) -> {study: value}`` by AlgoPerf's ``get_best_trial_index``:
    the trial reaching the target at the earliest evaluation (the lowest trial number among
    ties), and its time (or step) at that evaluation; ``inf`` for a study without one."""
    groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["submission"], r["workload"], int(r.get("study", 0))), []).append(r)
    out: dict[tuple[str, str], dict[int, float]] = {}
    for (sub, wl, study), trials in groups.items():
        best: tuple[int, Mapping[str, Any]] | None = None
        for r in sorted(trials, key=lambda r: int(r.get("trial", 0))):
            idx = first_reach_index(r)
            if idx is not None and (best is None or idx < best[0]):
                best = (idx, r)
        value = math.inf
        if best is not None:
            v = best[1]["curve"][best[0]].get(_CURVE_KEY[key])
            value = math.inf if v is None else float(v)
        out.setdefault((sub, wl), {})[study] = value
    return out


def algoperf_aggregate(
    records: Iterable[Mapping[str, Any]], key: str = "time_to_target_s"
) -> dict[str, dict[str, float]]:
    """``submission -> workload -> np.median over studies`` of :func:`algoperf_study_values`."""
    out: dict[str, dict[str, float]] = {}
    for (sub, wl), per_study in algoperf_study_values(records, key).items():
        out.setdefault(sub, {})[wl] = float(np.median(list(per_study.values())))
    return out


def _column_min(t: np.ndarray) -> np.ndarray:
    """Per-column minimum skipping NaN (NaN for an all-NaN column), as pandas' ``min``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column
        return np.nanmin(t, axis=0) if t.shape[0] else np.full(t.shape[1], np.nan)


def algoperf_profile(
    times: Mapping[str, Mapping[str, float]],
    base_workloads: Sequence[str],
    variants: Mapping[str, str] | None = None,
    *,
    reference: str | None = None,
    r_max: float = R_MAX,
    num_points: int = NUM_POINTS,
) -> Profile:
    """AlgoPerf's ``compute_performance_profiles`` then ``compute_leaderboard_score``.

    Args:
        times: submission -> workload -> time; a workload missing for a submission is NaN,
            as in the reference's table.
        base_workloads: the benchmark's base workloads; ``rho`` divides by their number and
            only they are scored.
        variants: held-out variant -> its base workload (every other workload in ``times``
            is ignored).
        reference: divide by this submission's times instead of the per-workload best.
    """
    subs = list(times)
    variants = dict(variants or {})
    cols = list(base_workloads) + [v for v in variants if v not in base_workloads]
    t = np.array([[float(times[s].get(w, math.nan)) for w in cols] for s in subs],
                 dtype=float).reshape(len(subs), len(cols))
    col = {w: j for j, w in enumerate(cols)}

    def failed(x: np.ndarray) -> np.ndarray:
        return np.isinf(x) | np.isnan(x)

    for var, base in variants.items():  # 1. a variant counts only where its base is finite
        t[failed(t[:, col[base]]), col[var]] = math.inf
    with np.errstate(invalid="ignore"):
        t[t > r_max * _column_min(t)] = math.inf  # 2. the 4x cut-off, variants included
    for var, base in variants.items():  # 3. a base counts only where its variant is finite
        t[failed(t[:, col[var]]), col[base]] = math.inf
    t = t[:, : len(base_workloads)]  # 4. base workloads only
    r = divide_times(t, _column_min(t), subs, reference)
    return profile_from_ratios(r, subs, list(base_workloads), len(base_workloads),
                               r_max=r_max, num_points=num_points)
