"""Natural GaLore (Das, 2024, "Natural GaLore: Accelerating GaLore for memory-efficient LLM
Training and Fine-tuning", arXiv:2410.16029) as a configuration of ``ProjectedOptimizer``: a
two-sided basis (for a 2-D weight, U and V from the SVD, which is what the official Tucker
decomposition gives on a matrix), the r×r core c transformed into ``(δI + H Hᵀ)⁻¹ c`` by the
Woodbury identity over the last s cores (the current one included), then Adam.

Defaults from selfsupervised-ai/Natural-GaLore ``subspace_adamw.py`` (e23336d): lr 1e-3, betas
(0.9, 0.999), eps 1e-6, weight_decay 0, natural_history s = 20, δ = 1e-3 (hard-coded there,
``natural_damping`` here), proj_type ``"full"``. State per m×n matrix: 2r² moments + (m+n)·r
basis + s·r² history floats (more than GaLore's for s = 20; the paper's memory column copies
GaLore's).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from optforge.lowrank.projected import ProjectedOptimizer

__all__ = ["NaturalGaLoreAdamW"]


class NaturalGaLoreAdamW(ProjectedOptimizer):
    """Natural GaLore: Adam on the Woodbury natural gradient of the two-sided projection.

    Example:
        >>> model = torch.nn.Linear(64, 32)
        >>> opt = NaturalGaLoreAdamW(model.parameters(), lr=1e-3, rank=8)
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
        scale: float = 1.0,
        proj_type: str = "full",
        natural_history: int = 20,
        natural_damping: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        if natural_history < 1:
            raise ValueError(f"natural_history must be >= 1 (got {natural_history})")
        super().__init__(
            params, lr, betas, eps, weight_decay, rank=rank, update_proj_gap=update_proj_gap,
            scale=scale, proj_type=proj_type, natural_history=natural_history,
            natural_damping=natural_damping, **kwargs,
        )  # fmt: skip
