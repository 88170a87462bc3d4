"""Random directions for zeroth-order estimates, regenerated from integer keys, never stored.

A direction is one draw ``z = (z_1, ..., z_K)`` over the K perturbed tensors. Tensor i's part is
drawn from its own generator, seeded by ``(seed, step, direction, index)`` where ``index`` is the
tensor's global position (``OptimizerBase.param_index``). So ``z_i`` does not depend on the order
the tensors are visited in, nor on which other tensors are perturbed (except for ``"sphere"``,
whose scale is a norm over all of them), and the global RNG is never touched.

Notation: d = total number of perturbed elements.

=============  ==========================================================  ============
dist           z                                                           E‖z‖²
=============  ==========================================================  ============
gaussian       z ~ N(0, I_d)                                               d
rademacher     z_k = ±1 with probability 1/2                               d
sphere         z = √d · u/‖u‖, u ~ N(0, I_d) (uniform on the √d-sphere)    d (exactly)
=============  ==========================================================  ============

z is drawn in float32 (float64 for float64 tensors) on the tensor's device and cast to the
tensor's dtype where it is applied; drawing in a half dtype (as MeZO's reference does under
``--load_float16``) would give a different stream per dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from optforge._seeding import generator_for

__all__ = ["DISTRIBUTIONS", "draw", "sphere_scale"]

DISTRIBUTIONS = ("gaussian", "rademacher", "sphere")


def _draw_dtype(like: Tensor) -> torch.dtype:
    return torch.float64 if like.dtype == torch.float64 else torch.float32


def draw(
    like: Tensor, dist: str, seed: int, step: int, direction: int, index: int, scale: float = 1.0
) -> Tensor:
    """Tensor ``index``'s part of direction ``direction`` at ``step`` (shape of ``like``).

    ``scale`` multiplies the draw; ``"sphere"`` needs ``sphere_scale`` of all the tensors.
    """
    gen = generator_for(like.device, seed, step, direction, index)
    dtype = _draw_dtype(like)
    if dist == "rademacher":
        z = torch.randint(0, 2, like.shape, generator=gen, device=like.device).to(dtype) * 2 - 1
    elif dist in ("gaussian", "sphere"):
        z = torch.randn(like.shape, generator=gen, device=like.device, dtype=dtype)
    else:
        raise ValueError(f"dist must be one of {DISTRIBUTIONS} (got {dist!r})")
    return z * scale if scale != 1.0 else z


def sphere_scale(
    params: Sequence[Tensor], indices: Sequence[int], seed: int, step: int, direction: int
) -> float:
    """``√d / ‖u‖`` for the Gaussian draw u over ``params``: turns it into a sphere draw."""
    total, sq = 0, 0.0
    for p, i in zip(params, indices):
        u = draw(p, "gaussian", seed, step, direction, i)
        total += u.numel()
        sq += float(u.double().square().sum())
    return math.sqrt(total / sq) if sq > 0 else 1.0
