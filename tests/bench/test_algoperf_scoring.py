"""The ``algoperf`` protocol scores exactly as AlgoPerf's scorer, and AlgoPerf logs import.

``reference_scores`` below is an independent re-implementation of AlgoPerf v0.6's procedure
(``scoring/score_submissions.py`` -> ``performance_profile.compute_performance_profiles`` ->
``compute_leaderboard_score``), written with pandas the way the reference is, step by step; the
harness computes the same numbers with numpy from its own records.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
from pathlib import Path

import numpy as np
import pytest

from optforge.bench.algoperf.logs import BASE_WORKLOADS, TARGETS, import_logs, is_algoperf_logs
from optforge.bench.algoperf.protocol import algoperf_profile, algoperf_study_values
from optforge.bench.cli import bench_main
from optforge.bench.report import summarize
from optforge.bench.rulesets import external_tuning, plan_trials
from optforge.bench.submission import get_submission

pd = pytest.importorskip("pandas")


# ------------------------------------------------------------- the reference, re-implemented
def _base_of(workload: str, bases) -> str:
    return next((b for b in bases if b in workload), workload)


def reference_scores(dfs, meta, bases, reference=None, max_tau=4.0, num_points=100):
    """dfs: submission -> DataFrame (one row per trial: workload, study, trial, and arrays
    'score' and the metric column); meta: workload -> (metric column, target, minimize)."""
    rows = []
    for sub, df in dfs.items():
        for workload, group in df.groupby("workload"):
            col, target, minimize = meta[workload]
            per_study = []
            for _, g in group.groupby("study"):
                op = operator.le if minimize else operator.ge
                hit = g[col].apply(lambda x, op=op, target=target: op(x, target))
                hit = hit[hit.apply(np.any)]
                if len(hit) == 0:
                    per_study.append(float("inf"))
                    continue
                first = hit.apply(np.argmax)
                trial = first.idxmin()
                per_study.append(g["score"].loc[trial][first[trial]])
            rows.append({"submission": sub, "workload": workload,
                         "score": np.median(per_study)})
    df = pd.DataFrame.from_records(rows).pivot(index="submission", columns="workload",
                                               values="score")
    df = df.reindex(sorted(set(df.columns) | set(bases)), axis=1)  # unrun workloads: NaN

    def keep_if(keep, check):
        def f(x):
            if x[check] == np.inf or np.isnan(x[check]):
                return np.inf
            return x[keep]
        return f

    for w in list(df.columns):
        if w not in bases:
            df[w] = df.apply(keep_if(w, _base_of(w, bases)), axis=1)
    best = df.min(axis=0)
    df[df.apply(lambda x: x > 4 * best, axis=1)] = np.inf
    for w in list(df.columns):
        if w not in bases:
            df[_base_of(w, bases)] = df.apply(keep_if(_base_of(w, bases), w), axis=1)
    df = df[list(bases)]
    if reference is None:
        df.update(df.div(df.min(axis=0), axis=1))
    else:
        df.update(df.div(df.loc[reference, :], axis=1))
    points = np.linspace(1.0, max_tau, num=num_points)
    perf = pd.concat([(df <= tau).sum(axis=1) / len(bases) for tau in points], axis=1)
    perf.columns = points
    trapz = getattr(np, "trapezoid", None) or np.trapz
    scores = trapz(perf, x=perf.columns) / (perf.columns.max() - perf.columns.min())
    return dict(zip(perf.index, scores, strict=True))


def reference_read_logs(root: Path):
    """AlgoPerf's get_experiment_df for every submission folder under ``root``."""
    dfs = {}
    for sub in sorted(os.listdir(root)):
        rows = []
        for study in sorted(os.listdir(root / sub)):
            for wdir in sorted(os.listdir(root / sub / study)):
                for trial in sorted(os.listdir(root / sub / study / wdir)):
                    csv = root / sub / study / wdir / trial / "eval_measurements.csv"
                    t = pd.read_csv(csv)
                    row = {"workload": re.sub(r"_(jax|pytorch)$", "", wdir), "study": study,
                           "trial": trial}
                    row.update({c: t[c].to_numpy() for c in t.columns})
                    rows.append(row)
        dfs[sub] = pd.DataFrame(rows)
    return dfs


ALGOPERF_META = {w: (f"validation/{m}", t, not hi) for w, (m, t, hi) in TARGETS.items()}


# ------------------------------------------------------------- generated AlgoPerf logs
def write_logs(root: Path, rng: np.random.Generator, *, subs=4, studies=3, trials=5,
               bases=BASE_WORKLOADS, variants=("criteo1tb_embed_init", "wmt_post_ln")) -> None:
    """Random experiment logs in AlgoPerf's layout, with irregular evaluation times, NaN rows,
    a final score-only row, missing workloads and held-out variants."""
    workloads = list(bases) + list(variants)
    for s in range(subs):
        speed = rng.uniform(0.5, 2.0)
        for w in workloads:
            if s > 0 and rng.random() < 0.1:
                continue  # this submission did not run this workload
            metric, target, higher = TARGETS[w]
            for j in range(studies):
                for k in range(1, trials + 1):
                    n = int(rng.integers(2, 9))
                    times = np.cumsum(rng.exponential(100 * speed, n))
                    # values that cross the target at a random evaluation, or never
                    frac = rng.uniform(0.6, 1.25, n) * np.linspace(0.7, 1.1, n)
                    vals = target * (frac if higher else 2.0 - frac)
                    vals[rng.random(n) < 0.1] = np.nan
                    d = root / f"sub{s}" / f"study_{j}" / f"{w}_pytorch" / f"trial_{k}"
                    d.mkdir(parents=True)
                    lines = ["global_step,score,train/loss,validation/" + metric]
                    for i in range(n):
                        v = "" if np.isnan(vals[i]) else repr(float(vals[i]))
                        lines.append(f"{100 * (i + 1)},{float(times[i])!r},0.5,{v}")
                    lines.append(f"{100 * n + 7},{float(times[-1]) + 1.0!r},,")  # final row
                    (d / "eval_measurements.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("seed", range(8))
def test_imported_logs_score_exactly_as_algoperf(tmp_path, seed) -> None:
    rng = np.random.default_rng(seed)
    logs = tmp_path / "logs"
    # 3 submissions x 10 workloads x 3 studies x 3 trials (1 trial: self-tuning-shaped)
    write_logs(logs, rng, subs=3, trials=1 if seed % 4 == 3 else 3)
    run = import_logs(logs, tmp_path / "report")
    dfs = reference_read_logs(logs)
    for reference in (None, "sub0"):  # per-workload best, and a reference submission
        want = reference_scores(dfs, ALGOPERF_META, BASE_WORKLOADS, reference=reference)
        got = summarize(run, reference=reference)["time"]["scores"]
        assert set(got) == set(want)
        for sub in want:
            assert got[sub] == pytest.approx(want[sub], abs=1e-12, rel=0), (sub, reference)


def test_report_reads_an_algoperf_directory_through_the_cli(tmp_path, capsys) -> None:
    logs = tmp_path / "logs"
    # two base workloads of eight (the others count as failures) and one variant
    write_logs(logs, np.random.default_rng(7), subs=3, studies=2, trials=2,
               bases=("criteo1tb", "wmt"), variants=("wmt_post_ln",))
    assert is_algoperf_logs(logs)
    assert bench_main(["report", str(logs), "--reference", "sub1"]) == 0
    out = tmp_path / "logs-optforge-report"  # beside the logs, not among the submissions
    summary = json.loads((out / "summary.json").read_text())
    # (AlgoPerf's scorer stops with a KeyError when a base workload has no log at all; the
    # reference here, like the harness, counts it as not reached by anyone)
    want = reference_scores(reference_read_logs(logs), ALGOPERF_META, BASE_WORKLOADS,
                            reference="sub1")
    assert summary["time"]["scores"] == pytest.approx(want, abs=1e-12)
    assert summary["time"]["scored_workloads"] == list(BASE_WORKLOADS)
    text = (out / "report.md").read_text()
    assert "ρ divides by the 8 base workloads" in text and "reference submission sub1" in text
    assert (out / "performance_profile.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.glob("curves_*.png")) == [
        "curves_criteo1tb.png", "curves_wmt.png", "curves_wmt_post_ln.png"]
    capsys.readouterr()
    # a second import replaces the first; bad logs are one line and exit 2
    (logs / "sub2").rename(tmp_path / "sub2")
    import_logs(logs, out)
    assert len(list((out / "trials").glob("*.json"))) == 2 * 2 * 2 * 3
    bad = tmp_path / "bad" / "s" / "study_0" / "mnist_jax" / "trial_1"
    bad.mkdir(parents=True)
    (bad / "eval_measurements.csv").write_text("global_step,score\n1,1.0\n")
    capsys.readouterr()
    assert bench_main(["report", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "'mnist' is not a scored AlgoPerf workload" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------- optforge runs, algoperf protocol
CPU_BASES = ["click_ctr", "digits_cnn", "illcond_regression", "stdlib_lm"]


def _cpu_run(tmp_path: Path, rng: np.random.Generator, protocol: str = "algoperf") -> Path:
    from optforge.bench.workloads import get_workload

    names = CPU_BASES + ["digits_cnn_tanh", "click_ctr_embed_init"]
    meta = {w: get_workload(w).describe() for w in names}
    records = []
    for s in ("adamw", "lion", "nadamw"):
        for w in names:
            m = meta[w]
            for j in range(3):
                for k in range(5):
                    n = int(rng.integers(2, 8))
                    times = np.cumsum(rng.exponential(3.0, n))
                    frac = rng.uniform(0.85, 1.08, n)
                    vals = m["target"] * (frac if m["higher_is_better"] else 2 - frac)
                    curve = [{"step": 10 * (i + 1), "train_time_s": float(times[i]),
                              "metric": float(vals[i])} for i in range(n)]
                    records.append({"trial_id": f"{w}--{s}--s{j}-t{k}", "workload": w,
                                    "submission": s, "study": j, "trial": k, "status": "ok",
                                    "target": m["target"],
                                    "higher_is_better": m["higher_is_better"],
                                    "metric_name": m["metric_name"], "curve": curve})
    out = tmp_path / protocol
    (out / "trials").mkdir(parents=True)
    for r in records:
        (out / "trials" / f"{r['trial_id']}.json").write_text(json.dumps(r))
    info = {"config": {"workloads": names, "submissions": ["adamw", "lion", "nadamw"],
                       **({"protocol": protocol} if protocol != "optforge" else {})},
            "workloads": meta, "trial_ids": [r["trial_id"] for r in records]}
    if protocol == "algoperf":
        info["protocol"] = {"name": "algoperf", "base_workloads": CPU_BASES}
    (out / "run.json").write_text(json.dumps(info))
    return out


def _records_to_dfs(run: Path):
    dfs: dict[str, list] = {}
    for p in sorted((run / "trials").glob("*.json")):
        r = json.loads(p.read_text())
        dfs.setdefault(r["submission"], []).append({
            "workload": r["workload"], "study": r["study"], "trial": r["trial"],
            "score": np.array([c["train_time_s"] for c in r["curve"]]),
            "metric": np.array([c["metric"] for c in r["curve"]], dtype=float)})
    return {s: pd.DataFrame(sorted(rows, key=lambda x: (x["workload"], x["study"], x["trial"])))
            for s, rows in dfs.items()}


@pytest.mark.parametrize("seed", range(8))
def test_algoperf_protocol_on_cpu_runs_equals_the_reference(tmp_path, seed) -> None:
    from optforge.bench.workloads import get_workload

    run = _cpu_run(tmp_path, np.random.default_rng(100 + seed))
    meta = {w: ("metric", get_workload(w).target, not get_workload(w).higher_is_better)
            for w in CPU_BASES + ["digits_cnn_tanh", "click_ctr_embed_init"]}
    dfs = _records_to_dfs(run)
    for reference in (None, "lion"):
        want = reference_scores(dfs, meta, CPU_BASES, reference=reference)
        got = summarize(run, reference=reference)["time"]["scores"]
        assert got == pytest.approx(want, abs=1e-12, rel=0)


def test_each_reported_gap_differs_between_the_protocols() -> None:
    """The four scoring rules of the issue, each on a table where they disagree."""
    def rec(trial, curve, study=0):
        return {"submission": "a", "workload": "w", "study": study, "trial": trial,
                "target": 1.0, "higher_is_better": True,
                "curve": [{"step": 10 * (i + 1), "train_time_s": t, "metric": m}
                          for i, (t, m) in enumerate(curve)]}
    # best trial: trial 0 reaches at its 3rd evaluation (5 s), trial 1 at its 2nd (6 s)
    recs = [rec(0, [(1, 0), (2, 0), (5, 1)]), rec(1, [(3, 0), (6, 1)])]
    assert algoperf_study_values(recs)[("a", "w")] == {0: 6.0}
    from optforge.bench.rulesets import study_bests

    recs_optforge = [{**r, "status": "ok", "reached_target": True,
                      "time_to_target_s": r["curve"][-1]["train_time_s"]} for r in recs]
    assert study_bests(recs_optforge)[("a", "w")] == {0: 5.0}
    # held-out: b's variant time is finite but beyond 4x the best, so AlgoPerf drops b's base
    times = {"a": {"w": 10.0, "w_var": 1.0}, "b": {"w": 5.0, "w_var": 5.0}}
    prof = algoperf_profile(times, ["w"], {"w_var": "w"})
    assert prof.ratios["b"]["w"] == math.inf and prof.ratios["a"]["w"] == 1.0
    from optforge.bench.report import held_out_rule

    ours, _ = held_out_rule(times, {"w": {}, "w_var": {"held_out": True, "base": "w"}})
    assert ours["b"]["w"] == 5.0
    # workload count: one workload of a benchmark of 4 scores at most 1/4
    assert algoperf_profile({"a": {"w": 1.0}}, ["w", "x", "y", "z"]).scores["a"] == 0.25


def test_algoperf_protocol_shares_one_seed_per_study_and_evaluates_by_time() -> None:
    subs = {"adamw": get_submission("adamw")}
    plan = plan_trials(["digits_cnn", "click_ctr"], subs, external_tuning(5, 3), seed=1,
                       protocol="algoperf")
    seeds = {(t.study, t.trial): t.seed for t in plan}
    for j in range(3):
        assert len({seeds[j, i] for i in range(5)}) == 1
    assert len({seeds[j, 0] for j in range(3)}) == 3
    assert {t.eval_period_s for t in plan if t.workload == "click_ctr"} == {0.5}
    old = plan_trials(["digits_cnn"], subs, external_tuning(5, 3), seed=1)
    assert len({t.seed for t in old}) == 15 and {t.eval_period_s for t in old} == {None}
