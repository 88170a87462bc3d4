"""run() on its own process pool under faults: slow start-up, hung, dying and exiting workers.

Each case failed before the pool reported start times and isolated faults: a timeout counted
worker start-up (every fast evaluation timed out), a hung candidate took its whole batch with it,
``os._exit`` in a worker escaped as ``BrokenProcessPool`` and ``sys.exit`` as ``SystemExit``.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from optforge.search import EvaluationError, run
from optforge.search.local_pool import WorkerDied
from optforge.search.qd import GaussianEmitter, GridArchive, MapElites, sphere_one


def make_search() -> MapElites:
    archive = GridArchive(solution_dim=6, dims=(8, 8), ranges=[(-15.36, 15.36)] * 2)
    return MapElites(archive, [GaussianEmitter(archive, sigma=0.5, batch_size=4)], seed=0)


# Module level so that spawn workers can import them. Candidate values are seeded, so the same
# candidates misbehave in every run.
def dies_when_first_positive(x):
    if x[0] > 0.3:
        os._exit(3)
    return sphere_one(x)


def exits_when_first_positive(x):
    if x[0] > 0.3:
        sys.exit(2)
    return sphere_one(x)


def hangs_when_first_positive(x):
    if x[0] > 0.3:
        time.sleep(60.0)
    return sphere_one(x)


def reference_history(budget: int) -> dict[int, tuple]:
    history = run(make_search(), sphere_one, budget=budget, executor="inline")
    return {e.id: (e.value, e.result) for e in history.evaluations}


def assert_only_bad_candidates_failed(history, error_type, budget: int) -> None:
    ref = reference_history(budget)
    assert any(v[0] > 0.3 for v, _ in ref.values()), "the seed must draw a bad candidate"
    assert history.n_evaluations == budget
    for e in history.evaluations:
        if e.value[0] > 0.3:
            assert isinstance(e.error, error_type), (e.id, e.error)
        else:
            assert e.ok, (e.id, e.error)
            assert e.result[0] == ref[e.id][1][0]


def test_hung_candidate_times_out_alone_and_the_pool_recovers():
    # Spawning workers and importing torch takes seconds on 2 cores; the clock starts with each
    # evaluation, so the fast candidates of every batch, before and after a timeout, succeed.
    search = make_search()
    history = run(search, hangs_when_first_positive, budget=8, timeout=2.0, on_failure="discard")
    assert_only_bad_candidates_failed(history, TimeoutError, 8)
    # Each timed out about `timeout` after its start: never waited for a 60 s evaluation.
    assert all(e.wall_time < 10.0 for e in history.evaluations if not e.ok)
    assert search.pending == []


def test_dying_worker_fails_only_its_candidate_under_discard():
    search = make_search()
    history = run(search, dies_when_first_positive, budget=8, on_failure="discard")
    assert_only_bad_candidates_failed(history, WorkerDied, 8)
    assert search.pending == []
    assert search.num_told == history.n_succeeded


def test_dying_worker_under_raise_names_the_candidate_and_keeps_the_batch(capfd):
    search = make_search()
    with pytest.raises(EvaluationError, match=r"candidate (\d+) failed: WorkerDied") as ei:
        run(search, dies_when_first_positive, budget=8)
    err = ei.value
    died = [e for e in err.history.evaluations if not e.ok]
    assert [e.id for e in died] == [err.candidate_id] and died[0].value[0] > 0.3
    good = [e for e in err.history.evaluations if e.ok]
    assert len(good) == 3 and search.num_told == 3 and search.pending == []
    assert "InvalidStateError" not in capfd.readouterr().err


def test_system_exit_in_a_worker_goes_through_the_policy():
    search = make_search()
    history = run(search, exits_when_first_positive, budget=8, on_failure="discard")
    assert_only_bad_candidates_failed(history, SystemExit, 8)
    assert search.pending == []


def test_system_exit_inline_goes_through_the_policy():
    history = run(
        make_search(), exits_when_first_positive, budget=8, executor="inline", on_failure="discard"
    )
    assert_only_bad_candidates_failed(history, SystemExit, 8)


def test_rejected_result_names_the_real_candidate_id():
    def bad_objective_for_first_positive(x):
        obj, meas = sphere_one(x)
        return ("1.0" if x[0] > 0.3 else obj), meas

    with pytest.raises(EvaluationError) as ei:
        run(make_search(), bad_objective_for_first_positive, budget=8, executor="inline")
    err = ei.value
    assert f"candidate {err.candidate_id}" in str(err.__cause__)
    assert "-1" not in str(err) and "-1" not in str(err.__cause__)
