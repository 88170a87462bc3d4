"""Check every configuration of a run before the first trial starts.

A typo in a search-space file (``"lr"`` for ``"learning_rate"``), a string among the
``feasible_points`` or a value out of range would otherwise fail inside every trial, each one
recorded as an error (and never retried). Here, before anything runs:

- names: each hyperparameter must be one the submission knows (for a ``RegistrySubmission``:
  its recipe keys and its optimizer's constructor arguments; for any submission: the names of
  its own search space and defaults, unless it accepts any name);
- values: for a ``RegistrySubmission``, each configuration builds its optimizer and schedule on
  a tiny model and takes one step, which runs the same checks a trial would.

Example::

    check_configurations({"adamw": [{"lr": 1e-3}]}, {"adamw": get_submission("adamw")})
    # ValueError: submission 'adamw' has no hyperparameter 'lr' (did you mean 'learning_rate'?) ...
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["check_configurations", "check_names", "known_hparams"]

# Set by the recipe itself (from learning_rate, weight_decay, beta1/beta2...), never by name.
_SET_BY_RECIPE = {"params", "lr", "weight_decay", "betas", "momentum"}


def known_hparams(submission: Any) -> set[str] | None:
    """Hyperparameter names ``submission`` accepts, or None when it accepts any."""
    from optforge.bench.submission import _RECIPE_KEYS, RegistrySubmission

    if isinstance(submission, RegistrySubmission):
        from optforge.registry import get_optimizer_entry

        try:
            sig = inspect.signature(get_optimizer_entry(submission.optimizer).factory)
        except (TypeError, ValueError):
            return None
        params = sig.parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        names = {p.name for p in params} - _SET_BY_RECIPE - set(submission.fixed_kwargs)
        return names | set(_RECIPE_KEYS)
    declared = set(getattr(submission, "search_space", {}) or {})
    declared |= set(getattr(submission, "default_hparams", {}) or {})
    return declared or None


def check_names(
    name: str, submission: Any, names: Iterable[str], also_known: Iterable[str] = ()
) -> None:
    """Raise ValueError for the first hyperparameter name ``submission`` does not know."""
    known = known_hparams(submission)
    if known is None:
        return
    known = known | set(also_known)
    unknown = sorted(set(names) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"submission {name!r} has no hyperparameter {unknown[0]!r}"
            f"{hint}; it knows {', '.join(sorted(known))}"
        )


class _Probe:
    """The part of a workload the registry recipe reads, around a tiny linear model."""

    name = "preflight"
    step_budget = 10

    @staticmethod
    def loss(model: nn.Module, batch: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return model(batch).square().mean()  # Workload.loss's signature; smoothing is moot


def _dry_run(submission: Any, hparams: Mapping[str, Any]) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
    gen = torch.Generator().manual_seed(0)
    state = submission.init_optimizer_state(_Probe, model, hparams, gen)
    submission.update_params(_Probe, model, hparams, torch.ones(4, 3), state, 0, gen)


def check_configurations(
    configs: Mapping[str, Iterable[Mapping[str, Any]]], submissions: Mapping[str, Any]
) -> None:
    """Raise ValueError naming the submission, the hyperparameter and the value at the first
    configuration (of ``configs[submission name]``) that a trial would refuse."""
    from optforge.bench.hparam_check import _WORKLOAD_SIDE
    from optforge.bench.submission import RegistrySubmission

    for name, sub_configs in configs.items():
        sub = submissions[name]
        seen: set[str] = set()
        for hp in sub_configs:
            check_names(name, sub, set(hp), also_known=_WORKLOAD_SIDE)
            key = json.dumps(hp, sort_keys=True, default=repr)
            if not isinstance(sub, RegistrySubmission) or key in seen:
                continue
            seen.add(key)
            try:
                _dry_run(sub, hp)
            except Exception as e:  # noqa: BLE001 - any refusal is reported the same way
                raise ValueError(
                    f"submission {name!r} refuses the configuration {hp}: {type(e).__name__}: {e}"
                ) from None


def probe_configs(space: Any, defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Configurations that reach every end of ``space`` (a ``SearchSpace``), each laid over
    ``defaults``: for tuners that choose configurations during the run (BO)."""
    if space.points is not None:
        return [{**defaults, **p} for p in space.points]
    out = []
    for name, spec in (space.ranges or {}).items():
        values = spec.get("feasible_points") or [spec["min"], spec["max"]]
        out += [{**defaults, name: v} for v in values]
    return out
