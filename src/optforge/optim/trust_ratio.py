"""Layer-wise trust ratios, shared by LAMB and LARS.

A trust ratio rescales a tensor's update by a ratio of norms (‖θ‖/‖u‖ for LAMB,
η_tc·‖θ‖/(‖g‖ + λ‖θ‖) for LARS) and falls back to 1 where a norm is zero, as the reference
implementations do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["norm", "trust_ratio"]


def norm(t: Tensor) -> Tensor:
    """Frobenius norm accumulated in at least float32 (bf16/fp16 tensors are upcast)."""
    return torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))


def trust_ratio(
    numerator: Tensor, denominator: Tensor, valid: Tensor, max_trust_ratio: Any = None
) -> Tensor:
    """``numerator / denominator`` where ``valid``, else 1; capped at ``max_trust_ratio``."""
    ratio = torch.where(valid, numerator / denominator, torch.ones_like(numerator))
    return ratio if max_trust_ratio is None else torch.clamp(ratio, max=max_trust_ratio)
