"""The BO suite's paired mode: optforge can start from the points Optuna's GPSampler starts from.

Issue 13 compared optforge's GP loop with Optuna's GPSampler, but each library used its own
start-up design (scrambled Sobol against random), so a difference in regret mixed the design
with the model loop. ``--startup optuna`` removes the first; these tests hold it to that.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

optuna = pytest.importorskip("optuna")

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "search_bo_suite.py"


@pytest.fixture(scope="module")
def suite():
    threads = torch.get_num_threads()
    try:  # the script pins torch to one thread at import; leave the test process as it was
        spec = importlib.util.spec_from_file_location("search_bo_suite", _SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        torch.set_num_threads(threads)
    return module


@pytest.mark.parametrize("problem", ["hartmann-3d", "mixed-styblinski-tang-7d"])
def test_optuna_startup_is_what_gpsampler_evaluates_first(suite, problem) -> None:
    dims, obj, _ = suite.PROBLEMS[problem]
    expected = suite.optuna_startup(dims, seed=3)
    stepper = suite._OptunaStepper(dims, seed=3)
    for params in expected:  # real objective values: the start-up must not depend on them
        token, got = stepper.ask()
        assert got == params
        stepper.tell(token, obj(got))


def test_paired_jobs_share_the_startup_points_then_optforge_models(suite) -> None:
    res = suite.run_job("branin-2d", 1, 10, ["optforge", "optuna"], {}, startup="optuna")
    np.testing.assert_array_equal(res["optforge"]["regret"], res["optuna"]["regret"])
    own = suite.run_job("branin-2d", 1, 10, ["optforge", "optuna"], {}, startup="own")
    assert own["optforge"]["regret"] != own["optuna"]["regret"]  # Sobol is not Optuna's design
    dims, _, _ = suite.PROBLEMS["branin-2d"]
    stepper = suite._OptforgeStepper(dims, 1, {}, suite.optuna_startup(dims, 1))
    for _ in range(10):
        token, params = stepper.ask()
        stepper.tell(token, float(sum(params.values())))
    assert stepper.bo.n_observations == 10 and not stepper.startup
    token, _ = stepper.ask()  # the 11th point comes from the model, told as a candidate
    assert isinstance(token, int) and stepper.bo.pending == [token]
