"""Fira (Chen et al., 2024, "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank
Constraint?", arXiv:2410.01623) as a configuration of ``ProjectedOptimizer``: GaLore plus the
out-of-subspace residual scaled by the per-row/column ratio φ = ‖N‖/‖R‖ of the Adam update to
the projected gradient, with the norm-growth limiter (γ = 1.01).

``residual="fira"`` is the official rule (xichen-fy/Fira ``optimizer_torch/fira_adamw.py``,
5c28b13): the residual is ``G − α·back(proj G)``, so with α < 1 it still holds (1 − α) of the
in-subspace gradient. ``residual="fira_orthogonal"`` uses the clean ``(I − PPᵀ)G``.
Defaults: lr 1e-3, eps 1e-6, weight_decay 0 (README: "Adam by default"), scale 0.25 (the
scripts' value up to 350M; 0.0625 for 1B and 7B), rank 128, update_proj_gap 200.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from optforge.lowrank.projected import ProjectedOptimizer

__all__ = ["FiraAdamW"]


class FiraAdamW(ProjectedOptimizer):
    """Fira: ``W ← W − η_k·(α·back(N) + limit(φ ⊙ (G − α·back(R))))`` (see the module docstring).

    Example:
        >>> model = torch.nn.Linear(64, 32)
        >>> opt = FiraAdamW(model.parameters(), lr=1e-2, rank=8)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        rank: int | None = 128,
        update_proj_gap: int = 200,
        scale: float = 0.25,
        proj_type: str = "reverse_std",
        residual: str = "fira",
        **kwargs: Any,
    ) -> None:
        if residual not in ("fira", "fira_orthogonal"):
            raise ValueError(f"residual must be 'fira' or 'fira_orthogonal' (got {residual!r})")
        super().__init__(
            params, lr, betas, eps, weight_decay, rank=rank, update_proj_gap=update_proj_gap,
            scale=scale, proj_type=proj_type, residual=residual, **kwargs,
        )  # fmt: skip
