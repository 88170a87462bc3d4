"""External tuning by Bayesian optimization: objective, rounds, resume, CLI, report."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest

from optforge.__main__ import main
from optforge.bench.report import summarize, write_report
from optforge.bench.rulesets import aggregate, external_tuning, plan_trials, self_tuning
from optforge.bench.study import BenchConfig, BenchError, InlineExecutor, run_benchmark
from optforge.bench.tuners import (
    FAILURE_MARGIN,
    BayesianTuner,
    check_tuner,
    initial_trials,
    study_objectives,
    trial_objective,
)

CALLS: list[str] = []

TARGET = 0.5
BUDGET = 60.0  # time budget of the fake workloads (click_ctr's too)


def _badness(hp) -> float:
    """0 at lr = 10^-2.5, wd = 0.1, growing quadratically in log space (the region that
    reaches the target, badness < 1, spans +-0.32 decades of lr)."""
    return 10 * (math.log10(hp["learning_rate"]) + 2.5) ** 2 + 5 * (
        math.log10(hp["weight_decay"]) + 1
    ) ** 2


def synthetic_trial(spec):
    """Stand-in for run_trial: diverges for lr > 0.05, reaches the target (lower is better,
    0.5) in 5 + 50 q seconds where q = badness < 1, else misses with best metric 0.5 q."""
    CALLS.append(f"{spec.workload}/{spec.submission}/{spec.seed}/{spec.hparams['learning_rate']}")
    hp = spec.hparams
    base = {"workload": spec.workload, "submission": spec.submission, "hparams": hp,
            "seed": spec.seed, "curve": [], "steps_to_target": None,
            "time_to_target_s": None, "best_metric": None, "reached_target": False}
    if hp["learning_rate"] > 0.05:
        return {**base, "status": "diverged"}
    q = _badness(hp)
    if q < 1:
        t = 5 + 50 * q
        return {**base, "status": "ok", "reached_target": True, "time_to_target_s": t,
                "steps_to_target": int(100 * t), "best_metric": TARGET}
    return {**base, "status": "ok", "best_metric": TARGET * q}


def interrupting_trial(spec):
    if len(CALLS) == 3:
        raise KeyboardInterrupt
    return synthetic_trial(spec)


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


class _Sub:
    def __init__(self, space, defaults):
        self.search_space, self.default_hparams = space, defaults


SPACE = {
    "learning_rate": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    "weight_decay": {"min": 1e-3, "max": 1.0, "scaling": "log"},
    "warmup_factor": {"feasible_points": [0.02, 0.05, 0.1]},
}
SUBS = {"x": _Sub(SPACE, {"learning_rate": 1e-3, "weight_decay": 0.1, "warmup_factor": 0.05,
                          "beta2": 0.99})}
INFO = {"w1": {"target": TARGET, "higher_is_better": False, "time_budget_s": BUDGET},
        "w2": {"target": TARGET, "higher_is_better": False, "time_budget_s": BUDGET}}


def _drive(tuner: BayesianTuner) -> dict[str, dict]:
    """Run a tuner to the end in memory, as run_rounds does on disk."""
    records: dict[str, dict] = {}
    while batch := tuner.next_round(records):
        for t in batch:
            from optforge.bench.trial import TrialSpec

            records[t.trial_id] = {**synthetic_trial(TrialSpec(**t.spec_kwargs())),
                                   "trial_id": t.trial_id, "study": t.study, "trial": t.trial,
                                   "budget_scale": t.budget_scale}
    return records


# ---------------------------------------------------------------------------- objective


def _rec(**kw):
    return {"status": "ok", "time_budget_s": BUDGET, "target": 0.9,
            "higher_is_better": True, **kw}


def test_objective_orders_hits_then_misses_then_failures():
    fast = trial_objective(_rec(reached_target=True, time_to_target_s=2.0))
    slow = trial_objective(_rec(reached_target=True, time_to_target_s=50.0))
    near = trial_objective(_rec(best_metric=0.89))
    far = trial_objective(_rec(best_metric=0.5))
    assert fast == pytest.approx(math.log(2.0)) and slow == pytest.approx(math.log(50.0))
    assert fast < slow < math.log(BUDGET) < near < far
    assert near == pytest.approx(math.log(BUDGET) + math.log1p(0.01 / 0.9))
    # Lower-is-better metric: the gap has the other sign; a miss by 0 sits at log T.
    low = {"target": 0.5, "higher_is_better": False}
    assert trial_objective(_rec(**low, best_metric=1.0)) == pytest.approx(
        math.log(BUDGET) + math.log1p(1.0))
    assert trial_objective(_rec(**low, best_metric=0.5)) == pytest.approx(math.log(BUDGET))
    # Budget from the workload (scaled) when the record lacks it, e.g. a fake or error record.
    assert trial_objective({"status": "ok", "best_metric": 1.0, "budget_scale": 1.5},
                           {"time_budget_s": 40.0, "target": 1.0, "higher_is_better": False}
                           ) == pytest.approx(math.log(60.0))
    for failed in (_rec(status="diverged"), _rec(status="error"), _rec(best_metric=None)):
        assert trial_objective(failed) is None


def test_failures_are_worst_plus_margin_and_finite():
    recs = [_rec(reached_target=True, time_to_target_s=2.0), _rec(status="diverged"),
            _rec(best_metric=0.5), _rec(status="error", time_budget_s=None)]
    vals = study_objectives(recs, {"time_budget_s": BUDGET})
    worst_ok = math.log(BUDGET) + math.log1p(0.4 / 0.9)
    assert vals[1] == vals[3] == pytest.approx(worst_ok + FAILURE_MARGIN)
    assert all(math.isfinite(v) for v in vals)
    # Only failures: log T + margin, still finite (never NaN, never -inf).
    assert study_objectives([_rec(status="diverged")]) == [math.log(BUDGET) + FAILURE_MARGIN]
    with pytest.raises(ValueError, match=r"time budget unknown \(got None\)"):
        study_objectives([{"status": "error"}])


def test_check_tuner_and_initial_trials():
    check_tuner("halton", "self")
    check_tuner("bo", "external")
    with pytest.raises(ValueError, match=r"--tuner bo applies to --ruleset external only "
                                         r"\(got --ruleset self\)"):
        check_tuner("bo", "self")
    with pytest.raises(ValueError, match=r"tuner must be one of halton, bo \(got 'tpe'\)"):
        check_tuner("tpe", "external")
    assert [initial_trials(n) for n in (1, 5, 9, 30, 100)] == [2, 2, 3, 10, 10]


def test_tuner_rejects_unusable_spaces():
    with pytest.raises(ValueError, match=r"external-tuning ruleset only \(got 'self'\)"):
        BayesianTuner(["w1"], SUBS, self_tuning(1), INFO)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 \(got 0\)"):
        BayesianTuner(["w1"], SUBS, external_tuning(4, 1), INFO, batch_size=0)
    with pytest.raises(ValueError, match=r"space for 'x' is a list of fixed configurations"):
        BayesianTuner(["w1"], {"x": _Sub([{"learning_rate": 0.1}], {})},
                      external_tuning(4, 1), INFO)
    with pytest.raises(ValueError, match=r"'x' cannot be used by BO: dimension 'lr': Real "
                                         r"needs low < high"):
        BayesianTuner(["w1"], {"x": _Sub({"lr": {"min": 1, "max": 1, "scaling": "linear"}},
                                         {})}, external_tuning(4, 1), INFO)
    with pytest.raises(ValueError, match=r"submission 'z' has no search space"):
        BayesianTuner(["w1"], {"z": _Sub({}, {})}, external_tuning(4, 1), INFO)


# ---------------------------------------------------------------------------- tuning


def test_rounds_ids_seeds_and_difference_from_halton():
    ruleset = external_tuning(5, 2)
    tuner = BayesianTuner(["w1", "w2"], SUBS, ruleset, INFO, seed=3, batch_size=2)
    halton = plan_trials(["w1", "w2"], SUBS, ruleset, seed=3)
    assert tuner.trial_ids() == [t.trial_id for t in halton]
    first = tuner.next_round({})
    # Round 0: trials 0-1 of each of the 2 x 2 studies, Halton's trial seeds and defaults.
    assert [(t.workload, t.study, t.trial) for t in first] == [
        (w, j, i) for w in ("w1", "w2") for j in (0, 1) for i in (0, 1)]
    by_slot = {(t.workload, t.study, t.trial): t for t in halton}
    assert all(t.seed == by_slot[(t.workload, t.study, t.trial)].seed for t in first)
    assert all(t.hparams["beta2"] == 0.99 for t in first)
    records = _drive(tuner)
    assert sorted(records) == sorted(tuner.trial_ids())
    bo_points = {(r["hparams"]["learning_rate"], r["hparams"]["weight_decay"])
                 for r in records.values()}
    halton_points = {(t.hparams["learning_rate"], t.hparams["weight_decay"]) for t in halton}
    assert not bo_points & halton_points
    # Same study, different workload: same initial (Sobol) design, then each follows its own
    # results (here the results are equal, so the whole study is).
    w1 = [records[f"w1--x--s0-t{i}"]["hparams"] for i in range(5)]
    w2 = [records[f"w2--x--s0-t{i}"]["hparams"] for i in range(5)]
    assert w1 == w2
    assert w1 != [records[f"w1--x--s1-t{i}"]["hparams"] for i in range(5)]
    # Deterministic: a fresh tuner replays the same plan.
    again = _drive(BayesianTuner(["w1", "w2"], SUBS, ruleset, INFO, seed=3, batch_size=2))
    assert {k: r["hparams"] for k, r in again.items()} == {
        k: r["hparams"] for k, r in records.items()}


def _study_values(records) -> list[float]:
    """Per study, the best (least) objective of its trials: log seconds to target, or above
    log 60 for a study that never reached it."""
    by_study: dict[int, list] = {}
    for r in records:
        by_study.setdefault(r["study"], []).append(r)
    return [min(study_objectives(v, INFO["w1"])) for _, v in sorted(by_study.items())]


@pytest.mark.slow  # ~20 s; the tuner's mechanics stay in the default run
def test_bo_beats_halton_and_random_with_the_same_trials():
    """3 studies x 12 trials on a narrow valley: every BO study reaches the target, and the
    median over studies of the best trial (the harness's aggregate) is far better than
    Halton's and random search's, which miss the target in most studies."""
    from optforge.bench.trial import TrialSpec

    def run(hp, study):
        return {**synthetic_trial(TrialSpec("w1", "x", hp)), "study": study}

    rs = external_tuning(12, 3)
    bo = _study_values(_drive(BayesianTuner(["w1"], SUBS, rs, INFO, seed=0)).values())
    halton = _study_values(run(t.hparams, t.study)
                           for t in plan_trials(["w1"], SUBS, rs, seed=0))
    rng = np.random.default_rng(0)
    rand = _study_values(run({"learning_rate": 10 ** rng.uniform(-4, -1),
                              "weight_decay": 10 ** rng.uniform(-3, 0)}, j)
                         for j in range(3) for _ in range(12))
    print("best time to target per study (s): BO", [round(math.exp(v), 1) for v in bo],
          "Halton", [round(math.exp(v), 1) for v in halton],
          "random", [round(math.exp(v), 1) for v in rand])
    assert max(bo) < math.log(20.0), bo  # 5 s at the optimum, 55 s at the valley's edge
    assert np.median(bo) < np.median(halton) - 1.0, (bo, halton)  # > e times faster
    assert np.median(bo) < np.median(rand) - 1.0, (bo, rand)
    assert np.median(halton) > math.log(BUDGET) and np.median(rand) > math.log(BUDGET)


# ---------------------------------------------------------------------------- harness


def _bo_config(**kw):
    return BenchConfig(["click_ctr"], ["adamw"], ruleset="external", num_trials=5,
                       num_studies=2, seed=1, tuner="bo", tuner_batch=2, **kw)


def _hparams(result):
    return [(r["trial_id"], r["hparams"], r["seed"]) for r in result.records]


def test_resume_mid_round_gives_the_uninterrupted_plan(tmp_path):
    whole = run_benchmark(_bo_config(), tmp_path / "whole", executor=InlineExecutor(),
                          trial_fn=synthetic_trial)
    assert whole.ran == 10 and len(CALLS) == 10
    CALLS.clear()
    # Interrupted after 3 trials: round 0 of study 1 (trials 0-1) is half recorded.
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(_bo_config(), tmp_path / "cut", executor=InlineExecutor(),
                      trial_fn=interrupting_trial)
    assert len(list((tmp_path / "cut" / "trials").glob("*.json"))) == 3
    CALLS.clear()
    resumed = run_benchmark(_bo_config(), tmp_path / "cut", executor=InlineExecutor(),
                            trial_fn=synthetic_trial)
    assert resumed.ran == 7 and resumed.skipped == 3 and len(CALLS) == 7  # none rerun
    assert _hparams(resumed) == _hparams(whole)
    CALLS.clear()
    again = run_benchmark(_bo_config(), tmp_path / "cut", executor=InlineExecutor(),
                          trial_fn=synthetic_trial)
    assert again.ran == 0 and CALLS == []
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert info["config"]["tuner"] == "bo" and info["config"]["tuner_batch"] == 2
    assert info["tuner"]["n_initial"] == 2 and len(info["trial_ids"]) == 10
    # Another batch size proposes other trials: refused, not mixed.
    with pytest.raises(BenchError, match=r"different configuration \(tuner_batch\)"):
        run_benchmark(dataclasses.replace(_bo_config(), tuner_batch=1), tmp_path / "cut",
                      executor=InlineExecutor(), trial_fn=synthetic_trial)


def test_records_aggregate_and_report_name_the_tuner(tmp_path):
    result = run_benchmark(_bo_config(), tmp_path, executor=InlineExecutor(),
                           trial_fn=synthetic_trial)
    by_study = {}
    for r in result.records:
        assert json.loads((tmp_path / "trials" / f"{r['trial_id']}.json").read_text()) == r
        if r["reached_target"]:
            by_study[r["study"]] = min(by_study.get(r["study"], math.inf),
                                       r["time_to_target_s"])
    assert len(by_study) == 2  # both studies found a configuration that reaches the target
    want = float(np.median(list(by_study.values())))
    assert aggregate(result.records)["adamw"]["click_ctr"] == pytest.approx(want)
    assert summarize(tmp_path)["time"]["cells"]["adamw"]["click_ctr"]["median"] == \
        pytest.approx(want)
    report = write_report(tmp_path, figures=False).read_text()
    assert ("external tuning by Bayesian optimization (5 trials × 2 studies, rounds of 2 "
            "trial(s) per study") in report


def test_halton_config_and_plan_unchanged(tmp_path):
    cfg = BenchConfig(["click_ctr"], ["adamw"], ruleset="external", num_trials=3,
                      num_studies=1, seed=2)
    assert "tuner" not in cfg.to_json() and "tuner_batch" not in cfg.to_json()
    result = run_benchmark(cfg, tmp_path, executor=InlineExecutor(), trial_fn=synthetic_trial)
    from optforge.bench.submission import get_submission

    plan = plan_trials(["click_ctr"], {"adamw": get_submission("adamw")}, external_tuning(3, 1),
                       seed=2)
    assert _hparams(result) == [(t.trial_id, t.hparams, t.seed) for t in plan]
    info = json.loads((tmp_path / "run.json").read_text())
    assert "tuner" not in info and "tuner" not in info["config"]
    assert "(3 Halton trials × 1 studies" in write_report(tmp_path, figures=False).read_text()
    with pytest.raises(BenchError, match=r"different configuration \(tuner, tuner_batch\)"):
        run_benchmark(BenchConfig(["click_ctr"], ["adamw"], num_trials=3, num_studies=1,
                                  seed=2, tuner="bo"), tmp_path, executor=InlineExecutor(),
                      trial_fn=synthetic_trial)


def test_run_benchmark_rejects_bo_with_self_tuning(tmp_path):
    with pytest.raises(BenchError, match=r"--tuner bo applies to --ruleset external only"):
        run_benchmark(BenchConfig(["click_ctr"], ["adamw"], ruleset="self", tuner="bo"),
                      tmp_path)
    assert not (tmp_path / "run.json").exists()


# ---------------------------------------------------------------------------- CLI


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("extra", "want"), [
    ([], ("halton", 1)),
    (["--tuner", "halton", "--jobs", "4"], ("halton", 1)),
    (["--tuner", "bo"], ("bo", 1)),
    (["--tuner", "bo", "--jobs", "3"], ("bo", 3)),
])
def test_cli_tuner_flag(extra, want, monkeypatch, tmp_path):
    import optforge.bench.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_run", lambda args, cfg: seen.update(cfg=cfg) or 0)
    argv = ["bench", "run", "--workloads", "click_ctr", "--submissions", "adamw",
            "--out", str(tmp_path), *extra]
    assert main(argv) == 0
    assert (seen["cfg"].tuner, seen["cfg"].tuner_batch) == want
    if want[0] == "halton":
        # `run` scores by AlgoPerf's protocol unless told otherwise (issue 11)
        want_cfg = BenchConfig(["click_ctr"], ["adamw"], protocol="algoperf")
        assert seen["cfg"].to_json() == want_cfg.to_json()
    else:
        assert seen["cfg"].protocol == "optforge"  # BO is not AlgoPerf's procedure


@pytest.mark.parametrize(("extra", "match", "space"), [
    (["--tuner", "bo", "--ruleset", "self"],
     r"^optforge bench: error: --tuner bo applies to --ruleset external only "
     r"\(got --ruleset self\)$", None),
    (["--tuner", "tpe"], r"argument --tuner: invalid choice: 'tpe'", None),
    (["--tuner", "bo"], r"space for 'adamw' is a list of fixed configurations",
     [{"learning_rate": 1e-3}, {"learning_rate": 1e-2}]),
])
def test_cli_tuner_errors(extra, match, space, capsys, tmp_path):
    argv = ["bench", "run", "--workloads", "click_ctr", "--submissions", "adamw",
            "--out", str(tmp_path / "out"), *extra]
    if space is not None:
        (tmp_path / "space.json").write_text(json.dumps(space))
        argv += ["--search-space", str(tmp_path / "space.json")]
    assert main(argv) == 2
    assert re.search(match, _err_line(capsys))
    assert not (tmp_path / "out" / "run.json").exists()
