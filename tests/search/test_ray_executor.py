"""run() on a local Ray (``ray.init(num_cpus=2)``): same search as inline and as the default
process pool for the same seed; a failing or dying task fails only its candidate."""

from __future__ import annotations

import os

import numpy as np
import pytest

from optforge.search import RayExecutor, run
from optforge.search.qd import GaussianEmitter, GridArchive, MapElites, sphere_one

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def make_search() -> MapElites:
    archive = GridArchive(solution_dim=6, dims=(8, 8), ranges=[(-15.36, 15.36)] * 2)
    return MapElites(archive, [GaussianEmitter(archive, sigma=0.5, batch_size=4)], seed=0)


def dies_or_fails_when_first_positive(x):
    if x[0] > 0.62:
        os._exit(3)
    if x[0] > 0.3:
        raise ArithmeticError("boom")
    return sphere_one(x)


def test_ray_needs_ray_init():
    if ray.is_initialized():
        pytest.skip("Ray already running in this process")
    with pytest.raises(RuntimeError, match="ray.init"):
        RayExecutor()


@pytest.mark.parametrize("reference", ["inline", "process pool"])
def test_ray_gives_the_same_search_as_inline_and_the_process_pool(local_ray, reference):
    ref = make_search()
    executor = "inline" if reference == "inline" else None  # None: run's own spawn pool
    h_ref = run(ref, sphere_one, budget=12, executor=executor)
    other = make_search()
    h_ray = run(other, sphere_one, budget=12, executor=RayExecutor())
    assert [e.id for e in h_ray.evaluations] == [e.id for e in h_ref.evaluations]
    for a, b in zip(h_ray.evaluations, h_ref.evaluations):
        assert a.ok and a.result[0] == b.result[0]
        np.testing.assert_array_equal(a.result[1], b.result[1])
    ea, eb = ref.archive.elites(), other.archive.elites()
    for k in ea:
        np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)


def test_ray_failures_and_dead_workers_fail_only_their_candidate(local_ray):
    search = make_search()
    history = run(
        search,
        dies_or_fails_when_first_positive,
        budget=12,
        executor=RayExecutor(),
        on_failure="discard",
    )
    assert history.n_evaluations == 12 and search.pending == []
    for e in history.evaluations:
        assert e.ok == (e.value[0] <= 0.3), (e.id, e.value[0], e.error)
    kinds = {type(e.error).__name__ for e in history.evaluations if not e.ok}
    assert any(e.value[0] > 0.62 for e in history.evaluations), "the seed must kill a worker"
    assert any("Crash" in k or "Died" in k or "Worker" in k for k in kinds), kinds
