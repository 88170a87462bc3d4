"""The ask/tell contract (base.py) and the evaluation loop (run.py).

Identical results inline, on a spawn process pool and on a Dask LocalCluster; failure and timeout
policies; partial and out-of-order tells; bad input.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import time

import numpy as np
import pytest
import torch

from optforge.search import (
    Candidate,
    EvaluationError,
    SearchAlgorithm,
    SerialExecutor,
    run,
)
from optforge.search.base import check_ids, rng_from_state, rng_to_state
from optforge.search.qd import GaussianEmitter, GridArchive, MapElites, sphere_one

D = 6


def make_search(seed: int = 0, batch_size: int = 8) -> MapElites:
    archive = GridArchive(solution_dim=D, dims=(8, 8), ranges=[(-3 * 5.12, 3 * 5.12)] * 2)
    return MapElites(archive, [GaussianEmitter(archive, sigma=0.5, batch_size=batch_size)], seed)


def archive_arrays(search: MapElites) -> dict:
    return search.archive.elites()


def assert_same_archive(a: MapElites, b: MapElites) -> None:
    ea, eb = archive_arrays(a), archive_arrays(b)
    for k in ea:
        np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)


# Module-level objectives so that spawn workers can import them.
def fails_when_first_positive(x):
    if x[0] > 0.3:
        raise ArithmeticError(f"boom at {x[0]:.3f}")
    return sphere_one(x)


def nan_when_first_positive(x):
    obj, meas = sphere_one(x)
    return (float("nan") if x[0] > 0.3 else obj), meas


def sleeps_when_first_positive(x):
    if x[0] > 0.3:
        time.sleep(30.0)
    return sphere_one(x)


def inline_slow_when_first_positive(x):
    if x[0] > 0.3:
        time.sleep(0.05)
    return sphere_one(x)


class CountingSearch(SearchAlgorithm):
    """A minimal algorithm: proposes 0, 1, 2, ... and minimizes; checks the ABC's defaults."""

    maximize = False

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._next = 0
        self._pending: set[int] = set()
        self.told: list[tuple[int, float]] = []

    def ask(self, n=None):
        n = 3 if n is None else n
        out = [Candidate(self._next + k, float(self._next + k)) for k in range(n)]
        self._next += n
        self._pending.update(c.id for c in out)
        return out

    def tell(self, ids, results):
        ids = check_ids(ids, self._pending, results)
        self.told.extend(zip(ids, (float(r) for r in results)))
        self._pending.difference_update(ids)

    def discard(self, ids):
        self._pending.difference_update(check_ids(ids, self._pending))

    @property
    def pending(self):
        return sorted(self._pending)

    def state_dict(self):
        return {"next": self._next}

    def load_state_dict(self, state):
        self._next = state["next"]


def distance_to_seven(x: float) -> float:
    return abs(x - 7.0)


# -- base helpers -----------------------------------------------------------------------------


def test_search_algorithm_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        SearchAlgorithm()  # type: ignore[abstract]


def test_check_ids_errors():
    pending = {0, 1, 2}
    assert check_ids([2, 0], pending) == [2, 0]
    assert check_ids([Candidate(1, None)], pending) == [1]
    with pytest.raises(ValueError, match="id 5 is not pending"):
        check_ids([5], pending)
    with pytest.raises(ValueError, match=r"distinct within one call \(got repeated ids \[1\]\)"):
        check_ids([1, 1], pending)
    with pytest.raises(ValueError, match=r"len\(ids\) = 2 \(got len\(results\) = 1\)"):
        check_ids([0, 1], pending, [0.0])
    with pytest.raises(TypeError, match="ids must be ints"):
        check_ids([0.5], pending)
    with pytest.raises(TypeError, match="ids must be a sequence"):
        check_ids(3, pending)


def test_rng_state_round_trip_weights_only():
    rng = np.random.default_rng(123)
    rng.normal(size=7)
    buf = io.BytesIO()
    torch.save(rng_to_state(rng), buf)
    buf.seek(0)
    restored = rng_from_state(torch.load(buf, weights_only=True))
    np.testing.assert_array_equal(restored.normal(size=5), rng.normal(size=5))


def test_default_objective_of():
    s = CountingSearch()
    assert s.objective_of(2.5) == 2.5
    assert s.objective_of((1.5, [0, 0])) == 1.5
    assert s.objective_of({"objective": 3}) == 3.0
    with pytest.raises(ValueError, match="objective must be finite"):
        s.objective_of(float("nan"))


# -- run: determinism across executors --------------------------------------------------------


def test_run_inline_equals_manual_loop():
    manual = make_search()
    for _ in range(5):
        cands = manual.ask()
        manual.tell([c.id for c in cands], [sphere_one(c.value) for c in cands])
    looped = make_search()
    history = run(looped, sphere_one, budget=40, executor="inline")
    assert_same_archive(manual, looped)
    assert history.n_evaluations == 40 and history.counts["batches"] == 5
    assert [e.id for e in history.evaluations] == list(range(40))
    assert history.best.result[0] == pytest.approx(looped.archive.stats.obj_max)


def test_run_identical_inline_process_pool_and_dask():
    distributed = pytest.importorskip("distributed")
    ref = make_search()
    h_ref = run(ref, sphere_one, budget=50, executor=SerialExecutor())

    pooled = make_search()
    h_pool = run(pooled, sphere_one, budget=50)  # default: spawn process pool
    assert_same_archive(ref, pooled)

    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        dasked = make_search()
        h_dask = run(dasked, sphere_one, budget=50, executor=client.get_executor())
    assert_same_archive(ref, dasked)

    for h in (h_pool, h_dask):
        assert [e.id for e in h.evaluations] == [e.id for e in h_ref.evaluations]
        for a, b in zip(h.evaluations, h_ref.evaluations):
            assert a.result[0] == b.result[0]
            np.testing.assert_array_equal(a.result[1], b.result[1])


def test_run_budget_not_a_multiple_of_the_batch():
    search = make_search(batch_size=8)
    history = run(search, sphere_one, budget=21, executor="inline")
    assert history.n_evaluations == 21
    assert [len([e for e in history.evaluations if e.batch == b]) for b in range(3)] == [8, 8, 5]
    assert search.pending == []  # overshoot of the natural batch is asked, trimmed, discarded
    assert search.num_told == 21


def test_run_batch_size_and_minimizing_history():
    search = CountingSearch()
    history = run(search, distance_to_seven, budget=10, executor="inline", batch_size=4)
    assert [e.id for e in history.evaluations] == list(range(10))
    assert history.counts["batches"] == 3
    assert history.best.id == 7 and history.best.result == 0.0  # maximize = False
    assert [i for i, _ in search.told] == list(range(10))


class _Handle:
    """A foreign future: result()/done() only, not a concurrent.futures.Future."""

    def __init__(self, fn, args):
        self._fn, self._args, self._t = fn, args, time.monotonic()

    def done(self):
        return time.monotonic() - self._t > 0.002

    def result(self, timeout=None):
        return self._fn(*self._args)


class _ForeignExecutor:
    def submit(self, fn, *args):
        return _Handle(fn, args)


def test_run_with_foreign_handles_polls_done():
    ref = make_search()
    run(ref, sphere_one, budget=24, executor="inline")
    other = make_search()
    run(other, sphere_one, budget=24, executor=_ForeignExecutor())
    assert_same_archive(ref, other)


# -- run: failures and timeouts ---------------------------------------------------------------


def test_on_failure_raise_names_the_candidate_and_leaves_nothing_pending():
    search = make_search()
    with pytest.raises(EvaluationError, match=r"evaluation of candidate \d+ failed: Arith") as ei:
        run(search, fails_when_first_positive, budget=40, executor="inline")
    err = ei.value
    assert isinstance(err.__cause__, ArithmeticError)
    bad = [e for e in err.history.evaluations if not e.ok]
    assert err.candidate_id == bad[0].id and bad[0].value[0] > 0.3
    assert search.pending == []
    # The batch's successful results were told before raising.
    assert search.num_told == sum(e.ok for e in err.history.evaluations)


def test_on_failure_discard_records_and_continues():
    search = make_search()
    history = run(
        search, fails_when_first_positive, budget=40, executor="inline", on_failure="discard"
    )
    assert history.n_evaluations == 40
    failed = [e for e in history.evaluations if not e.ok]
    assert failed and all(isinstance(e.error, ArithmeticError) for e in failed)
    assert history.counts["failed"] == len(failed) == 40 - search.num_told
    assert search.pending == []
    assert all(e.value[0] <= 0.3 for e in history.evaluations if e.ok)


def test_non_finite_result_goes_through_the_policy():
    search = make_search()
    history = run(
        search, nan_when_first_positive, budget=24, executor="inline", on_failure="discard"
    )
    failed = [e for e in history.evaluations if not e.ok]
    assert failed and all(isinstance(e.error, ValueError) for e in failed)
    assert all("must be finite" in str(e.error) for e in failed)
    with pytest.raises(EvaluationError, match="must be finite"):
        run(make_search(), nan_when_first_positive, budget=24, executor="inline")


@pytest.mark.slow  # ~18 s; test_run_faults keeps a pool timeout in the default run
def test_timeout_on_own_process_pool_kills_hung_workers():
    search = make_search(batch_size=6)
    history = run(search, sleeps_when_first_positive, budget=12, timeout=4.0, on_failure="discard")
    timed_out = [e for e in history.evaluations if isinstance(e.error, TimeoutError)]
    assert timed_out and history.counts["timed_out"] == len(timed_out)
    assert all(e.wall_time < 15.0 for e in timed_out)  # never waited for a 30 s evaluation
    # Every hung evaluation timed out, alone: fast ones beside or behind it succeed.
    assert all(isinstance(e.error, TimeoutError) for e in history.evaluations if e.value[0] > 0.3)
    assert all(e.ok for e in history.evaluations if e.value[0] <= 0.3)
    assert history.n_evaluations == 12 and search.pending == []


def test_timeout_inline_counts_slow_evaluations():
    search = make_search()
    history = run(
        search,
        inline_slow_when_first_positive,
        budget=16,
        executor="inline",
        timeout=0.02,
        on_failure="discard",
    )
    timed_out = [e for e in history.evaluations if isinstance(e.error, TimeoutError)]
    assert timed_out and all(e.value[0] > 0.3 for e in timed_out)
    with pytest.raises(EvaluationError, match="timed out"):
        run(
            make_search(),
            inline_slow_when_first_positive,
            budget=16,
            executor="inline",
            timeout=0.02,
        )


def test_thread_pool_executor_is_not_shut_down():
    with cf.ThreadPoolExecutor(2) as pool:
        ref = make_search()
        run(ref, sphere_one, budget=16, executor="inline")
        other = make_search()
        run(other, sphere_one, budget=16, executor=pool)
        assert_same_archive(ref, other)
        assert pool.submit(int, "3").result() == 3  # still usable


# -- partial and out-of-order tells -----------------------------------------------------------


def test_partial_out_of_order_tells_equal_one_tell():
    one, parts = make_search(), make_search()
    for _ in range(4):
        c1, c2 = one.ask(), parts.ask()
        assert [c.id for c in c1] == [c.id for c in c2]
        results = {c.id: sphere_one(c.value) for c in c1}
        one.tell(list(results), list(results.values()))
        ids = [c.id for c in c2][::-1]
        parts.tell(ids[:3], [results[i] for i in ids[:3]])
        assert parts.pending == sorted(ids[3:])
        parts.tell(ids[3:], [results[i] for i in ids[3:]])
    # Told in increasing-id order within each tell, so within-batch ties can differ only if two
    # rows of different tells tie exactly; with continuous objectives they never do.
    assert_same_archive(one, parts)


def test_two_asks_before_a_tell_and_discard():
    search = make_search()
    a, b = search.ask(), search.ask(3)
    assert [c.id for c in a] == list(range(8)) and [c.id for c in b] == [8, 9, 10]
    search.tell([c.id for c in b], [sphere_one(c.value) for c in b])
    search.discard([c.id for c in a[:4]])
    assert search.pending == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="id 0 is not pending"):
        search.tell([0], [sphere_one(a[0].value)])
    with pytest.raises(ValueError, match="id 8 is not pending"):
        search.discard([8])


def test_bad_tell_leaves_state_untouched():
    search = make_search()
    cands = search.ask()
    good = [sphere_one(c.value) for c in cands]
    before = search.state_dict()
    bad_cases = [
        ([c.id for c in cands[:2]] + [99], good[:3], "id 99 is not pending"),
        ([c.id for c in cands[:2]], [good[0], (float("inf"), good[1][1])], "must be finite"),
        ([c.id for c in cands[:2]], [good[0], (1.0, [0.0, np.nan])], "must be finite"),
        ([c.id for c in cands[:2]], [good[0], (1.0, [0.0, 1.0, 2.0])], r"shape \(2,\)"),
        ([c.id for c in cands[:2]], [good[0], 1.0], "must be a pair"),
        ([c.id for c in cands[:2]], [good[0]], "one entry per id"),
    ]
    for ids, results, msg in bad_cases:
        with pytest.raises(ValueError, match=msg):
            search.tell(ids, results)
    after = search.state_dict()
    assert search.pending == [c.id for c in cands]
    assert len(search.archive) == 0
    torch.testing.assert_close(after["pending_solutions"], before["pending_solutions"])


# -- bad arguments to run ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"budget": 0}, ValueError, r"budget must be >= 1 \(got 0\)"),
        ({"budget": 2.5}, TypeError, "budget must be an int"),
        ({"batch_size": 0}, ValueError, r"batch_size must be >= 1 \(got 0\)"),
        ({"timeout": -1.0}, ValueError, r"timeout must be > 0 \(got -1.0\)"),
        ({"on_failure": "retry"}, ValueError, r"on_failure must be one of .* \(got 'retry'\)"),
        ({"executor": "dask"}, ValueError, "executor must be None, 'inline' or an executor"),
        ({"executor": object()}, TypeError, r"executor must have a submit\(\) method"),
    ],
)
def test_run_bad_arguments(kwargs, exc, msg):
    args = {"budget": 4, "executor": "inline", **kwargs}
    with pytest.raises(exc, match=msg):
        run(make_search(), sphere_one, **args)


def test_run_bad_algorithm_and_objective():
    with pytest.raises(TypeError, match="algorithm must be a SearchAlgorithm"):
        run(object(), sphere_one, budget=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="objective must be callable"):
        run(make_search(), 3, budget=1)  # type: ignore[arg-type]
