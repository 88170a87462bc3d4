"""Orchestration: planning, records, resume, executors (local pool and a Dask LocalCluster)."""

from __future__ import annotations

import json
import os

import pytest

from optforge.bench.rulesets import external_tuning, plan_trials, self_tuning
from optforge.bench.study import (
    BenchConfig,
    BenchError,
    InlineExecutor,
    available_cores,
    default_executor,
    run_benchmark,
    run_trials,
)

CALLS: list[str] = []


class _Sub:
    def __init__(self, space, defaults):
        self.search_space, self.default_hparams = space, defaults


SUBS = {
    "x": _Sub({"lr": {"min": 1e-3, "max": 1e-1, "scaling": "log"}}, {"lr": 0.01, "wd": 0.1}),
    "y": _Sub({"lr": {"min": 0.1, "max": 1.0, "scaling": "linear"}}, {"lr": 0.5}),
}


def fake_trial(spec):
    """Deterministic stand-in for run_trial: 'reaches' the target after 100 / lr steps."""
    CALLS.append(f"{spec.workload}/{spec.submission}/{spec.seed}")
    if spec.hparams.get("boom"):
        raise ValueError("boom")
    steps = int(100 / spec.hparams["lr"])
    return {"workload": spec.workload, "submission": spec.submission,
            "hparams": spec.hparams, "seed": spec.seed, "status": "ok",
            "reached_target": True, "time_to_target_s": steps / 1000,
            "steps_to_target": steps, "curve": [], "torch_threads": spec.torch_threads,
            "pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")}


def interrupting_trial(spec):
    if len(CALLS) == 3:
        raise KeyboardInterrupt
    return fake_trial(spec)


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def test_plan_external_and_self():
    plan = plan_trials(["w1", "w2"], SUBS, external_tuning(2, 3), seed=5)
    assert len(plan) == 2 * 2 * 2 * 3
    assert len({t.trial_id for t in plan}) == len(plan)
    x = [t for t in plan if t.submission == "x" and t.workload == "w1"]
    assert {(t.study, t.trial) for t in x} == {(j, i) for j in range(3) for i in range(2)}
    assert len({t.hparams["lr"] for t in x}) == 6  # 6 distinct Halton draws
    assert all(t.hparams["wd"] == 0.1 for t in x)  # defaults fill what the space leaves out
    # Same (study, trial) slot -> same seed and configuration on every workload.
    w2 = {(t.study, t.trial): t for t in plan if t.submission == "x" and t.workload == "w2"}
    assert all(w2[(t.study, t.trial)].hparams == t.hparams for t in x)
    assert all(w2[(t.study, t.trial)].seed == t.seed for t in x)
    assert plan == plan_trials(["w1", "w2"], SUBS, external_tuning(2, 3), seed=5)
    assert plan != plan_trials(["w1", "w2"], SUBS, external_tuning(2, 3), seed=6)

    st = plan_trials(["w1"], SUBS, self_tuning(3))
    assert [(t.submission, t.study, t.hparams, t.budget_scale) for t in st] == [
        ("x", j, {"lr": 0.01, "wd": 0.1}, 1.5) for j in range(3)
    ] + [("y", j, {"lr": 0.5}, 1.5) for j in range(3)]
    assert len({t.seed for t in st if t.submission == "x"}) == 3  # studies differ by seed
    with pytest.raises(ValueError, match=r"submission 'z' has no search space"):
        plan_trials(["w1"], {"z": _Sub({}, {})}, external_tuning(1, 1))


def test_resume_skips_recorded_trials(tmp_path):
    plan = plan_trials(["w1", "w2"], SUBS, self_tuning(2))  # 8 trials
    with pytest.raises(KeyboardInterrupt):
        run_trials(plan, tmp_path, executor=InlineExecutor(), trial_fn=interrupting_trial)
    assert len(CALLS) == 3
    assert len(list((tmp_path / "trials").glob("*.json"))) == 3
    CALLS.clear()
    records, ran = run_trials(plan, tmp_path, executor=InlineExecutor(), trial_fn=fake_trial)
    assert ran == 5 and len(CALLS) == 5  # only the missing ones ran
    assert [r["trial_id"] for r in records] == [t.trial_id for t in plan]
    CALLS.clear()
    _, ran = run_trials(plan, tmp_path, executor=InlineExecutor(), trial_fn=fake_trial)
    assert ran == 0 and CALLS == []
    rec = json.loads((tmp_path / "trials" / f"{plan[0].trial_id}.json").read_text())
    assert rec["study"] == plan[0].study and rec["steps_to_target"] == 10000


def test_resume_refuses_records_of_another_plan(tmp_path):
    plan = plan_trials(["w1"], SUBS, external_tuning(2, 1), seed=0)
    run_trials(plan, tmp_path, executor=InlineExecutor(), trial_fn=fake_trial)
    other = plan_trials(["w1"], SUBS, external_tuning(2, 1), seed=1)
    with pytest.raises(BenchError, match=r"was recorded with hparams=.*use a fresh --out"):
        run_trials(other, tmp_path, executor=InlineExecutor(), trial_fn=fake_trial)


def test_failing_trial_is_recorded_as_error_and_not_rerun(tmp_path):
    subs = {"x": _Sub({}, {"lr": 1.0, "boom": True})}
    plan = plan_trials(["w1"], subs, self_tuning(1))
    records, _ = run_trials(plan, tmp_path, executor=InlineExecutor(), trial_fn=fake_trial)
    assert records[0]["status"] == "error" and records[0]["error"] == "ValueError: boom"
    assert records[0]["reached_target"] is False
    CALLS.clear()
    run_trials(plan, tmp_path, executor=InlineExecutor(), trial_fn=fake_trial)
    assert CALLS == []


def test_default_executor_never_exceeds_cores():
    cores = available_cores()
    for jobs, threads, want in [(None, 1, cores), (10 * cores, 1, cores), (1, 1, 1),
                                (None, 2 * cores, 1)]:
        ex = default_executor(jobs, threads)
        try:
            assert ex._max_workers == want
        finally:
            ex.shutdown()


def test_local_process_pool_pins_threads(tmp_path):
    plan = plan_trials(["w1", "w2"], SUBS, self_tuning(1))
    records, ran = run_trials(plan, tmp_path, jobs=2, trial_fn=fake_trial)
    assert ran == 4
    assert {r["omp"] for r in records} == {"1"}
    assert len({r["pid"] for r in records} - {os.getpid()}) <= min(2, available_cores())
    assert os.getpid() not in {r["pid"] for r in records}


def test_run_benchmark_unknown_names_and_config_change(tmp_path):
    with pytest.raises(BenchError, match=r"unknown workload 'nope' \(known: .*digits_cnn"):
        run_benchmark(BenchConfig(["nope"], ["adamw"]), tmp_path)
    with pytest.raises(BenchError, match=r"unknown submission 'nope' \(known: .*adamw"):
        run_benchmark(BenchConfig(["click_ctr"], ["nope"]), tmp_path)
    cfg = BenchConfig(["click_ctr"], ["adamw"], ruleset="self", num_studies=1, max_steps=2)
    run_benchmark(cfg, tmp_path, executor=InlineExecutor(), trial_fn=fake_trial_lr)
    cfg2 = BenchConfig(["click_ctr"], ["adamw"], ruleset="self", num_studies=1, max_steps=3)
    with pytest.raises(BenchError, match=r"holds a run with a different configuration "
                                         r"\(max_steps\)"):
        run_benchmark(cfg2, tmp_path, executor=InlineExecutor(), trial_fn=fake_trial_lr)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["workloads"]["click_ctr"]["metric_name"] == "logloss"
    assert info["sessions"][0]["torch_threads_per_trial"] == 1
    assert info["sessions"][0]["concurrent_trials"] == 1
    assert len(info["sessions"][0]["load_avg_end"]) == 3


def fake_trial_lr(spec):
    return fake_trial(type(spec)(**{**spec.__dict__, "hparams": {"lr": 1.0}}))


def _tiny_config():
    # Two quick workloads, two submissions, 2 trials x 1 study of external tuning, 12 steps.
    return BenchConfig(["click_ctr", "illcond_regression"], ["adamw", "lion"],
                       ruleset="external", num_trials=2, num_studies=1, seed=3, max_steps=12)


def _deterministic_part(records):
    keys = ("trial_id", "hparams", "seed", "status", "steps", "steps_to_target",
            "final_metric", "best_metric", "data_hash", "torch_threads")
    return [({k: r.get(k) for k in keys}, [(p["step"], p["metric"], p["train_loss"])
                                           for p in r["curve"]]) for r in records]


@pytest.mark.slow  # ~17 s; test_executors keeps a real Dask cluster in the default run
def test_dask_local_cluster_matches_local_pool(tmp_path):
    distributed = pytest.importorskip("distributed")
    local = run_benchmark(_tiny_config(), tmp_path / "local", jobs=2)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        dask = run_benchmark(_tiny_config(), tmp_path / "dask", executor=client.get_executor())
    assert [r["status"] for r in local.records] == ["ok"] * 8
    assert _deterministic_part(local.records) == _deterministic_part(dask.records)
    info = json.loads((tmp_path / "dask" / "run.json").read_text())
    assert info["sessions"][0]["executor"] == "dask distributed"
    assert info["sessions"][0]["concurrent_trials"] == 2
