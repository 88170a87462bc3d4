"""GaLore (Zhao et al., 2024, "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
Projection", arXiv:2403.03507) and its 8-bit variant, as configurations of
``ProjectedOptimizer``: top-r SVD basis refreshed every T steps, inner AdamW on the projected
gradient, residual discarded, moments kept across refreshes.

Defaults: the official class defaults (jiaweizzhao/GaLore ``galore_torch/adamw.py`` and
``galore_projector.py``, 2cc66f8): lr 1e-3, betas (0.9, 0.999), eps 1e-6, weight_decay 0, rank
128, update_proj_gap 200, scale 1.0. The published scripts use lr 0.01, scale 0.25. One
deliberate difference: ``proj_type`` defaults to ``"reverse_std"``, the side that keeps the
moments on min(m, n) (22% of AdamW's state at r = d/4 on a LLaMA MLP instead of ~30%);
``proj_type="std"`` is the official side and reproduces galore-torch's trajectory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from optforge.lowrank.projected import ProjectedOptimizer

__all__ = ["GaLoreAdamW", "GaLoreAdamW8bit"]


class GaLoreAdamW(ProjectedOptimizer):
    """GaLore with AdamW inside: ``W ← W − η·α·back(AdamDir(proj(G)))``, decay after.

    Param-group keys as the official GaLore: ``rank`` (``None``: plain AdamW for that group),
    ``update_proj_gap``, ``scale``, ``proj_type``; every ``ProjectedOptimizer`` keyword too.
    Build the groups from a model with ``optforge.lowrank.galore_param_groups``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
        >>> opt = GaLoreAdamW(galore_param_groups(model, rank=8, target_modules=()), lr=1e-2)
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
        proj_type: str = "reverse_std",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, rank=rank, update_proj_gap=update_proj_gap,
            scale=scale, proj_type=proj_type, **kwargs,
        )  # fmt: skip


class GaLoreAdamW8bit(ProjectedOptimizer):
    """GaLore with bitsandbytes-style blockwise 8-bit Adam moments (pure torch: CPU and CUDA).

    Moment tensors of at least ``min_8bit_size`` (4096) elements are kept as uint8 codes of the
    dynamic map with one fp32 absmax per 256-block, as ``bitsandbytes.optim.AdamW8bit``
    (block_wise=True; no percentile clipping); smaller ones in fp32. Defaults from
    ``galore_torch/adamw8bit.py`` (bitsandbytes' ``AdamW8bit``): lr 1e-3, eps 1e-8,
    weight_decay 1e-2 applied before the step as bitsandbytes does.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        rank: int | None = 128,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        proj_type: str = "reverse_std",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("inner", "adam8bit")
        kwargs.setdefault("decay_before_update", True)
        super().__init__(
            params, lr, betas, eps, weight_decay, rank=rank, update_proj_gap=update_proj_gap,
            scale=scale, proj_type=proj_type, **kwargs,
        )  # fmt: skip
