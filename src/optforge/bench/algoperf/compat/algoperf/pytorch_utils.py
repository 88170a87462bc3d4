"""``algoperf.pytorch_utils`` for submission files: one CPU process, no DDP, no GPU."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["pytorch_init", "pytorch_setup", "sync_ddp_time", "update_batch_norm_fn"]


def pytorch_setup() -> tuple[bool, int, torch.device, int]:
    """``(use_pytorch_ddp, rank, device, n_gpus)``: always ``(False, 0, cpu, 0)`` here."""
    return False, 0, torch.device("cpu"), 0


def pytorch_init(use_pytorch_ddp: bool, rank: int, profiler: Any) -> None:
    """Nothing to set up on one CPU process."""
    del use_pytorch_ddp, rank, profiler


def sync_ddp_time(time: float, device: torch.device) -> float:
    """The time itself: there is no other rank to agree with."""
    del device
    return time


def update_batch_norm_fn(module: torch.nn.Module, update_batch_norm: bool) -> None:
    """Freeze (momentum 0) or restore a batch-norm layer's running statistics."""
    if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return
    if not update_batch_norm:
        if not hasattr(module, "momentum_backup"):
            module.momentum_backup = module.momentum
        module.momentum = 0.0
    elif hasattr(module, "momentum_backup"):
        module.momentum = module.momentum_backup
