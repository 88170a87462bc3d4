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

**Chunks.** ``chunks`` yields a CPU tensor's draw in pieces of about ``CHUNK`` elements from
one generator, so applying a direction needs a temporary of one chunk, not of the whole tensor
(for the word embeddings of MiniLM, 45 MiB; of SmolLM2-135M, 108 MiB). torch's CPU sampler
fills normals in blocks of 16 and redraws the last 16 of a length that is not a multiple of
16, so pieces of a multiple of 16 elements, with a short tail merged into the last piece,
reproduce the whole draw bit for bit (tested). Other devices' samplers (CUDA's Philox offsets)
have no such property, so there a tensor is drawn whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from optforge._seeding import generator_for

__all__ = ["CHUNK", "DISTRIBUTIONS", "chunks", "draw", "flat", "sphere_scale"]

DISTRIBUTIONS = ("gaussian", "rademacher", "sphere")
#: elements per piece of a chunked draw (4 MiB of fp32); a multiple of 16 (see the docstring).
CHUNK = 1 << 20


def _draw_dtype(like: Tensor) -> torch.dtype:
    return torch.float64 if like.dtype == torch.float64 else torch.float32


def draw(
    like: Tensor, dist: str, seed: int, step: int, direction: int, index: int, scale: float = 1.0
) -> Tensor:
    """Tensor ``index``'s part of direction ``direction`` at ``step`` (shape of ``like``).

    ``scale`` multiplies the draw; ``"sphere"`` needs ``sphere_scale`` of all the tensors.
    """
    gen = generator_for(like.device, seed, step, direction, index)
    return _sample(like.shape, like, dist, gen, scale)


def _sample(shape: tuple[int, ...] | torch.Size, like: Tensor, dist: str,
            gen: torch.Generator, scale: float) -> Tensor:
    dtype = _draw_dtype(like)
    if dist == "rademacher":
        z = torch.randint(0, 2, shape, generator=gen, device=like.device).to(dtype) * 2 - 1
    elif dist in ("gaussian", "sphere"):
        z = torch.randn(shape, generator=gen, device=like.device, dtype=dtype)
    else:
        raise ValueError(f"dist must be one of {DISTRIBUTIONS} (got {dist!r})")
    return z * scale if scale != 1.0 else z


def chunks(
    like: Tensor, dist: str, seed: int, step: int, direction: int, index: int,
    scale: float = 1.0, chunk: int | None = None,
) -> Iterator[tuple[slice, Tensor]]:
    """``draw(...)`` in pieces: ``(s, z_s)`` with ``z_s`` equal to ``draw(...).view(-1)[s]``.

    One piece (the whole tensor, shaped like ``like``, ``s = slice(None)``) on a non-CPU
    device or when the tensor fits in one chunk; otherwise flat pieces of ``chunk`` elements
    (a multiple of 16; default the module's ``CHUNK``), the last one taking a tail shorter
    than 16.
    """
    chunk = CHUNK if chunk is None else chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 16 or chunk % 16:
        raise ValueError(f"chunk must be a positive multiple of 16 (got {chunk})")
    n = like.numel()
    if like.device.type != "cpu" or n <= chunk or not like.is_contiguous():
        yield slice(None), draw(like, dist, seed, step, direction, index, scale)
        return
    gen = generator_for(like.device, seed, step, direction, index)
    start = 0
    while start < n:
        stop = n if n - start < chunk + 16 else start + chunk
        yield slice(start, stop), _sample((stop - start,), like, dist, gen, scale)
        start = stop


def flat(t: Tensor, s: slice) -> Tensor:
    """The piece ``s`` of ``t`` as ``chunks`` yields it (``t`` itself for ``slice(None)``)."""
    return t if s == slice(None) else t.view(-1)[s]


def sphere_scale(
    params: Sequence[Tensor], indices: Sequence[int], seed: int, step: int, direction: int
) -> float:
    """``√d / ‖u‖`` for the Gaussian draw u over ``params``: turns it into a sphere draw."""
    total, sq = 0, 0.0
    for p, i in zip(params, indices):
        total += p.numel()
        for _, u in chunks(p, "gaussian", seed, step, direction, i):
            sq += float(u.double().square().sum())
    return math.sqrt(total / sq) if sq > 0 else 1.0
