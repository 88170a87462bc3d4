"""Under DDP (gloo, 2 processes) projected optimizers keep every rank's parameters identical
(the SVD, seeded random bases and stochastic rounding must not diverge across ranks), equal to
one process on the concatenated batch."""

from __future__ import annotations

import pytest
import torch

from tests._spawn import run_ranks
from tests.lowrank import _ddp_worker as W


@pytest.mark.parametrize("name", ["galore", pytest.param("frugal_random", marks=pytest.mark.slow),
                                  pytest.param("qgalore", marks=pytest.mark.slow)])  # fmt: skip
def test_ddp_ranks_agree_and_match_one_process(name, tmp_path) -> None:
    world = 2
    ranks = run_ranks(W.worker, world, tmp_path, name, what="DDP workers")
    for a, b in zip(*ranks):
        assert torch.equal(a, b)  # bit-identical across ranks
    model = W.build_model()
    initial = [p.detach().clone() for p in model.parameters()]
    opt = W.build_optimizer(name, model)
    for step in range(W.STEPS):
        x, y = W.batch(world, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    for a, b, c in zip(ranks[0], model.parameters(), initial):
        assert not torch.equal(a, c)
        # the all-reduced mean of two shard means vs one mean: rounding only
        torch.testing.assert_close(a, b.detach(), rtol=1e-4, atol=1e-5)
