"""Scoring: hand-computed performance profiles and scores, a literal plain re-implementation of
AlgoPerf's ``scoring/performance_profile.py`` pipeline, and the per-workload aggregation over
studies of the rulesets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optforge.bench.rulesets import aggregate, study_bests
from optforge.bench.scoring import (
    benchmark_scores,
    geometric_mean_speedup,
    performance_profile,
    performance_ratios,
)

INF = math.inf


def _trapz_step(a: float, b: float, c: float) -> float:
    """Trapezoid area over tau = linspace(1, 4, 100) of a step from a to b at ratio c (c not on
    the grid): the grid step is 1/33, k = first index with tau_k >= c, and only the cell
    [tau_{k-1}, tau_k] mixes a and b."""
    k = math.ceil((c - 1) * 33)
    return a * (k - 1) / 33 + (a + b) / 66 + b * (99 - k) / 33


def test_two_submissions_three_workloads_by_hand():
    # A: ratios [1, 1.2, inf]; B: [3.3, 1, 1] (B's 10 on w3 is the best; A never reached w3).
    times = {"A": {"w1": 1.0, "w2": 1.2, "w3": INF}, "B": {"w1": 3.3, "w2": 1.0, "w3": 10.0}}
    prof = performance_profile(times)
    assert prof.ratios["A"] == {"w1": 1.0, "w2": pytest.approx(1.2), "w3": INF}
    assert prof.ratios["B"] == {"w1": pytest.approx(3.3), "w2": 1.0, "w3": 1.0}
    # rho_A: 1/3 below tau = 1.2, 2/3 above; rho_B: 2/3 below 3.3, 1 above.
    # By hand (k = 7 and 76): A = 383/594, B = 443/594.
    assert prof.scores["A"] == pytest.approx(383 / 594, abs=1e-12)
    assert prof.scores["B"] == pytest.approx(443 / 594, abs=1e-12)
    assert prof.scores["A"] == pytest.approx(_trapz_step(1 / 3, 2 / 3, 1.2) / 3, abs=1e-12)
    assert prof.scores["B"] == pytest.approx(_trapz_step(2 / 3, 1.0, 3.3) / 3, abs=1e-12)
    # The discretization is reproduced, not the exact integral of the step function
    # (A exact: (1/3 * 0.2 + 2/3 * 2.8) / 3 = 0.6444...).
    assert abs(prof.scores["A"] - (0.2 / 3 + 2 * 2.8 / 3) / 3) > 1e-4
    assert prof.taus[0] == 1.0 and prof.taus[-1] == 4.0 and len(prof.taus) == 100
    np.testing.assert_allclose(prof.rho["A"][:7], 1 / 3)
    np.testing.assert_allclose(prof.rho["A"][7:], 2 / 3)


def test_ties_fastest_everywhere_scores_one():
    times = {"A": {"w1": 2.0, "w2": 5.0}, "B": {"w1": 2.0, "w2": 5.0}}
    assert benchmark_scores(times) == {"A": 1.0, "B": 1.0}


def test_four_times_cutoff_is_strict_and_applied_before_ratios():
    times = {"A": {"w": 10.0}, "B": {"w": 40.0}, "C": {"w": 40.000001}}
    r = performance_ratios(times)
    assert r["B"]["w"] == 4.0  # exactly 4x is kept (reference: x > 4 * best)
    assert r["C"]["w"] == INF
    prof = performance_profile(times)
    # B counts only at the last grid point tau = 4: half a trapezoid cell.
    assert prof.scores["B"] == pytest.approx((1 / 66) / 3, abs=1e-12)
    assert prof.scores["C"] == 0.0
    assert prof.scores["A"] == 1.0


def test_all_infinite_workload_and_missing_entries_count_as_failures():
    times = {"A": {"w1": 1.0, "w2": INF}, "B": {"w1": 2.0}}  # B never ran w2
    prof = performance_profile(times, ["w1", "w2"])
    assert prof.ratios["B"]["w2"] == INF and prof.ratios["A"]["w2"] == INF
    assert prof.scores["A"] == pytest.approx(0.5)
    # A fixed n larger than the workloads given (AlgoPerf fixes n = 8): missing = failed.
    assert performance_profile(times, ["w1", "w2"], num_workloads=8).scores["A"] == \
        pytest.approx(1 / 8)


def test_reference_submission_and_the_pandas_update_quirk():
    times = {"A": {"w1": 1.0, "w2": 3.0, "w3": INF}, "ref": {"w1": 2.0, "w2": INF, "w3": INF}}
    r = performance_ratios(times, reference="ref")
    assert r["A"] == {"w1": 0.5, "w2": 0.0, "w3": INF}  # finite / inf = 0; inf / inf keeps inf
    assert r["ref"] == {"w1": 1.0, "w2": INF, "w3": INF}
    with pytest.raises(ValueError, match=r"reference must be one of \['A', 'ref'\] \(got 'x'\)"):
        performance_ratios(times, reference="x")


def _plain_algoperf(times, workloads, n, reference=None):
    """The reference pipeline written with loops: 4x cut-off against the per-workload best,
    division (NaN results keep the old value, as DataFrame.update does), rho at
    np.linspace(1, 4, 100) divided by n, trapezoid rule, divided by the tau range."""
    subs = list(times)
    t = {s: {w: times[s].get(w, INF) for w in workloads} for s in subs}
    for w in workloads:
        best = min(t[s][w] for s in subs)
        for s in subs:
            if t[s][w] > 4 * best:
                t[s][w] = INF
    r = {}
    for s in subs:
        r[s] = {}
        for w in workloads:
            d = min(t[x][w] for x in subs) if reference is None else t[reference][w]
            q = t[s][w] / d if not (math.isinf(t[s][w]) and math.isinf(d)) else math.nan
            r[s][w] = t[s][w] if math.isnan(q) else q
    taus = np.linspace(1.0, 4.0, num=100)
    scores = {}
    for s in subs:
        rho = [sum(r[s][w] <= tau for w in workloads) / n for tau in taus]
        area = sum((rho[i] + rho[i + 1]) / 2 * (taus[i + 1] - taus[i]) for i in range(99))
        scores[s] = area / (taus[-1] - taus[0])
    return scores


@pytest.mark.parametrize("seed", range(5))
def test_matches_plain_reference_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    subs = [f"s{i}" for i in range(5)]
    wls = [f"w{j}" for j in range(6)]
    times = {}
    for s in subs:
        times[s] = {}
        for w in wls:
            v = float(np.exp(rng.normal(0, 0.8)))
            times[s][w] = INF if rng.random() < 0.2 else v
    got = performance_profile(times, wls, num_workloads=8).scores
    want = _plain_algoperf(times, wls, 8)
    for s in subs:
        assert got[s] == pytest.approx(want[s], abs=1e-12)
    got_ref = performance_profile(times, wls, reference="s0").scores
    want_ref = _plain_algoperf(times, wls, 6, reference="s0")
    for s in subs:
        assert got_ref[s] == pytest.approx(want_ref[s], abs=1e-12)


def test_geometric_mean_speedup_by_hand():
    times = {"base": {"w1": 2.0, "w2": 4.0, "w3": INF}, "s": {"w1": 1.0, "w2": 8.0, "w3": 3.0},
             "fail": {"w1": INF, "w2": INF, "w3": INF}}
    out = geometric_mean_speedup(times, "base")
    assert out["s"] == (pytest.approx(1.0), 2)  # sqrt(2 * 0.5) over w1, w2
    assert out["base"] == (1.0, 2)
    assert math.isnan(out["fail"][0]) and out["fail"][1] == 0
    times["s"]["w2"] = 1.0  # speed-ups 2 and 4 -> sqrt(8)
    assert geometric_mean_speedup(times, "base")["s"][0] == pytest.approx(math.sqrt(8))
    with pytest.raises(ValueError, match=r"baseline must be one of"):
        geometric_mean_speedup(times, "nope")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"r_max must be > 1 \(got 1\)"):
        performance_profile({"a": {"w": 1.0}}, r_max=1)
    with pytest.raises(ValueError, match=r"num_workloads must be >= 2 \(got 1\)"):
        performance_profile({"a": {"w": 1.0, "v": 2.0}}, num_workloads=1)
    with pytest.raises(ValueError, match=r"times must be > 0"):
        performance_profile({"a": {"w": -1.0}})


def _rec(sub, wl, study, t, steps=None, status="ok"):
    return {"submission": sub, "workload": wl, "study": study, "status": status,
            "reached_target": t is not None, "time_to_target_s": t, "steps_to_target": steps}


def test_median_over_studies_of_the_best_trial():
    records = [
        _rec("a", "w", 0, 5.0, 50), _rec("a", "w", 0, 3.0, 70),  # best of study 0: 3 s
        _rec("a", "w", 1, None), _rec("a", "w", 1, None),  # study 1: nothing reached -> inf
        _rec("a", "w", 2, 4.0, 40), _rec("a", "w", 2, 1.0, 10, status="diverged"),
    ]
    assert study_bests(records) == {("a", "w"): {0: 3.0, 1: INF, 2: 4.0}}
    assert aggregate(records) == {"a": {"w": 4.0}}  # median(3, inf, 4)
    assert aggregate(records, "steps_to_target") == {"a": {"w": 50.0}}  # median(50, inf, 40)
    # Two of three studies failing makes the median infinite.
    assert aggregate(records[:4]) == {"a": {"w": INF}}
