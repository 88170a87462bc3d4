"""The local process pool behind :func:`optforge.search.run`'s default executor.

A ``ProcessPoolExecutor`` (``spawn``) alone loses evaluations under faults: its timeout can only
count from submission (so worker start-up and queueing count), a hung worker can only be stopped
by killing the whole pool, and one worker that dies (``os._exit``, a segfault, the OOM killer)
fails every pending future with ``BrokenProcessPool``. :class:`LocalPool` keeps the executor and
adds what it lacks:

- each worker reports on a queue when it *starts* an evaluation; the timeout clock starts then;
- a timed-out evaluation fails alone: the pool is killed and rebuilt, and the evaluations that
  were running or queued beside it are submitted again (they start over);
- when a worker dies, only the evaluation it was running fails. With one evaluation running
  that one is known; with several, the suspects are run again one at a time, each alone in a
  fresh one-worker pool, so the culprit is found and the others finish.

Evaluations that are run again must be repeatable (as a deterministic objective is).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["LocalPool", "WorkerDied"]

# Poll period (s) for start reports while evaluations run; bounds how late a start is seen.
_POLL = 0.02
# Pool breaks in a row that no evaluation can be blamed for before giving up on the pool.
_MAX_BLAMELESS_BREAKS = 3

_starts: Any = None  # in a worker: the queue that start reports go to


class WorkerDied(RuntimeError):
    """The worker process evaluating a candidate died (``os._exit``, a signal, out of memory)."""


def _init_worker(starts: Any) -> None:
    global _starts
    _starts = starts


def _reported_call(call: Callable, objective: Callable, value: Any, token: int) -> Any:
    # Module level so that it pickles. SimpleQueue.put writes to the pipe before returning, so the
    # report survives a worker that dies inside the objective right after.
    _starts.put((token, os.getpid()))
    return call(objective, value)


class LocalPool:
    """A spawn process pool of up to ``workers`` processes that isolates faults (see module doc).

    ``evaluate(call, objective, values, timeout)`` returns one ``(outcome, error, seconds)`` per
    value, in order: ``outcome`` is ``call(objective, value)``'s return, ``error`` an exception
    (``TimeoutError``, :class:`WorkerDied`, or what the evaluation raised) and ``seconds`` the
    time the evaluation ran (from its start report) or waited.
    """

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._pool: cf.ProcessPoolExecutor | None = None
        self._size = 0
        self._starts: Any = None

    def _open(self, workers: int) -> cf.ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        self._starts = ctx.SimpleQueue()
        self._size = workers
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(self._starts,),
        )
        return self._pool

    def close(self, kill: bool = False) -> None:
        """Shut the pool down; ``kill=True`` terminates busy workers first (hung evaluations)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            # Futures are not cancelled: the executor's manager thread marks the unfinished ones
            # broken itself, and a cancelled future there raises InvalidStateError (Python 3.11).
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False)
        else:
            pool.shutdown(wait=True)
        self._starts = None

    def _drain(self, started: dict[int, float], pids: dict[int, int]) -> None:
        # Start reports: token -> the time this process saw it (one clock for all workers).
        try:
            while not self._starts.empty():
                token, pid = self._starts.get()
                started.setdefault(token, time.monotonic())
                pids[token] = pid
        except (OSError, EOFError, ValueError):  # a killed pool's pipe; its pool is gone anyway
            pass

    def evaluate(
        self, call: Callable, objective: Callable, values: list[Any], timeout: float | None
    ) -> list[tuple[Any, BaseException | None, float]]:
        out: dict[int, tuple[Any, BaseException | None, float]] = {}
        todo = list(range(len(values)))  # indices still to evaluate in the shared pool
        alone: list[int] = []  # suspects of a worker death, to run one at a time
        blameless = 0
        while todo or alone:
            if todo:
                batch, workers, isolated = todo, min(self.workers, len(todo)), False
            else:
                batch, workers, isolated = [alone[0]], 1, True
            if self._pool is None or isolated or self._size < workers:
                self.close()
                self._open(workers)
            unfinished, blamed = self._round(call, objective, values, batch, timeout, out)
            if isolated:
                alone.pop(0)
                if unfinished:  # its worker died with no one else running: it is the culprit
                    i = unfinished[0]
                    out[i] = (None, WorkerDied(_DIED), 0.0)
                self.close(kill=bool(unfinished))
                continue
            if blamed is None:  # the round finished, or ended on a timeout it blamed
                todo = unfinished
                continue
            # A worker died: blame the only evaluation running, else isolate every suspect.
            self.close(kill=True)
            if len(blamed) == 1:
                out[blamed[0]] = (None, WorkerDied(_DIED), 0.0)
                blameless = 0
            elif blamed:
                alone.extend(blamed)
                blameless = 0
            else:
                blameless += 1
                if blameless >= _MAX_BLAMELESS_BREAKS:
                    err = BrokenProcessPool(f"the pool broke {blameless} times with no evaluation")
                    for i in unfinished:
                        out[i] = (None, err, 0.0)
                    unfinished = []
            todo = [i for i in unfinished if i not in blamed]
        if self._pool is not None and self._size < self.workers:
            self.close()  # a one-worker pool left from isolation; the next batch opens a full one
        return [out[i] for i in range(len(values))]

    def _round(
        self,
        call: Callable,
        objective: Callable,
        values: list[Any],
        batch: list[int],
        timeout: float | None,
        out: dict[int, tuple[Any, BaseException | None, float]],
    ) -> tuple[list[int], list[int] | None]:
        """Run ``batch`` on the current pool until all finish, one times out, or the pool breaks.

        Returns the indices left unfinished and, if a worker died, the suspects (indices that had
        started and not finished; ``None`` when no worker died).
        """
        pool = self._pool
        assert pool is not None
        futures: dict[cf.Future, int] = {}
        try:
            for i in batch:
                futures[pool.submit(_reported_call, call, objective, values[i], i)] = i
        except BrokenProcessPool:
            return [i for i in batch if i not in out], []
        started: dict[int, float] = {}
        pids: dict[int, int] = {}
        procs = dict(getattr(pool, "_processes", {}))  # pid -> Process; private, stable since 3.2
        running = set(futures)
        broken = False
        while running and not broken:
            self._drain(started, pids)
            wait_for = _POLL
            if timeout is not None:
                now = time.monotonic()
                ends = [
                    started[futures[f]] + timeout - now for f in running if futures[f] in started
                ]
                wait_for = max(0.0, min([_POLL, *ends]))
            done, _ = cf.wait(running, timeout=wait_for, return_when=cf.FIRST_COMPLETED)
            if any(_is_broken(f) for f in done):
                # Every unfinished future is about to be marked broken; collect the real results
                # that came in before the break, then blame.
                broken = True
                done, _ = cf.wait(running, timeout=10.0)
            self._drain(started, pids)
            procs.update(getattr(pool, "_processes", {}))
            for f in done:
                running.discard(f)
                if not _is_broken(f):
                    i = futures[f]
                    try:
                        outcome, error = f.result(), None
                    except (Exception, SystemExit) as exc:  # noqa: BLE001 - data for the policy
                        outcome, error = None, exc
                    out[i] = (outcome, error, time.monotonic() - started.get(i, time.monotonic()))
            if broken or timeout is None:
                continue
            now = time.monotonic()
            late = [futures[f] for f in running if now - started.get(futures[f], now) >= timeout]
            if late:
                for i in late:
                    err = TimeoutError(f"no result within timeout={timeout} s of its start")
                    out[i] = (None, err, now - started[i])
                self.close(kill=True)
                return [i for i in batch if i not in out], None
        unfinished = [i for i in batch if i not in out]
        if not broken:
            return unfinished, None
        suspects = [i for i in unfinished if i in started]
        # The executor terminates the surviving workers (SIGTERM); a worker that exited any other
        # way first is the one that died. If that does not single one out, isolate the suspects.
        deadline = time.monotonic() + 5.0
        codes = {}
        for i in suspects:
            proc = procs.get(pids.get(i, -1))
            while proc is not None and proc.exitcode is None and time.monotonic() < deadline:
                time.sleep(0.01)
            codes[i] = None if proc is None else proc.exitcode
        died = [i for i in suspects if codes[i] is not None and codes[i] != -signal.SIGTERM]
        return unfinished, died if len(died) == 1 else suspects


def _is_broken(future: cf.Future) -> bool:
    return future.done() and isinstance(future.exception(), BrokenProcessPool)


_DIED = "the worker process evaluating it died (os._exit, a signal, or out of memory)"
