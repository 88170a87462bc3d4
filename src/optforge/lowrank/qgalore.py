"""Q-GaLore (Zhang et al., 2024, "Q-GaLore: Quantized GaLore with INT4 Projection and
Layer-Adaptive Low-Rank Gradients", arXiv:2407.08296) as a configuration of
``ProjectedOptimizer``: GaLore with 8-bit blockwise Adam moments, the basis quantized to 4 bits
(groups of 256, round-to-nearest), projected weights kept on an 8-bit group grid by stochastic
rounding, and the adaptive gap (|cos| of the first basis vector across refreshes in a FIFO of 5;
mean ≥ 0.4 doubles T).

Defaults from VITA-Group/Q-GaLore (5bd2f1c) ``q_galore_adamw8bit.py`` and the script flags
``--proj_bits 4 --proj_group_size 256 --weight_bits 8 --weight_group_size 256 --cos_threshold
0.4 --gamma_proj 2 --queue_size 5``: lr 1e-3, betas (0.9, 0.999) (scripts: β2 0.95), eps 1e-8,
weight_decay 1e-2 before the step (bitsandbytes), rank 128, update_proj_gap 200, scale 1.0.

Weights: stored as INT8 codes + per-group scales when the model's linear layers were swapped
by ``quantize_linear_weights`` (``optforge.lowrank.int8``); otherwise the parameter keeps its
dtype, with values on the 8-bit grid of its groups (the same rounding, without the saving).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from optforge.lowrank.projected import ProjectedOptimizer

__all__ = ["QGaLoreAdamW8bit"]


class QGaLoreAdamW8bit(ProjectedOptimizer):
    """Q-GaLore: INT4 basis, 8-bit Adam, stochastic-rounded 8-bit weights, adaptive gap.

    Example:
        >>> model = quantize_linear_weights(torch.nn.Sequential(torch.nn.Linear(64, 32)),
        ...                                 target_modules=())
        >>> opt = QGaLoreAdamW8bit(model.parameters(), lr=1e-3, rank=8)
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
        proj_bits: int | None = 4,
        weight_bits: int | None = 8,
        adaptive_gap: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("inner", "adam8bit")
        kwargs.setdefault("decay_before_update", True)
        super().__init__(
            params, lr, betas, eps, weight_decay, rank=rank, update_proj_gap=update_proj_gap,
            scale=scale, proj_type=proj_type, proj_bits=proj_bits, weight_bits=weight_bits,
            adaptive_gap=adaptive_gap, **kwargs,
        )  # fmt: skip
