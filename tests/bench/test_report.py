"""Report: tables, scores and figures written from a hand-made run folder."""

from __future__ import annotations

import json
import math

import pytest

from optforge.bench.report import format_table, held_out_rule, summarize, write_report
from optforge.bench.scoring import performance_profile
from optforge.bench.study import BenchError

INF = math.inf
PNG = b"\x89PNG\r\n\x1a\n"

WORKLOADS = {
    "w1": {"metric_name": "accuracy", "higher_is_better": True, "target": 0.9, "held_out": False,
           "base": None},
    "w2": {"metric_name": "logloss", "higher_is_better": False, "target": 0.4,
           "held_out": False, "base": None},
}


def _trial(sub, wl, study, trial, t, steps):
    reached = t is not None
    curve = [{"step": 10, "train_time_s": 0.5, "metric": 0.5, "train_loss": 1.0},
             {"step": 20, "train_time_s": 1.0, "metric": 0.95 if reached else 0.6,
              "train_loss": 0.5}]
    return {"trial_id": f"{wl}--{sub}--s{study}-t{trial}", "workload": wl, "submission": sub,
            "study": study, "trial": trial, "hparams": {}, "seed": 0, "status": "ok",
            "reached_target": reached, "time_to_target_s": t, "steps_to_target": steps,
            "curve": curve, "torch_threads": 1}


def _make_run(tmp_path, records, workloads=WORKLOADS):
    (tmp_path / "trials").mkdir()
    for r in records:
        (tmp_path / "trials" / f"{r['trial_id']}.json").write_text(json.dumps(r))
    info = {
        "config": {"workloads": list(workloads), "submissions": ["adamw", "lion"],
                   "ruleset": "external", "num_trials": 2, "num_studies": 3, "seed": 0},
        "ruleset": {"name": "external", "num_trials": 2, "num_studies": 3, "budget_scale": 1.0},
        "workloads": workloads,
        "trial_ids": [r["trial_id"] for r in records],
        "sessions": [{"started": "2026-01-01T00:00:00+00:00", "wall_s": 12.5, "trials_run": 4,
                      "executor": "local process pool (spawn)", "concurrent_trials": 2,
                      "torch_threads_per_trial": 1, "command": "optforge bench run ...",
                      "machine": {"cpu": "Test CPU", "available_cores": 2, "logical_cpus": 2,
                                  "platform": "Linux", "python": "3.11", "torch": "2.13.0"}}],
    }
    (tmp_path / "run.json").write_text(json.dumps(info))


@pytest.fixture
def run_dir(tmp_path):
    recs = []
    # adamw on w1: studies' bests 2, 4, 3 s -> median 3 (steps 20, 40, 30 -> 30).
    for j, (t, s) in enumerate([(2.0, 20), (4.0, 40), (3.0, 30)]):
        recs += [_trial("adamw", "w1", j, 0, t, s), _trial("adamw", "w1", j, 1, None, None)]
    # lion on w1: 6 s in every study -> ratio 2.
    for j in range(3):
        recs += [_trial("lion", "w1", j, 0, 6.0, 50), _trial("lion", "w1", j, 1, 7.0, 55)]
    # w2: adamw fails everywhere, lion reaches in two studies of three (median 5).
    for j, t in enumerate([5.0, None, 5.0]):
        recs += [_trial("adamw", "w2", j, 0, None, None),
                 _trial("lion", "w2", j, 0, t, 60 if t else None)]
    _make_run(tmp_path, recs)
    return tmp_path


def test_summary_numbers(run_dir):
    s = summarize(run_dir)
    assert s["time"]["cells"]["adamw"]["w1"]["median"] == 3.0
    assert s["time"]["cells"]["adamw"]["w1"]["min"] == 2.0
    assert s["time"]["cells"]["adamw"]["w1"]["max"] == 4.0
    assert s["time"]["cells"]["adamw"]["w2"]["median"] is None
    assert s["time"]["cells"]["lion"]["w2"]["reached"] == 2
    assert s["steps"]["cells"]["adamw"]["w1"]["median"] == 30.0
    want = performance_profile({"adamw": {"w1": 3.0, "w2": INF},
                                "lion": {"w1": 6.0, "w2": 5.0}}).scores
    assert s["time"]["scores"] == pytest.approx(want)
    assert s["baseline"] == "adamw"
    assert s["time"]["speedup"]["lion"] == {"geomean": 0.5, "workloads": 1}
    assert summarize(run_dir, baseline="lion")["time"]["speedup"]["adamw"]["geomean"] == 2.0
    with pytest.raises(BenchError, match=r"baseline must be one of adamw, lion \(got 'sgd'\)"):
        summarize(run_dir, baseline="sgd")


def test_write_report(run_dir):
    path = write_report(run_dir)
    text = path.read_text()
    assert path == run_dir / "report.md"
    assert "| w1 | accuracy ≥ 0.9 | 3.00 [2.00–4.00] (3/3) | 6.00 [6.00–6.00] (3/3) |" in text
    assert "| w2 | logloss ≤ 0.4 | not reached (0/3) | 5.00 [5.00–5.00] (2/3) |" in text
    assert "| w1 | accuracy ≥ 0.9 | 30 [20–40] (3/3) | 50 [50–50] (3/3) |" in text
    assert "**2 concurrent trial(s)**" in text and "**1 torch thread(s) per trial**" in text
    assert "Test CPU" in text and "torch 2.13.0" in text
    assert "0.50× (1)" in text  # lion vs adamw on the one workload both reached
    for png in ("performance_profile.png", "curves_w1.png", "curves_w2.png"):
        assert f"]({png})" in text
        assert (run_dir / png).read_bytes()[:8] == PNG
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["time"]["scores"]) == {"adamw", "lion"}
    table = format_table(summarize(run_dir))
    assert "adamw" in table.splitlines()[2] and "3.0s" in table


def test_held_out_rule():
    workloads = {**WORKLOADS, "w1_var": {"held_out": True, "base": "w1"},
                 "lonely_var": {"held_out": True, "base": "absent"}}
    times = {"a": {"w1": 1.0, "w2": 2.0, "w1_var": INF, "lonely_var": 3.0},
             "b": {"w1": 2.0, "w2": 2.0, "w1_var": 9.0, "lonely_var": INF}}
    out, scored = held_out_rule(times, workloads)
    assert scored == ["w1", "w2", "lonely_var"]
    assert out["a"] == {"w1": INF, "w2": 2.0, "lonely_var": 3.0}  # variant missed -> base inf
    assert out["b"] == {"w1": 2.0, "w2": 2.0, "lonely_var": INF}


def test_report_of_a_folder_without_a_run(tmp_path):
    with pytest.raises(BenchError, match=r"holds no benchmark run \(no run.json\)"):
        write_report(tmp_path)
