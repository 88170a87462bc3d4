"""--executor from the command line: a running Dask scheduler and Ray, for real, on loopback.

Each gives the same trial records as the local process pool for the same seed (everything but
the measured times).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from optforge.__main__ import main
from optforge.bench.executors import parse_executor

# Two trials (one per worker), different configurations; test_study covers more trials on Dask.
# Evaluations by steps (``--protocol optforge``): AlgoPerf's time-based cadence would put the
# curve's points where a loaded machine's clock says, and the records would differ by executor.
ARGV = ["bench", "run", "--workloads", "click_ctr", "--submissions", "adamw,lion",
        "--ruleset", "external", "--trials", "1", "--studies", "1", "--seed", "3",
        "--max-steps", "12", "--protocol", "optforge", "--no-progress"]
KEYS = ("trial_id", "hparams", "hparams_used", "seed", "status", "steps", "stop_reason",
        "steps_to_target", "final_metric", "best_metric", "data_hash", "torch_threads")


def _records(out):
    recs = [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*.json"))]
    return [({k: r.get(k) for k in KEYS}, [(p["step"], p["metric"], p["train_loss"])
                                           for p in r["curve"]]) for r in recs]


@pytest.fixture(scope="module")
def local_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    assert main([*ARGV, "--jobs", "2", "--out", str(out)]) == 0
    recs = _records(out)
    assert len(recs) == 2 and {r[0]["status"] for r in recs} == {"ok"}
    return recs


def _session(out):
    return json.loads((out / "run.json").read_text())["sessions"][-1]


def test_dask_scheduler_address(local_records, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        rc = main([*ARGV, "--executor", f"dask:{cluster.scheduler_address}",
                   "--out", str(tmp_path / "dask")])
    assert rc == 0
    assert _records(tmp_path / "dask") == local_records
    s = _session(tmp_path / "dask")
    assert (s["executor"], s["concurrent_trials"]) == ("dask distributed", 2)


def test_ray_on_this_machine(local_records, tmp_path):
    ray = pytest.importorskip("ray")
    rc = main([*ARGV, "--executor", "ray", "--jobs", "2", "--out", str(tmp_path / "ray")])
    assert rc == 0 and not ray.is_initialized()  # shut down after the run
    assert _records(tmp_path / "ray") == local_records
    s = _session(tmp_path / "ray")
    assert (s["executor"], s["concurrent_trials"]) == ("ray", 2)


@pytest.mark.slow  # a second Ray start (20-60 s on a loaded 2-core machine)
def test_ray_cluster_address(local_records, tmp_path):
    pytest.importorskip("ray")
    # A running cluster, started by another driver that stays until told to stop cleanly.
    head = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ctx = ray.init(num_cpus=2, "
         "include_dashboard=False); print(ctx.address_info['address'], flush=True); "
         "sys.stdin.readline(); ray.shutdown()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = head.stdout.readline().strip()
        # The head's ray.init() turned token authentication on (Ray 2.59+); a driver that
        # connects by address sends the token (~/.ray/auth_token) only in token mode, read when
        # Ray is imported: so the CLI runs as a user would start it, in its own process.
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        rc = subprocess.run(
            [sys.executable, "-m", "optforge", *ARGV, "--executor", f"ray:{address}",
             "--out", str(tmp_path / "ray")], env=env, timeout=600).returncode
    finally:
        head.communicate("stop\n", timeout=120)
    assert rc == 0
    assert _records(tmp_path / "ray") == local_records


@pytest.mark.parametrize(
    ("value", "match"),
    [("spark", r"--executor must be local, dask:ADDRESS, ray or ray:ADDRESS \(got 'spark'\)"),
     ("dask", r"got 'dask'"), ("ray:", r"ray:ADDRESS needs an address")],
)
def test_bad_executor_exit_2(value, match, tmp_path, capsys):
    import re

    assert main([*ARGV, "--executor", value, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(match, err), err
    with pytest.raises(ValueError):
        parse_executor(value)


def test_unreachable_ray_cluster_says_how_to_connect_with_a_token(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray")

    def refused(*args, **kwargs):  # what ray.init raises for a cluster it cannot join
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379")

    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert main([*ARGV, "--executor", "ray:10.0.0.9:6379", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray cluster at 10.0.0.9:6379" in err and "RAY_AUTH_MODE=token" in err
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # set already: no hint
    assert main([*ARGV, "--executor", "ray:10.0.0.9:6379", "--out", str(tmp_path / "p")]) == 2
    assert "RAY_AUTH_MODE" not in capsys.readouterr().err


def test_unreachable_dask_scheduler_exit_2(tmp_path, capsys):
    pytest.importorskip("distributed")
    rc = main([*ARGV, "--executor", "dask:tcp://127.0.0.1:9", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err, err
