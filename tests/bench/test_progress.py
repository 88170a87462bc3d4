"""The progress bar moves with the running trials' steps, before any trial ends."""

from __future__ import annotations

import concurrent.futures as cf
import time

from optforge.bench import trial as trial_mod
from optforge.bench.progress import StepFile, read_fraction
from optforge.bench.rulesets import plan_trials, self_tuning
from optforge.bench.study import run_trials
from optforge.bench.submission import get_submission


def test_step_file_round_trip(tmp_path):
    f = StepFile(tmp_path / "t", period_s=60.0)
    f(1, 8)
    f(2, 8)  # within the period: not written
    assert read_fraction(tmp_path / "t") == 1 / 8
    f(8, 8)  # the last step is always written
    assert read_fraction(tmp_path / "t") == 1.0
    assert read_fraction(tmp_path / "missing") == 0.0


def test_bar_shows_steps_of_a_running_trial(tmp_path, monkeypatch, capsys):
    real = trial_mod.run_trial

    def slow_trial(spec, clock=time.perf_counter, progress=None):
        progress(5, 10)  # half-way, then a long step
        time.sleep(1.5)
        return real(spec, clock, progress)

    monkeypatch.setattr(trial_mod, "run_trial", slow_trial)
    plan = plan_trials(["click_ctr"], {"adamw": get_submission("adamw")}, self_tuning(1),
                       max_steps=2)
    with cf.ThreadPoolExecutor(1) as ex:
        records, ran = run_trials(plan, tmp_path, executor=ex, progress=True)
    assert ran == 1 and records[0]["steps"] == 2
    err = capsys.readouterr().err
    assert "0.5/1" in err  # the bar stood at half a trial while the trial ran
    assert not list((tmp_path / ".progress").iterdir())  # finished trials leave no file
