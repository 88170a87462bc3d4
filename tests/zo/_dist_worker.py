"""Worker processes for the distributed MeZO test (gloo on CPU), and the setup shared with the
single-process reference run in test_distributed.py.

Each rank evaluates the mean loss on its own shard of a deterministic batch; ``MeZO.step``
averages ℓ± across ranks. A rank saves its parameters and the shapes of its all-reduces.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from optforge.zo import MeZO

SHARD = 4
STEPS = 5
CONFIG = {"lr": 5e-2, "eps": 1e-3, "n_directions": 2, "seed": 11, "momentum": 0.9}


def build_model() -> nn.Sequential:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    return model


def batch(world: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(world * SHARD, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(world * SHARD, 2, generator=gen, dtype=torch.float64)
    return x, y


def train(model: nn.Module, world: int, rank: int | None) -> None:
    """STEPS MeZO steps; ``rank=None``: one process on the whole batch."""
    opt = MeZO(model.parameters(), **CONFIG)
    for step in range(STEPS):
        x, y = batch(world, step)
        if rank is not None:
            x, y = x[rank * SHARD:(rank + 1) * SHARD], y[rank * SHARD:(rank + 1) * SHARD]
        opt.step(lambda x=x, y=y: nn.functional.mse_loss(model(x), y))


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )
    shapes = []
    all_reduce = dist.all_reduce

    def recording(tensor, *args, **kwargs):
        shapes.append(tuple(tensor.shape))
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = recording
    try:
        model = build_model()
        train(model, world, rank)
        torch.save({"params": [p.detach().clone() for p in model.parameters()],
                    "shapes": shapes}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()
