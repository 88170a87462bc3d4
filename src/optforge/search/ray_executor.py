"""A ``concurrent.futures`` executor over Ray tasks, for :func:`optforge.search.run`.

Ray has no ``Executor`` of its own for plain tasks; this adapter is the few lines that make one:
``submit(fn, *args)`` runs ``fn`` as a Ray task and returns a ``concurrent.futures.Future``.
Results reach :func:`run` in candidate-id order as from any executor, so a deterministic
objective gives the same search inline, on the local process pool, on Dask or on Ray.

A task that raises fails its future with Ray's ``RayTaskError`` (a subclass of the original
exception type); a worker that dies fails only its task (``WorkerCrashedError``; tasks are not
retried unless ``max_retries`` says so). ``run``'s ``timeout`` counts from submission here,
queueing included, and a timed-out task is cancelled with ``ray.cancel(force=True)``.

Example::

    import ray
    ray.init(num_cpus=2)
    history = run(search, objective, budget=1000, executor=RayExecutor())
    ray.shutdown()
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

__all__ = ["RayExecutor"]


class RayExecutor(cf.Executor):
    """Runs each ``submit``-ted call as a Ray task on the cluster of ``ray.init()``.

    Args:
        num_cpus: CPUs each task reserves (default 1: one evaluation per core).
        max_retries: Ray's retries of a task whose worker died (default 0: a crash is a failed
            evaluation, handled by ``run``'s ``on_failure``, as on the local pool).
        **options: further ``ray.remote`` options (``num_gpus``, ``memory``, ``runtime_env``...).
    """

    def __init__(self, *, num_cpus: float = 1, max_retries: int = 0, **options: Any) -> None:
        import ray  # optional dependency: the `ray` extra

        if not ray.is_initialized():
            raise RuntimeError("RayExecutor needs a running Ray: call ray.init() first")
        self._ray = ray
        self._options = {"num_cpus": num_cpus, "max_retries": max_retries, **options}
        self._remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(**self._options)(fn)
        ref = remote.remote(*args, **kwargs)
        return _RayFuture(self._ray, ref)


class _RayFuture(cf.Future):
    """A future fed by a Ray ``ObjectRef``; ``cancel()`` also cancels the task."""

    def __init__(self, ray: Any, ref: Any) -> None:
        super().__init__()
        self._ray, self._ref = ray, ref
        ref.future().add_done_callback(self._copy)

    def _copy(self, source: cf.Future) -> None:
        if self.cancelled():
            return
        try:
            exc = source.exception()
            if exc is None:
                self.set_result(source.result())
            else:
                self.set_exception(exc)
        except (cf.CancelledError, cf.InvalidStateError):  # cancelled meanwhile
            pass

    def cancel(self) -> bool:
        if self.done():
            return False
        self._ray.cancel(self._ref, force=True)
        return super().cancel()
