"""Projectors: an orthonormal basis of a subspace of an m×n gradient, and the maps into it.

Notation (a glossary for the whole subpackage):

==========  ==================================================================================
m, n        the gradient's matrix shape (``MatrixView``: a weight with more than 2 dims is seen
            as ``shape[0] × prod(shape[1:])``)
r           rank, clamped to ``min(r, m, n)``
side        ``"left"``: P is m×r, ``proj(G) = Pᵀ G`` (r×n), ``back(X) = P X``;
            ``"right"``: P is r×n, ``proj(G) = G Pᵀ`` (m×r), ``back(X) = X P``;
            ``"full"``: P is m×r and Q is r×n, ``proj(G) = Pᵀ G Qᵀ`` (r×r), ``back(X) = P X Q``
proj_type   GaLore's names for the side: ``"std"`` (official: right when m ≥ n, else left; the
            moments live on the larger dimension), ``"reverse_std"`` (the memory-minimizing
            side: left when m ≥ n, else right; the moments live on min(m, n), as optax does),
            ``"left"``, ``"right"``, ``"full"``
==========  ==================================================================================

Basis makers (``BASES``), each returning an orthonormal basis for ``side`` in fp32:

* ``"svd"``: the top-r singular vectors of G (GaLore);
* ``"randomized_svd"``: the same from a randomized range finder (Halko et al., 2011: r + 8
  oversampled Gaussian probes, 2 power iterations), O(mnr) instead of O(mn·min(m, n));
* ``"random"``: a seeded Gaussian matrix orthonormalized by QR (FRUGAL's random projection);
* ``"columns"``: r coordinates of the reduced dimension picked uniformly without replacement
  (FRUGAL's column/row selection; P is a 0/1 selection matrix).

Random bases draw from ``generator_for(device, seed, step, index)``: never the global RNG, so
ranks of a data-parallel job and a resumed run draw the same basis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BASES",
    "PROJ_TYPES",
    "MatrixView",
    "make_basis",
    "project",
    "add_back_",
    "project_back",
    "resolve_side",
]

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")


@dataclass(frozen=True)
class MatrixView:
    """How a weight is seen as an m×n matrix: ``shape[0] × prod(shape[1:])`` (a conv weight
    out×(in·kh·kw), a 3-D attention weight heads×(…)), and the clamped rank and side."""

    shape: tuple[int, ...]
    m: int
    n: int
    rank: int
    side: str

    @classmethod
    def of(cls, shape: tuple[int, ...], rank: int, proj_type: str) -> MatrixView:
        m, n = shape[0], math.prod(shape[1:])
        side = resolve_side(proj_type, m, n)
        return cls(tuple(shape), m, n, max(1, min(rank, m, n)), side)

    def low_shape(self) -> tuple[int, int]:
        """Shape of the projected gradient (and of the inner moments)."""
        if self.side == "left":
            return (self.rank, self.n)
        if self.side == "right":
            return (self.m, self.rank)
        return (self.rank, self.rank)

    def basis_shapes(self) -> dict[str, tuple[int, int]]:
        if self.side == "left":
            return {"P": (self.m, self.rank)}
        if self.side == "right":
            return {"P": (self.rank, self.n)}
        return {"P": (self.m, self.rank), "Q": (self.rank, self.n)}

    def reduced_dim(self) -> int:
        """The dimension the projection shrinks (m for left, n for right)."""
        return self.m if self.side == "left" else self.n


def resolve_side(proj_type: str, m: int, n: int) -> str:
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    if proj_type in ("left", "right", "full"):
        return proj_type
    raise ValueError(f"proj_type must be one of {PROJ_TYPES} (got {proj_type!r})")


def project(g: Tensor, basis: dict[str, Tensor], side: str) -> Tensor:
    if side == "left":
        return basis["P"].t() @ g
    if side == "right":
        return g @ basis["P"].t()
    return basis["P"].t() @ g @ basis["Q"].t()


def project_back(x: Tensor, basis: dict[str, Tensor], side: str) -> Tensor:
    if side == "left":
        return basis["P"] @ x
    if side == "right":
        return x @ basis["P"]
    return basis["P"] @ x @ basis["Q"]


def add_back_(w: Tensor, x: Tensor, basis: dict[str, Tensor], side: str, alpha: float) -> None:
    """``w += alpha·back(x)`` in place: one GEMM accumulating into ``w``, without the m×n
    temporary ``back(x)`` (a full-size allocation, write and read fewer per step)."""
    if side == "left":
        w.addmm_(basis["P"], x, alpha=alpha)
    elif side == "right":
        w.addmm_(x, basis["P"], alpha=alpha)
    else:
        w.addmm_(basis["P"] @ x, basis["Q"], alpha=alpha)


def _svd_factors(g: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    return u[:, :rank], vh[:rank, :]


def _randomized_factors(g: Tensor, rank: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    m, n = g.shape
    k = min(rank + 8, m, n)
    omega = torch.randn(n, k, generator=gen, device=g.device, dtype=g.dtype)
    q, _ = torch.linalg.qr(g @ omega)
    for _ in range(2):  # power iterations sharpen the spectrum's decay
        q, _ = torch.linalg.qr(g.t() @ q)
        q, _ = torch.linalg.qr(g @ q)
    ub, _, vh = torch.linalg.svd(q.t() @ g, full_matrices=False)
    return (q @ ub)[:, :rank], vh[:rank, :]


def _orthonormal(d: int, rank: int, gen: torch.Generator, device: torch.device) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, rank, generator=gen, device=device))
    return q


def _selection(d: int, rank: int, gen: torch.Generator, device: torch.device) -> Tensor:
    idx = torch.randperm(d, generator=gen, device=device)[:rank].sort().values
    sel = torch.zeros(d, rank, device=device)
    sel[idx, torch.arange(rank, device=device)] = 1.0
    return sel


def _from_factors(u: Tensor, vh: Tensor, side: str) -> dict[str, Tensor]:
    if side == "left":
        return {"P": u}
    if side == "right":
        return {"P": vh}
    return {"P": u, "Q": vh}


def _from_columns(make: Callable[[int], Tensor], view: MatrixView) -> dict[str, Tensor]:
    if view.side == "left":
        return {"P": make(view.m)}
    if view.side == "right":
        return {"P": make(view.n).t().contiguous()}
    return {"P": make(view.m), "Q": make(view.n).t().contiguous()}


def make_basis(
    kind: str, g: Tensor, view: MatrixView, gen: Callable[[], torch.Generator]
) -> dict[str, Tensor]:
    """A new fp32 basis of kind ``kind`` for the fp32 m×n gradient ``g``; ``gen()`` gives the
    seeded generator (called only by the random kinds)."""
    r = view.rank
    if kind == "svd":
        return _from_factors(*_svd_factors(g, r), view.side)
    if kind == "randomized_svd":
        return _from_factors(*_randomized_factors(g, r, gen()), view.side)
    if kind == "random":
        generator = gen()
        return _from_columns(lambda d: _orthonormal(d, r, generator, g.device), view)
    if kind == "columns":
        generator = gen()
        return _from_columns(lambda d: _selection(d, r, generator, g.device), view)
    raise ValueError(f"projector must be one of {BASES} (got {kind!r})")


BASES = ("svd", "randomized_svd", "random", "columns")
