"""The low-rank optimizers of ``optforge.lowrank`` as harness submissions, with search spaces.

``LowRankSubmission`` is ``RegistrySubmission``'s recipe (warm-up + cosine, optional clipping)
with GaLore's parameter split: every ``nn.Linear`` weight whose module name contains neither
"head" nor "embed" is projected (``galore_param_groups``) and decayed; embeddings, the head,
norms and biases form a plain-AdamW group without decay. Search spaces centre on the official
scripts' values (lr 0.01 and scale 0.25 for GaLore and Fira; lr 1e-3 and ρ 0.25 for FRUGAL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from optforge._validation import check_in_range, check_non_negative, check_positive
from optforge.bench.submission import RegistrySubmission, cosine_warmup_factor
from optforge.bench.workload import Workload

__all__ = ["LowRankSubmission", "lowrank_submission"]

#: keys of the projected group (the rest of the hyperparameters go to the constructor)
_GROUP_KEYS = ("rank_fraction", "density", "scale", "update_proj_gap")


class LowRankSubmission(RegistrySubmission):
    """A registered ``optforge.lowrank`` optimizer with GaLore's parameter split.

    Extra hyperparameters: ``rank_fraction`` (rank = max(1, round(fraction·min(m, n))) of the
    model's smallest projected width), ``density`` (FRUGAL), ``scale``, ``update_proj_gap``.
    """

    def init_optimizer_state(self, workload: Workload, model: nn.Module,
                             hparams: Mapping[str, Any], rng: torch.Generator) -> dict[str, Any]:
        from optforge.lowrank import galore_param_groups
        from optforge.registry import get_optimizer_entry

        lr = check_positive("learning_rate", hparams["learning_rate"])
        wd = check_non_negative("weight_decay", hparams.get("weight_decay", 0.0))
        warmup = check_in_range("warmup_factor", hparams.get("warmup_factor", 0.05), 0.0, 1.0)
        clip = hparams.get("grad_clip_norm") or None
        projection = {k: hparams[k] for k in ("scale", "update_proj_gap", "density")
                      if k in hparams}  # fmt: skip
        rank = None
        if "density" not in projection:
            widths = [min(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]
            rank = max(1, round(hparams.get("rank_fraction", 0.25) * min(widths)))
        groups = galore_param_groups(model, rank, target_modules=(), exclude=("head", "embed"),
                                     weight_decay=wd, **projection)  # fmt: skip
        for g in groups[1:]:
            g["weight_decay"] = 0.0
        kwargs = {k: v for k, v in self.optimizer_kwargs(hparams).items() if k not in _GROUP_KEYS}
        opt = get_optimizer_entry(self.optimizer).factory(groups, lr=lr, **kwargs)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: cosine_warmup_factor(step, workload.step_budget, warmup)
        )
        return {"optimizer": opt, "scheduler": sched, "grad_clip_norm": clip}


_COMMON = {
    "one_minus_beta1": {"min": 0.02, "max": 0.2, "scaling": "log"},
    "beta2": {"feasible_points": [0.99, 0.999]},
    "weight_decay": {"min": 1e-3, "max": 0.5, "scaling": "log"},
    "warmup_factor": {"feasible_points": [0.02, 0.05, 0.1]},
    "update_proj_gap": {"feasible_points": [50, 200]},
}
_POINT = {"one_minus_beta1": 0.1, "beta2": 0.999, "weight_decay": 0.0, "warmup_factor": 0.05,
          "update_proj_gap": 200}  # fmt: skip


def _projected(name: str, optimizer: str, description: str) -> LowRankSubmission:
    return LowRankSubmission(
        name, optimizer,
        search_space={**_COMMON,
                      "learning_rate": {"min": 1e-3, "max": 3e-2, "scaling": "log"},
                      "scale": {"feasible_points": [0.125, 0.25, 0.5, 1.0]},
                      "rank_fraction": {"feasible_points": [0.125, 0.25, 0.5]}},
        default_hparams={**_POINT, "learning_rate": 1e-2, "scale": 0.25, "rank_fraction": 0.25},
        description=description,
    )  # fmt: skip


def _frugal() -> LowRankSubmission:
    return LowRankSubmission(
        "frugal", "frugal",
        search_space={**_COMMON,
                      "learning_rate": {"min": 2e-4, "max": 1e-2, "scaling": "log"},
                      "density": {"feasible_points": [0.125, 0.25, 0.5]}},
        default_hparams={**_POINT, "learning_rate": 1e-3, "density": 0.25},
        description="FRUGAL (Zmushko et al., 2024): Adam on ρ of each matrix, signSGD on the rest",
    )  # fmt: skip


_DESCRIPTIONS = {
    "galore_adamw": "GaLore (Zhao et al., 2024), warm-up + cosine",
    "fira_adamw": "Fira (Chen et al., 2024): GaLore + scaled residual",
}


def lowrank_submission(name: str) -> LowRankSubmission:
    """The ``"galore_adamw"``, ``"fira_adamw"`` or ``"frugal"`` submission."""
    if name == "frugal":
        return _frugal()
    if name not in _DESCRIPTIONS:
        raise ValueError(f"no low-rank submission {name!r}; known: "
                         f"{sorted([*_DESCRIPTIONS, 'frugal'])}")
    return _projected(name, name, _DESCRIPTIONS[name])
