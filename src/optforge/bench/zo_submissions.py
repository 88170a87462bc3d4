"""Zeroth-order submissions for the harness: MeZO and ZO-Adam on the baseline recipe.

The recipe is ``RegistrySubmission``'s (warm-up + cosine schedule, weight decay without biases
and norms), with the step taken from loss values only: ``update_params`` evaluates the
workload's loss in eval mode inside the optimizer's closure (two forwards per step, no
backward), so the ± passes see the same model. Gradient clipping has nothing to clip and is
refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from optforge.bench.submission import RegistrySubmission
from optforge.bench.workload import Workload

__all__ = ["ZeroOrderSubmission", "zo_submission"]


class ZeroOrderSubmission(RegistrySubmission):
    """A ``RegistrySubmission`` whose optimizer steps on a loss closure (no backward)."""

    def init_optimizer_state(self, workload: Workload, model: nn.Module,
                             hparams: Mapping[str, Any], rng: torch.Generator) -> dict[str, Any]:
        if hparams.get("grad_clip_norm"):
            raise ValueError(f"{self.name!r} uses no gradients: grad_clip_norm must be unset")
        return super().init_optimizer_state(workload, model, hparams, rng)

    def update_params(self, workload: Workload, model: nn.Module, hparams: Mapping[str, Any],
                      batch: Any, optimizer_state: dict[str, Any], global_step: int,
                      rng: torch.Generator) -> dict[str, Any]:
        opt = optimizer_state["optimizer"]
        model.eval()
        loss = opt.step(lambda: workload.loss(model, batch))
        optimizer_state["scheduler"].step()
        optimizer_state["loss"] = loss.detach().float()
        return optimizer_state


# MeZO's own grids are for fine-tuning pretrained models (lr 1e-7..1e-5, reference/zo.md §1.2);
# the harness trains small networks from scratch, where ZO steps may be far larger (the stable
# step is η_SGD·n/(d+n−1)): the spaces span both.
_SPACES = {
    "mezo": {
        "learning_rate": {"min": 1e-6, "max": 1e-2, "scaling": "log"},
        "eps": {"feasible_points": [1e-3, 1e-2]},
        "warmup_factor": {"feasible_points": [0.0, 0.05]},
    },
    "zoadam": {
        "learning_rate": {"min": 1e-5, "max": 1e-2, "scaling": "log"},
        "eps": {"feasible_points": [1e-3, 1e-2]},
        "warmup_factor": {"feasible_points": [0.0, 0.05]},
    },
}
_DEFAULTS = {
    "mezo": {"learning_rate": 1e-4, "eps": 1e-3, "weight_decay": 0.0, "warmup_factor": 0.0},
    "zoadam": {"learning_rate": 1e-3, "eps": 1e-3, "weight_decay": 0.0, "warmup_factor": 0.0},
}
_DESCRIPTIONS = {
    "mezo": "MeZO (Malladi et al., 2023): SPSA with the seed trick, forward passes only",
    "zoadam": "ZO-Adam (ZO-Bench, 2024): Adam on MeZO's estimate, forward passes only",
}


def zo_submission(name: str) -> ZeroOrderSubmission:
    """The ``"mezo"`` or ``"zoadam"`` submission."""
    if name not in _SPACES:
        raise ValueError(f"no zeroth-order submission {name!r}; known: {sorted(_SPACES)}")
    return ZeroOrderSubmission(name, name, search_space=_SPACES[name],
                               default_hparams=_DEFAULTS[name], description=_DESCRIPTIONS[name])
