"""Param groups for a projected optimizer, built from a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from optforge.lowrank.int8 import Int8Linear, is_float_linear

__all__ = ["galore_param_groups"]


def galore_param_groups(
    model: nn.Module,
    rank: int | None = 128,
    *,
    target_modules: Sequence[str] = ("attn", "mlp"),
    module_types: tuple[type[nn.Module], ...] | None = None,
    exclude: Sequence[str] = ("lm_head", "embed"),
    **projection: Any,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a projected group and a plain-AdamW group.

    A weight is projected when its module is an instance of ``module_types`` (default: a
    linear layer, that is ``nn.Linear``, Hugging Face's ``Conv1D`` or an ``Int8Linear`` made by
    ``quantize_linear_weights``), its qualified module name contains one of ``target_modules``
    (case-insensitive; an empty sequence matches every module) and none of ``exclude``, and it
    has at least 2 dims. GaLore's pretraining script projects the ``nn.Linear`` weights of
    modules named "attn" or "mlp"; embeddings, the LM head, norms and biases get plain AdamW
    (``rank=None``).

    Args:
        model: the module.
        rank: the projected group's rank.
        target_modules, module_types, exclude: which weights are projected.
        **projection: further keys of the projected group (``update_proj_gap``, ``scale``,
            ``proj_type``, ``density``, ...).

    Returns:
        ``[{"params": projected, "rank": rank, **projection}, {"params": rest, "rank": None}]``
        without an empty plain group.

    Raises:
        ValueError: no weight is projected (the optimizer would be plain AdamW).
    """
    if rank is None and projection.get("density") is None:
        raise ValueError("rank (or density) must be set for the projected group")

    def is_type(module: nn.Module) -> bool:
        if module_types is None:
            return is_float_linear(module) or isinstance(module, Int8Linear)
        return isinstance(module, module_types)

    projected, rest, seen = [], [], set()
    for module_name, module in model.named_modules():
        name = module_name.lower()
        wanted = (
            is_type(module)
            and (not target_modules or any(t.lower() in name for t in target_modules))
            and not any(e.lower() in name for e in exclude)
        )
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (projected if wanted and p.dim() >= 2 and pname == "weight" else rest).append(p)
    if not projected:
        kinds = "linear" if module_types is None else "/".join(m.__name__ for m in module_types)
        raise ValueError(
            f"no trainable {kinds} weight of the model matches target_modules="
            f"{tuple(target_modules)} minus exclude={tuple(exclude)}: nothing to project"
        )
    groups = [
        {"params": projected, "rank": rank, **projection},
        {"params": rest, "rank": None, "density": None},
    ]
    return [g for g in groups if g["params"]]
