"""A batch-synchronous evaluation loop over any ``concurrent.futures``-style executor.

:func:`run` asks a batch, submits ``objective(candidate.value)`` for each candidate, waits for the
batch, and tells the results in id order. Because the algorithm sees the same results in the same
order whatever evaluated them, a deterministic objective gives identical runs inline, on a local
process pool, or on a Dask cluster (``distributed.Client(...).get_executor()``). There is no
cluster code here: any object with ``submit(fn, *args) -> concurrent.futures.Future`` works.

Example::

    from optforge.search import run
    history = run(search, sphere, budget=10_000, executor="inline")
    history.best.result, history.n_failed
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optforge._validation import check_int, check_positive
from optforge.search.base import Candidate, SearchAlgorithm
from optforge.search.local_pool import LocalPool

__all__ = ["EvaluationError", "Evaluation", "SearchHistory", "SerialExecutor", "run"]

_POLICIES = ("raise", "discard")


class EvaluationError(RuntimeError):
    """An evaluation failed (raised, timed out, or returned a result ``tell`` rejects).

    Attributes:
        candidate_id: the id of the first failed candidate of the batch.
        history: the :class:`SearchHistory` up to and including the failing batch.
    """

    def __init__(self, message: str, candidate_id: int, history: SearchHistory):
        super().__init__(message)
        self.candidate_id = candidate_id
        self.history = history


class SerialExecutor(cf.Executor):
    """Evaluates in the calling process at ``submit`` time (``executor="inline"``).

    An inline evaluation cannot be interrupted: with a ``timeout``, one that ran longer than the
    timeout is reported as timed out once it returns, so the failure policy matches a pool's.
    """

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, as a pool would
            future.set_exception(exc)
        return future


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the candidate, its result or error, and its wall time (seconds).

    ``wall_time`` is measured around the objective call where it ran (inside the worker); for an
    evaluation that failed or timed out it is the time the driver waited for it.
    """

    id: int
    value: Any
    result: Any = None
    error: BaseException | None = None
    wall_time: float = 0.0
    batch: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class SearchHistory:
    """All evaluations of a :func:`run`, in id order within each batch.

    Attributes:
        evaluations: every :class:`Evaluation`, failed ones included.
        maximize: the algorithm's direction, used by :attr:`best`.
    """

    evaluations: list[Evaluation] = field(default_factory=list)
    maximize: bool = True
    objective_of: Callable[[Any], float] | None = None

    @property
    def n_evaluations(self) -> int:
        return len(self.evaluations)

    @property
    def n_failed(self) -> int:
        return sum(1 for e in self.evaluations if not e.ok)

    @property
    def n_succeeded(self) -> int:
        return self.n_evaluations - self.n_failed

    @property
    def counts(self) -> dict[str, int]:
        """``{"evaluations", "succeeded", "failed", "timed_out", "batches"}``."""
        timed_out = sum(1 for e in self.evaluations if isinstance(e.error, TimeoutError))
        batches = len({e.batch for e in self.evaluations})
        return {
            "evaluations": self.n_evaluations,
            "succeeded": self.n_succeeded,
            "failed": self.n_failed,
            "timed_out": timed_out,
            "batches": batches,
        }

    def objectives(self) -> list[float]:
        """The objective of each successful evaluation, in order."""
        return [self._objective(e.result) for e in self.evaluations if e.ok]

    @property
    def best(self) -> Evaluation | None:
        """The successful evaluation with the best objective (first one on ties), or ``None``."""
        best, best_f = None, -math.inf
        sign = 1.0 if self.maximize else -1.0
        for e in self.evaluations:
            if e.ok:
                f = sign * self._objective(e.result)
                if f > best_f:
                    best, best_f = e, f
        return best

    def _objective(self, result: Any) -> float:
        if self.objective_of is not None:
            return self.objective_of(result)
        return float(result[0] if isinstance(result, (tuple, list)) else result)


def _timed_call(objective: Callable[[Any], Any], value: Any) -> tuple[Any, float]:
    # Module level so that it pickles; times the objective where it runs, not the queueing.
    start = time.perf_counter()
    result = objective(value)
    return result, time.perf_counter() - start


def run(
    algorithm: SearchAlgorithm,
    objective: Callable[[Any], Any],
    budget: int,
    executor: Any = None,
    *,
    batch_size: int | None = None,
    timeout: float | None = None,
    on_failure: str = "raise",
) -> SearchHistory:
    """Run ``algorithm`` for ``budget`` evaluations of ``objective``, batch by batch.

    Each batch is ``algorithm.ask(batch_size)`` (the algorithm's natural batch when ``None``,
    trimmed to the remaining budget), evaluated concurrently, then told in id order.

    Args:
        algorithm: any :class:`SearchAlgorithm`.
        objective: ``objective(candidate.value) -> result`` (the type ``tell`` documents). With a
            process pool or a cluster it must pickle (a module-level function).
        budget: number of evaluations (failed ones count), >= 1.
        executor: ``None`` (default): a local ``ProcessPoolExecutor`` with the ``spawn`` context
            and ``min(os.cpu_count(), batch)`` workers, shut down at the end; ``"inline"``: in this
            process (:class:`SerialExecutor`); or any object with ``submit(fn, *args)`` returning a
            ``concurrent.futures.Future``, e.g. ``distributed.Client(...).get_executor()``. An
            executor you pass is not shut down.
        batch_size: candidates per batch (>= 1); ``None`` for the algorithm's natural batch.
        timeout: seconds to wait for each batch (> 0); evaluations unfinished by then fail with
            ``TimeoutError``. ``None`` waits forever.
        on_failure: ``"raise"`` (default): after telling the batch's successful results and
            discarding its failures, raise :class:`EvaluationError` naming the first failed id.
            ``"discard"``: ``algorithm.discard`` the failed ids, record the failure in the history
            and go on.

    Returns:
        A :class:`SearchHistory`.
    """
    if not isinstance(algorithm, SearchAlgorithm):
        raise TypeError(f"algorithm must be a SearchAlgorithm (got {type(algorithm).__name__})")
    if not callable(objective):
        raise TypeError(f"objective must be callable (got {type(objective).__name__})")
    check_int("budget", budget, low=1)
    if batch_size is not None:
        check_int("batch_size", batch_size, low=1)
    if timeout is not None:
        check_positive("timeout", timeout)
    if on_failure not in _POLICIES:
        raise ValueError(f"on_failure must be one of {_POLICIES} (got {on_failure!r})")
    if isinstance(executor, str) and executor != "inline":
        raise ValueError(f"executor must be None, 'inline' or an executor (got {executor!r})")
    if executor is not None and not isinstance(executor, str) and not hasattr(executor, "submit"):
        raise TypeError(f"executor must have a submit() method (got {type(executor).__name__})")

    inline = executor == "inline" or isinstance(executor, SerialExecutor)
    if executor == "inline":
        executor = SerialExecutor()
    own_pool: LocalPool | None = None
    history = SearchHistory(
        maximize=bool(getattr(algorithm, "maximize", True)), objective_of=algorithm.objective_of
    )
    natural: int | None = None
    done = 0
    batch_index = 0
    try:
        while done < budget:
            remaining = budget - done
            if batch_size is not None:
                n = min(batch_size, remaining)
            elif natural is not None and natural > remaining:
                n = remaining
            else:
                n = None
            candidates = list(algorithm.ask(n))
            if not candidates:
                raise RuntimeError(f"{type(algorithm).__name__}.ask({n}) returned no candidates")
            if n is None:
                natural = len(candidates)
            if len(candidates) > remaining:
                # The natural batch overshoots the budget: evaluate a prefix, forget the rest.
                algorithm.discard([c.id for c in candidates[remaining:]])
                candidates = candidates[:remaining]
            candidates.sort(key=lambda c: c.id)

            if executor is None and own_pool is None:
                own_pool = LocalPool(min(os.cpu_count() or 1, len(candidates)))
            if own_pool is not None:
                evaluations = _evaluate_on_pool(
                    own_pool, objective, candidates, timeout, batch_index
                )
            else:
                evaluations = _evaluate_batch(
                    executor, objective, candidates, timeout, inline, batch_index
                )

            # Results tell() would reject are failures too, so one NaN does not sink the batch.
            checked = []
            for e in evaluations:
                if e.ok:
                    try:
                        algorithm.check_result(e.result)
                    except (ValueError, TypeError) as exc:
                        named = type(exc)(f"result of candidate {e.id} rejected: {exc}")
                        named.__cause__ = exc
                        e = Evaluation(e.id, e.value, e.result, named, e.wall_time, e.batch)
                checked.append(e)
            evaluations = checked

            good = [e for e in evaluations if e.ok]
            bad = [e for e in evaluations if not e.ok]
            if good:
                algorithm.tell([e.id for e in good], [e.result for e in good])
            if bad:
                algorithm.discard([e.id for e in bad])
            history.evaluations.extend(evaluations)
            done += len(evaluations)
            batch_index += 1
            if bad and on_failure == "raise":
                first = bad[0]
                kind = "timed out" if isinstance(first.error, TimeoutError) else "failed"
                raise EvaluationError(
                    f"evaluation of candidate {first.id} {kind}: "
                    f"{type(first.error).__name__}: {first.error} "
                    f"({len(bad)} of {len(evaluations)} failed in batch {first.batch}; "
                    f"pass on_failure='discard' to continue past failures)",
                    first.id,
                    history,
                ) from first.error
    finally:
        if own_pool is not None:
            own_pool.close(kill=True)
    return history


def _wait(futures: list[Any], timeout: float | None) -> set[int]:
    """Indices of the futures done within ``timeout``.

    Real ``concurrent.futures.Future`` objects go through ``cf.wait``; other handles (a Ray
    ``ObjectRef.future()`` adapter, submitit jobs) are polled with ``done()`` and a growing sleep,
    since ``cf.wait`` must not be given foreign handles (dask/distributed#3695).
    """
    if all(isinstance(f, cf.Future) for f in futures):
        done, _ = cf.wait(futures, timeout=timeout)
        return {i for i, f in enumerate(futures) if f in done}
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 1e-3
    while True:
        done = {i for i, f in enumerate(futures) if f.done()}
        if len(done) == len(futures):
            return done
        if deadline is not None and time.monotonic() >= deadline:
            return done
        pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)
        delay = min(delay * 2, 0.1)


def _outcome(future: Any) -> tuple[Any, BaseException | None]:
    # Foreign handles may lack exception(); result() re-raises the evaluation's error. SystemExit
    # from an objective (sys.exit in a worker or inline) is a failed evaluation, not the driver's
    # exit; KeyboardInterrupt still stops the run.
    try:
        return future.result(), None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any evaluation error is data
        return None, exc


def _evaluate_on_pool(
    pool: LocalPool,
    objective: Callable[[Any], Any],
    candidates: list[Candidate],
    timeout: float | None,
    batch_index: int,
) -> list[Evaluation]:
    outcomes = pool.evaluate(_timed_call, objective, [c.value for c in candidates], timeout)
    out = []
    for c, (outcome, error, seconds) in zip(candidates, outcomes):
        if error is not None:
            out.append(Evaluation(c.id, c.value, None, error, seconds, batch_index))
        else:
            result, seconds = outcome
            out.append(Evaluation(c.id, c.value, result, None, seconds, batch_index))
    return out


def _evaluate_batch(
    executor: Any,
    objective: Callable[[Any], Any],
    candidates: list[Candidate],
    timeout: float | None,
    inline: bool,
    batch_index: int,
) -> list[Evaluation]:
    start = time.perf_counter()
    futures = [executor.submit(_timed_call, objective, c.value) for c in candidates]
    done = _wait(futures, timeout)
    waited = time.perf_counter() - start
    out = []
    for k, (c, fut) in enumerate(zip(candidates, futures)):
        if k not in done:
            if hasattr(fut, "cancel"):
                fut.cancel()
            err: BaseException = TimeoutError(f"no result within timeout={timeout} s")
            out.append(Evaluation(c.id, c.value, None, err, waited, batch_index))
            continue
        value, exc = _outcome(fut)
        if exc is not None:
            out.append(Evaluation(c.id, c.value, None, exc, waited, batch_index))
            continue
        result, seconds = value
        if inline and timeout is not None and seconds > timeout:
            err = TimeoutError(f"took {seconds:.3g} s, over timeout={timeout} s (inline)")
            out.append(Evaluation(c.id, c.value, None, err, seconds, batch_index))
            continue
        out.append(Evaluation(c.id, c.value, result, None, seconds, batch_index))
    return out
