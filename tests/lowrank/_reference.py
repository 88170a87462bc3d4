"""Plain, independent implementations of the papers' updates (fp64, one matrix, written from
reference/lowrank.md's equations), used as the references of the lowrank tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def svd_basis(g: Tensor, r: int, side: str) -> Tensor:
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    return u[:, :r] if side == "left" else vh[:r]


def proj(g: Tensor, p: Tensor, side: str) -> Tensor:
    return p.T @ g if side == "left" else g @ p.T


def back(x: Tensor, p: Tensor, side: str) -> Tensor:
    return p @ x if side == "left" else x @ p


class PlainGaLore:
    """GaLore / Fira / FRUGAL(svd) on one matrix: reference 1.1, 4.1 and 5.1."""

    def __init__(self, w, *, lr, rank, gap, scale=1.0, side="left", betas=(0.9, 0.999),
                 eps=1e-6, wd=0.0, residual="none", residual_scale=1.0, reset=False,
                 decay_first=False):  # fmt: skip
        self.w, self.lr, self.r, self.gap, self.alpha, self.side = w, lr, rank, gap, scale, side
        self.b1, self.b2, self.eps, self.wd = *betas, eps, wd
        self.residual, self.s_i, self.reset, self.decay_first = (
            residual, residual_scale, reset, decay_first,
        )
        self.k, self.t, self.p, self.m, self.v, self.q = 0, 0, None, 0.0, 0.0, None

    def step(self, g: Tensor) -> None:
        if self.k % self.gap == 0:
            self.p = svd_basis(g, self.r, self.side)
            if self.reset and self.k > 0:
                self.m, self.v, self.t = 0.0, 0.0, 0
        self.k += 1
        self.t += 1
        rr = proj(g, self.p, self.side)
        self.m = self.b1 * self.m + (1 - self.b1) * rr
        self.v = self.b2 * self.v + (1 - self.b2) * rr * rr
        n = self.m / (self.v**0.5 + self.eps)
        c = math.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        upd = c * self.alpha * back(n, self.p, self.side)
        if self.residual in ("fira", "fira_orthogonal"):
            a = self.alpha if self.residual == "fira" else 1.0
            e = g - a * back(rr, self.p, self.side)
            dim = 0 if self.side == "left" else 1
            phi = n.norm(dim=dim, keepdim=True) / (rr.norm(dim=dim, keepdim=True) + 1e-8)
            s = e * phi
            if self.q is not None:
                rho = s.norm() / (self.q + 1e-8)
                if rho > 1.01:
                    s = s * 1.01 / rho
            self.q = s.norm()
            upd = upd + c * s
        elif self.residual == "sign_sgd":
            upd = upd + self.alpha * self.s_i * torch.sign(g - back(rr, self.p, self.side))
        if self.decay_first:
            self.w = self.w * (1 - self.lr * self.wd)
        self.w = self.w - self.lr * upd
        if not self.decay_first:
            self.w = self.w - self.lr * self.wd * self.w


def lowrank_grads(shape, steps, seed=1, dtype=torch.float64):
    """Rank-4 gradients plus 10% noise: the top-r subspace is well separated."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(shape[0], 4, generator=gen, dtype=torch.float64)
    return [
        (a @ torch.randn(4, shape[1], generator=gen, dtype=torch.float64)
         + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
        for _ in range(steps)
    ]  # fmt: skip
