"""MeZO under torch.distributed (gloo, 2 real processes): shared seeds, scalar all-reduce only,
identical parameters on every rank, equal to one process on the concatenated batch."""

from __future__ import annotations

import threading

import pytest
import torch

from tests._spawn import run_ranks
from tests.zo import _dist_worker as W

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_whole_batch(tmp_path) -> None:
    # ~100 s on 2 shared cores (spawning two interpreters); the threaded test below is the fast
    # default for the same contract.
    world = 2
    ranks = run_ranks(W.worker, world, tmp_path, what="distributed MeZO workers")
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)
    # One all-reduce per step, of the 2n losses only (no parameter-sized traffic).
    n = W.CONFIG["n_directions"]
    assert ranks[0]["shapes"] == [(2 * n,)] * W.STEPS
    single = W.build_model()
    W.train(single, world, rank=None)
    moved = False
    for a, b, init in zip(ranks[0]["params"], single.parameters(), W.build_model().parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-9)
        moved |= not torch.equal(a, init.detach())
    assert moved


def test_threaded_ranks_with_a_summing_all_reduce(monkeypatch) -> None:
    """Fast default: two ranks as threads, torch.distributed replaced by a barrier that sums."""
    world = 2
    barrier = threading.Barrier(world)
    slots: list = [None] * world
    local = threading.local()
    shapes: list = []

    def all_reduce(tensor, *args, **kwargs):
        slots[local.rank] = tensor.clone()
        barrier.wait()
        total = sum(slots)
        barrier.wait()
        tensor.copy_(total)
        shapes.append(tuple(tensor.shape))

    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: world)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    models = [W.build_model() for _ in range(world)]
    errors = []

    def run(rank):
        local.rank = rank
        try:
            W.train(models[rank], world, rank)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    n = W.CONFIG["n_directions"]
    assert shapes == [(2 * n,)] * (W.STEPS * world)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    single = W.build_model()
    W.train(single, world, rank=None)
    for a, b, c in zip(models[0].parameters(), models[1].parameters(), single.parameters()):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-9)
    # Without the all-reduce the ranks would disagree (so this test can fail).
    alone = W.build_model()
    W.train(alone, world, rank=0)
    assert not all(torch.equal(a, b) for a, b in zip(alone.parameters(), models[0].parameters()))
