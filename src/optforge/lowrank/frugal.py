"""FRUGAL (Zmushko et al., 2024, "FRUGAL: Memory-Efficient Optimization by Reducing State
Overhead for Scalable Training", arXiv:2411.07837) as a configuration of ``ProjectedOptimizer``:
state-full AdamW on a density-ρ subspace of each projectable matrix, state-free signSGD (or SGD)
on the rest of its gradient, moments reset at every subspace switch.

Defaults from the official code (hungquangbui02022003/FRUGAL ``frugal/proj_optimizer_templates.py``,
c7ebe4c): lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01 applied before the update,
density 0.25, update_gap 200, reset_statistics True, proj_params_lr_scale 1.0 (``scale``),
inactive_update_rule "sign_sgd" (``residual``), inactive_lr_scale 1.0 (``residual_scale``; 0.1
for fine-tuning). Projector: ``"svd"`` (GaLore-type), ``"random"``, or ``"columns"`` (Coord-type
column/row selection). The Block-type variant (whole tensors active) is not provided.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from optforge.lowrank.projected import ProjectedOptimizer

__all__ = ["FRUGAL"]


class FRUGAL(ProjectedOptimizer):
    """FRUGAL: ``u = −η·s_p·(back(AdamDir(proj G)) + s_i·sign(G − back(proj G)))``.

    Example:
        >>> model = torch.nn.Linear(64, 32)
        >>> opt = FRUGAL(model.parameters(), lr=1e-3, density=0.25, projector="columns")
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        density: float | None = 0.25,
        rank: int | None = None,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        proj_type: str = "reverse_std",
        projector: str = "svd",
        residual: str = "sign_sgd",
        residual_scale: float = 1.0,
        on_switch: str = "reset",
        decay_before_update: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, rank=rank, density=density,
            update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
            projector=projector, residual=residual, residual_scale=residual_scale,
            on_switch=on_switch, decay_before_update=decay_before_update, **kwargs,
        )  # fmt: skip
