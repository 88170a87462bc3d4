"""Optimizers by name: ``create_optimizer("lion", model, lr=3e-4, weight_decay=1.0)``.

``create_optimizer`` builds two param groups from a model, decayed and not decayed, the way
training recipes do (biases and normalization weights are usually excluded from weight decay).
torch's own optimizers are registered too, so a config file can name any of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = [
    "OptimizerEntry",
    "create_optimizer",
    "decay_param_groups",
    "list_optimizers",
    "register_optimizer",
]


@dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimizer: how to build it and where its defaults come from."""

    name: str
    factory: Callable[..., Optimizer]
    description: str = ""


_REGISTRY: dict[str, OptimizerEntry] = {}


def register_optimizer(
    name: str, factory: Callable[..., Optimizer], *, description: str = "", overwrite: bool = False
) -> None:
    """Make ``factory(params, **hyperparameters)`` available as ``create_optimizer(name, ...)``."""
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"an optimizer named {name!r} is already registered (pass overwrite=True)")
    _REGISTRY[key] = OptimizerEntry(key, factory, description)


def list_optimizers() -> list[str]:
    """Names accepted by ``create_optimizer``, sorted."""
    return sorted(_REGISTRY)


def get_optimizer_entry(name: str) -> OptimizerEntry:
    key = name.lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown optimizer {name!r}{hint} Known: {', '.join(list_optimizers())}")
    return _REGISTRY[key]


def _is_no_decay(name: str, module: nn.Module, patterns: Sequence[str]) -> bool:
    haystacks = (name.lower(), type(module).__name__.lower())
    return any(pat.lower() in hay for pat in patterns for hay in haystacks)


def decay_param_groups(
    model: nn.Module, weight_decay: float, no_decay: Sequence[str] = ("bias", "norm")
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed group and a ``weight_decay=0`` group.

    A parameter is not decayed when a pattern occurs (case-insensitively) in its qualified name
    or in the class name of the module that owns it: ``"norm"`` catches ``LayerNorm``,
    ``BatchNorm2d``, ``RMSNorm`` and ``GroupNorm`` weights whatever the attribute is called.
    Shared parameters are counted once. Empty groups are dropped.
    """
    decay, skip, seen = [], [], set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{pname}" if module_name else pname
            (skip if _is_no_decay(full, module, no_decay) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": skip, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def create_optimizer(
    name: str,
    model_or_params: nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float | None = None,
    weight_decay: float | None = None,
    no_decay: Sequence[str] = ("bias", "norm"),
    **kwargs: Any,
) -> Optimizer:
    """Build the optimizer registered as ``name``.

    Args:
        name: one of ``list_optimizers()`` (case-insensitive).
        model_or_params: a module (decay and no-decay groups are built from parameter names,
            see ``decay_param_groups``), or parameters / param groups passed through as given.
        lr: learning rate; ``None`` keeps the optimizer's own default.
        weight_decay: ``None`` keeps the optimizer's default (and builds no groups).
        no_decay: name patterns excluded from weight decay when a module is given.
        **kwargs: further hyperparameters of that optimizer.

    Example:
        >>> opt = create_optimizer("lion", torch.nn.Linear(4, 2), lr=1e-4, weight_decay=1.0)
    """
    entry = get_optimizer_entry(name)
    if lr is not None:
        kwargs["lr"] = lr
    if isinstance(model_or_params, nn.Module):
        if weight_decay is None:
            params: Any = [p for p in model_or_params.parameters() if p.requires_grad]
        else:
            params = decay_param_groups(model_or_params, weight_decay, no_decay)
            kwargs["weight_decay"] = weight_decay
    else:
        params = list(model_or_params)
        if weight_decay is not None:
            kwargs["weight_decay"] = weight_decay
    return entry.factory(params, **kwargs)


def _register_builtins() -> None:
    from optforge.optim.lamb import LAMB
    from optforge.optim.lars import LARS
    from optforge.optim.lion import Lion

    torch_optims: dict[str, tuple[Callable[..., Optimizer], str]] = {
        "adamw": (torch.optim.AdamW, "torch.optim.AdamW"),
        "adam": (torch.optim.Adam, "torch.optim.Adam"),
        "sgd": (torch.optim.SGD, "torch.optim.SGD"),
        "nadam": (torch.optim.NAdam, "torch.optim.NAdam"),
        "nadamw": (
            lambda params, **kw: torch.optim.NAdam(params, decoupled_weight_decay=True, **kw),
            "torch.optim.NAdam with decoupled weight decay (AlgoPerf's NAdamW baseline)",
        ),
        "rmsprop": (torch.optim.RMSprop, "torch.optim.RMSprop"),
        "adagrad": (torch.optim.Adagrad, "torch.optim.Adagrad"),
        "lion": (Lion, "optforge.optim.Lion (Chen et al., 2023)"),
        "lamb": (LAMB, "optforge.optim.LAMB (You et al., 2020)"),
        "lars": (LARS, "optforge.optim.LARS (You et al., 2017)"),
    }
    for name, (factory, description) in torch_optims.items():
        register_optimizer(name, factory, description=description)


_register_builtins()
