"""Worker processes for the distributed AGVM tests (gloo on CPU), and the setup they share with
the single-process reference run in test_agvm.py.

Each rank holds shard ``rank`` of a deterministic batch, runs a plain local backward (mean loss
over its shard) and lets ``AGVM.step`` average the gradients. It saves its parameters, μ, the
gradients it stepped with and the shapes of the all-reduces it made.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from optforge.optim.agvm import AGVM

SHARD = 3  # samples per rank
STEPS = 6
CONFIG = {"start_iter": 1, "update_interval": 2}  # AGVM steps at it = 2, 4; lr scaled from it = 1


def build_model(dtype: torch.dtype) -> nn.Sequential:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    return model.to(dtype)


def build_optimizer(model: nn.Sequential, use_adam: bool, **agvm_kwargs) -> AGVM:
    groups = [
        {"params": model[2].parameters(), "name": "neck"},
        {"params": model[0].parameters(), "name": "backbone"},
        {"params": model[4].parameters(), "name": "head", "lr": 0.05},
    ]
    if use_adam:
        inner = torch.optim.Adam(groups, lr=0.01)
    else:
        inner = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    return AGVM(inner, reference="backbone", use_adam=use_adam, **CONFIG, **agvm_kwargs)


def batch(world: int, step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``, ``world * SHARD`` samples; rank r owns shard r."""
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(world * SHARD, 5, generator=gen)
    y = torch.randn(world * SHARD, 2, generator=gen)
    return x.to(dtype), y.to(dtype)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def worker(rank: int, world: int, port: int, out_dir: str, use_adam: bool, dtype_name: str) -> None:
    torch.set_num_threads(1)
    dtype = getattr(torch, dtype_name)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )
    reduce_shapes = []
    all_reduce = dist.all_reduce

    def recording_all_reduce(tensor, *args, **kwargs):
        reduce_shapes.append(tuple(tensor.shape))
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = recording_all_reduce
    try:
        model = build_model(dtype)
        opt = build_optimizer(model, use_adam)
        try:
            with opt.half(0):
                pass
            half_error = ""
        except RuntimeError as err:
            half_error = str(err)
        grads, mus = [], []
        for step in range(STEPS):
            x, y = batch(world, step, dtype)
            shard = slice(rank * SHARD, (rank + 1) * SHARD)
            opt.zero_grad()
            loss_fn(model, x[shard], y[shard]).backward()
            opt.step()
            grads.append([p.grad.clone() for p in model.parameters()])
            mus.append(opt.mu.clone())
        torch.save(
            {"params": [p.detach().clone() for p in model.parameters()], "grads": grads,
             "mus": mus, "reduce_shapes": reduce_shapes, "half_error": half_error},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()
