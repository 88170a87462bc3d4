"""Real multi-process runs for the distributed tests: spawn ``world`` ranks on loopback, wait with
a deadline, and read each rank's ``rank{r}.pt``.

A worker is ``worker(rank, world, port, out_dir, *args)`` and saves its result (tensors only) to
``out_dir/rank{rank}.pt``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port free on loopback now (for the gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Callable[..., None], world: int, out_dir: Path, *args: Any,
              deadline_s: float = 120, what: str = "distributed workers") -> list[Any]:
    """Run ``worker`` on ``world`` spawned processes; fail the test after ``deadline_s`` (the
    processes are terminated, never left behind) and return the ranks' saved results."""
    ctx = mp.start_processes(worker, args=(world, free_port(), str(out_dir), *args),
                             nprocs=world, join=False, start_method="spawn")
    end = time.monotonic() + deadline_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > end:
                pytest.fail(f"{what} did not finish in {deadline_s:g} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world)]
