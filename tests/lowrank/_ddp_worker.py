"""Worker of the DDP test (gloo on CPU): rank r trains shard r of every batch under
``DistributedDataParallel`` with a projected optimizer and saves its parameters."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

SHARD, STEPS = 4, 6


def build_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))


def build_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    from optforge.lowrank import FRUGAL, GaLoreAdamW, QGaLoreAdamW8bit

    if name == "galore":
        return GaLoreAdamW(model.parameters(), lr=1e-2, rank=3, update_proj_gap=2)
    if name == "frugal_random":  # a seeded random basis: every rank must draw the same one
        return FRUGAL(model.parameters(), lr=1e-2, density=0.25, update_proj_gap=2,
                      projector="random")  # fmt: skip
    if name == "qgalore":  # stochastic rounding: every rank must round alike
        return QGaLoreAdamW8bit(model.parameters(), lr=1e-2, rank=3, update_proj_gap=2,
                                min_8bit_size=16)  # fmt: skip
    raise ValueError(name)


def batch(world: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(world * SHARD, 12, generator=gen)
    return x, torch.randn(world * SHARD, 2, generator=gen)


def worker(rank: int, world: int, port: int, out_dir: str, name: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        model = build_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = build_optimizer(name, model)
        for step in range(STEPS):
            x, y = batch(world, step)
            shard = slice(rank * SHARD, (rank + 1) * SHARD)
            opt.zero_grad()
            nn.functional.mse_loss(ddp(x[shard]), y[shard]).backward()
            opt.step()
        torch.save([p.detach().clone() for p in model.parameters()],
                   os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip
    finally:
        dist.destroy_process_group()
