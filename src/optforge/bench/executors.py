"""Where trials run, by name: the local process pool, a Dask scheduler, or Ray.

``--executor`` takes:

- ``local`` (default): a process pool on this machine (``run_benchmark``'s own);
- ``dask:ADDRESS``: a running Dask scheduler, e.g. ``dask:tcp://10.0.0.5:8786``;
- ``ray``: a Ray instance started on this machine for the run, with ``--jobs`` CPUs (default:
  every core);
- ``ray:ADDRESS``: a running Ray cluster, e.g. ``ray:auto`` or ``ray:ray://head:10001``.

Trial seeds and configurations depend only on the run's configuration, so every executor gives
the same records up to the measured times. Workers must be able to import optforge (and any
``module:attr`` submission or workload).

Example::

    with open_executor("dask:tcp://127.0.0.1:8786", jobs=None, torch_threads=1) as ex:
        run_benchmark(cfg, "bench-out", executor=ex)
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["RayExecutor", "open_executor", "parse_executor"]


def parse_executor(spec: str) -> tuple[str, str | None]:
    """``(kind, address)`` of an ``--executor`` value; ValueError for anything else."""
    kind, sep, address = spec.partition(":")
    if kind == "local" and not sep:
        return "local", None
    if kind == "ray":
        if sep and not address:
            raise ValueError("--executor ray:ADDRESS needs an address (e.g. ray:auto)")
        return "ray", address or None
    if kind == "dask" and address:
        return "dask", address
    raise ValueError(f"--executor must be local, dask:ADDRESS, ray or ray:ADDRESS (got {spec!r})")


def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


class RayExecutor(cf.Executor):
    """``submit`` as a Ray task of ``num_cpus`` CPUs; its result comes back as a Future."""

    def __init__(self, num_cpus: int = 1) -> None:
        import ray

        # No retries: a trial that kills its worker is reported, not silently run twice.
        self._task = ray.remote(num_cpus=num_cpus, max_retries=0)(_call)
        self.num_cpus = num_cpus

    def submit(self, fn, /, *args, **kwargs):  # noqa: D102 - Executor API
        if kwargs:
            raise TypeError("RayExecutor.submit takes positional arguments only")
        return self._task.remote(fn, *args).future()

    def concurrency(self) -> int | None:
        """Trials that fit on the cluster at once (its CPUs // CPUs per trial)."""
        import ray

        cpus = ray.cluster_resources().get("CPU")
        return int(cpus // self.num_cpus) if cpus else None


@contextlib.contextmanager
def open_executor(spec: str, *, jobs: int | None, torch_threads: int) -> Iterator[Any]:
    """The executor named by ``spec`` (None for ``local``), closed or disconnected on exit."""
    kind, address = parse_executor(spec)
    if kind == "local":
        yield None
    elif kind == "dask":
        try:
            from distributed import Client
        except ImportError:
            raise ValueError(
                '--executor dask needs dask.distributed (pip install "optforge[dist]")'
            ) from None
        try:
            client = Client(address, timeout="5s")
        except (OSError, TimeoutError) as e:
            raise ValueError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        try:
            yield client.get_executor()
        finally:
            client.close()
    else:
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray (pip install ray)") from None
        from optforge.bench.study import available_cores

        if address is None:
            ray.init(
                num_cpus=jobs * torch_threads if jobs else available_cores(),
                include_dashboard=False,
                log_to_driver=False,
            )
        else:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ValueError(
                    f"cannot reach the Ray cluster at {address}: {e}{_ray_auth_hint()}"
                ) from None
        try:
            yield RayExecutor(num_cpus=torch_threads)
        finally:
            ray.shutdown()


def _ray_auth_hint() -> str:
    """What to try when a connection by address fails with ``RAY_AUTH_MODE`` unset: Ray 2.59+
    starts local clusters with token authentication on, and a driver that connects by address
    sends its token only when ``RAY_AUTH_MODE=token`` is set (measured with Ray 2.60)."""
    if "RAY_AUTH_MODE" in os.environ:
        return ""
    return (
        "; if the cluster uses token authentication (Ray 2.59+ turns it on for clusters that "
        "ray.init() starts), set RAY_AUTH_MODE=token; the token is read from RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
    )
