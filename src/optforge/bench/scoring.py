"""Performance profiles and the AlgoPerf benchmark score.

Notation (AlgoPerf ``docs/DOCUMENTATION.md``; Dolan & Moré 2002):

``t[s, w]``
    time to target of submission ``s`` on workload ``w`` (median over studies); ``inf`` if not
    reached, missing entries count as ``inf``.
``r[s, w] = t[s, w] / min_s' t[s', w]``
    performance ratio (or over a named reference submission).
``rho_s(tau) = |{w : r[s, w] <= tau}| / n``
    performance profile; ``n`` is the fixed number of workloads, so a missing workload is a
    failure.
``B_s = 1 / (r_max - 1) * integral_1^r_max rho_s(tau) dtau``
    benchmark score in ``[0, 1]``, ``r_max = 4``.

The port follows ``scoring/performance_profile.py`` (v0.6) step for step, including its
discretization, which differs slightly from the exact integral of the step function:

1. times greater than ``r_max`` x the per-workload best are set to ``inf`` *before* the ratios;
2. ratios are taken against the per-workload minimum or a reference submission; a ratio that
   is NaN (``inf / inf``) keeps the original ``inf``, as pandas' ``DataFrame.update`` does in
   the reference (and ``finite / inf = 0`` counts as within every tau, as there);
3. ``rho`` is evaluated at ``num_points = 100`` evenly spaced ``tau`` in ``[1, r_max]`` and
   integrated with the trapezoid rule, then divided by ``r_max - 1``.

Example::

    >>> t = {"a": {"w1": 1.0, "w2": 2.0}, "b": {"w1": 2.0, "w2": 1.0}}
    >>> scores = benchmark_scores(t)
    >>> round(scores["a"], 4) == round(scores["b"], 4)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "R_MAX",
    "Profile",
    "benchmark_scores",
    "geometric_mean_speedup",
    "performance_profile",
    "performance_ratios",
    "times_matrix",
]

#: AlgoPerf's maximum ratio: slower than 4x the fastest earns nothing on that workload.
R_MAX = 4.0
NUM_POINTS = 100

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2.0 has only trapz

Times = Mapping[str, Mapping[str, float]]


def times_matrix(
    times: Times, workloads: Sequence[str] | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """``(submissions, workloads, T)`` with ``T[s, w]`` as float; missing or ``None`` is ``inf``."""
    subs = list(times)
    if workloads is None:
        seen: dict[str, None] = {}
        for s in subs:
            seen.update(dict.fromkeys(times[s]))
        workloads = list(seen)
    t = np.full((len(subs), len(workloads)), np.inf)
    for i, s in enumerate(subs):
        for j, w in enumerate(workloads):
            v = times[s].get(w)
            if v is not None and not math.isnan(float(v)):
                t[i, j] = float(v)
    if np.any(t <= 0):
        raise ValueError(f"times must be > 0 (got min {t.min()})")
    return subs, list(workloads), t


def _ratios(t: np.ndarray, subs: list[str], reference: str | None, r_max: float) -> np.ndarray:
    t = t.copy()
    best = t.min(axis=0)
    # Reference step 1: the 4x cut-off uses the per-workload best, whatever the denominator.
    with np.errstate(invalid="ignore"):
        t[t > r_max * best] = np.inf
    return divide_times(t, t.min(axis=0), subs, reference)


def divide_times(t: np.ndarray, best: np.ndarray, subs: list[str],
                 reference: str | None) -> np.ndarray:
    """``t`` over ``best`` (or over the ``reference`` submission's row), keeping ``t`` where
    the ratio is NaN, as the reference's ``DataFrame.update`` does (so ``inf / inf`` stays
    ``inf``, and a missing time, NaN, stays NaN)."""
    if reference is None:
        denom = best
    else:
        if reference not in subs:
            raise ValueError(f"reference must be one of {subs} (got {reference!r})")
        denom = t[subs.index(reference)]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = t / denom
    return np.where(np.isnan(r), t, r)


def performance_ratios(
    times: Times,
    workloads: Sequence[str] | None = None,
    *,
    reference: str | None = None,
    r_max: float = R_MAX,
) -> dict[str, dict[str, float]]:
    """``r[s, w]`` after the ``r_max`` cut-off; ``inf`` where not reached or cut off."""
    subs, wls, t = times_matrix(times, workloads)
    r = _ratios(t, subs, reference, r_max)
    return {s: {w: float(r[i, j]) for j, w in enumerate(wls)} for i, s in enumerate(subs)}


@dataclass(frozen=True)
class Profile:
    """Performance profiles of a set of submissions.

    Attributes:
        taus: ``(num_points,)`` grid in ``[1, r_max]``.
        rho: submission -> ``(num_points,)`` fraction of workloads with ratio ``<= tau``.
        scores: submission -> benchmark score (normalized trapezoid area under ``rho``).
        ratios: submission -> workload -> ratio (``inf`` where not reached or cut off).
        num_workloads: the ``n`` that ``rho`` divides by.
    """

    taus: np.ndarray
    rho: dict[str, np.ndarray]
    scores: dict[str, float]
    ratios: dict[str, dict[str, float]]
    num_workloads: int


def performance_profile(
    times: Times,
    workloads: Sequence[str] | None = None,
    *,
    reference: str | None = None,
    r_max: float = R_MAX,
    num_points: int = NUM_POINTS,
    num_workloads: int | None = None,
) -> Profile:
    """Performance profiles and benchmark scores (AlgoPerf ``compute_performance_profiles`` with
    ``min_tau=1, max_tau=r_max, scale='linear'`` then ``compute_leaderboard_score(normalize=
    True)``).

    Args:
        times: submission -> workload -> time (or steps) to target; ``inf``/``None``/missing
            means not reached.
        workloads: the benchmark's workloads (default: every workload named in ``times``).
        reference: divide by this submission's times instead of the per-workload best.
        r_max: maximum ratio (AlgoPerf: 4).
        num_points: size of the tau grid (AlgoPerf: 100).
        num_workloads: ``n`` in ``rho`` (default ``len(workloads)``; AlgoPerf fixes 8 so that a
            missing workload counts as failed).
    """
    if r_max <= 1:
        raise ValueError(f"r_max must be > 1 (got {r_max})")
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2 (got {num_points})")
    subs, wls, t = times_matrix(times, workloads)
    n = len(wls) if num_workloads is None else num_workloads
    if n < 1 or n < len(wls):
        raise ValueError(f"num_workloads must be >= {max(1, len(wls))} (got {n})")
    return profile_from_ratios(_ratios(t, subs, reference, r_max), subs, wls, n,
                               r_max=r_max, num_points=num_points)


def profile_from_ratios(r: np.ndarray, subs: list[str], wls: list[str], n: int, *,
                        r_max: float = R_MAX, num_points: int = NUM_POINTS) -> Profile:
    """``rho`` on ``num_points`` taus in ``[1, r_max]`` (``n`` workloads), trapezoid scores."""
    taus = np.linspace(1.0, r_max, num=num_points)
    # (S, W, 1) <= (P,) -> (S, W, P); NaN never counts.
    with np.errstate(invalid="ignore"):
        rho = (r[:, :, None] <= taus[None, None, :]).sum(axis=1) / n
    area = _trapezoid(rho, x=taus, axis=1) / (taus.max() - taus.min())
    return Profile(
        taus=taus,
        rho={s: rho[i] for i, s in enumerate(subs)},
        scores={s: float(area[i]) for i, s in enumerate(subs)},
        ratios={s: {w: float(r[i, j]) for j, w in enumerate(wls)} for i, s in enumerate(subs)},
        num_workloads=n,
    )


def benchmark_scores(
    times: Times, workloads: Sequence[str] | None = None, **kwargs: object
) -> dict[str, float]:
    """Submission -> benchmark score in ``[0, 1]`` (see :func:`performance_profile`)."""
    return performance_profile(times, workloads, **kwargs).scores  # type: ignore[arg-type]


def geometric_mean_speedup(
    times: Times, baseline: str, workloads: Sequence[str] | None = None
) -> dict[str, tuple[float, int]]:
    """Submission -> (geometric mean over workloads of ``t[baseline, w] / t[s, w]``, count).

    The AlgoPerf alternative score. Only workloads that both the submission and the baseline
    reached enter the mean (the count says how many); with none, the speed-up is NaN.
    """
    subs, wls, t = times_matrix(times, workloads)
    if baseline not in subs:
        raise ValueError(f"baseline must be one of {subs} (got {baseline!r})")
    tb = t[subs.index(baseline)]
    out: dict[str, tuple[float, int]] = {}
    for i, s in enumerate(subs):
        ok = np.isfinite(t[i]) & np.isfinite(tb)
        k = int(ok.sum())
        out[s] = (float(np.exp(np.mean(np.log(tb[ok] / t[i][ok])))) if k else math.nan, k)
    return out
