"""Optimizers by name: ``create_optimizer("lion", model, lr=3e-4, weight_decay=1.0)``.

``create_optimizer`` builds two param groups from a model, decayed and not decayed, the way
training recipes do (biases and normalization weights are usually excluded from weight decay).
torch's own optimizers are registered too, so a config file can name any of them.

Entries are lazy: an entry names its class as ``"module:attribute"`` and is imported on first
use, so every subpackage (``optim``, ``lowrank``, ``zo``) registers here without import cycles
and ``list_optimizers()`` imports none of them. Each entry carries its ``Capabilities``, which
drive ``optforge.testing``'s conformance suite.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = [
    "Capabilities",
    "OptimizerEntry",
    "create_optimizer",
    "decay_param_groups",
    "list_optimizers",
    "register_optimizer",
]


@dataclass(frozen=True)
class Capabilities:
    """What an optimizer can do; the conformance suite checks each contract that applies.

    Attributes:
        uses_gradients: reads ``p.grad`` (False for zeroth-order methods).
        needs_closure: ``step()`` requires a closure that returns the loss.
        supports_complex: complex parameters are optimized as ``torch.view_as_real`` would be.
        state_dtypes: state dtype per parameter dtype, e.g. ``"param"`` or ``"fp32"`` (docs).
        backends: the ``backend=`` values it accepts besides ``"auto"``.
        exact_resume: a checkpoint round trip continues the run bit for bit on CPU.
    """

    uses_gradients: bool = True
    needs_closure: bool = False
    supports_complex: bool = False
    state_dtypes: str = "param"
    backends: tuple[str, ...] = ()
    exact_resume: bool = True


@dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimizer: how to build it, what it can do, where its defaults come from."""

    name: str
    target: str | Callable[..., Optimizer]
    description: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)

    @property
    def factory(self) -> Callable[..., Optimizer]:
        """The class or function, imported on first use when given as ``"module:attribute"``."""
        if callable(self.target):
            return self.target
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, OptimizerEntry] = {}


def register_optimizer(
    name: str,
    factory: str | Callable[..., Optimizer],
    *,
    description: str = "",
    capabilities: Capabilities | None = None,
    overwrite: bool = False,
) -> None:
    """Make ``factory(params, **hyperparameters)`` available as ``create_optimizer(name, ...)``.

    ``factory`` is a callable or a lazy ``"module:attribute"`` string.
    """
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"an optimizer named {name!r} is already registered (pass overwrite=True)")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise TypeError(f"factory must be a callable or 'module:attribute' (got {factory!r})")
    _REGISTRY[key] = OptimizerEntry(key, factory, description, capabilities or Capabilities())


def list_optimizers() -> list[str]:
    """Names accepted by ``create_optimizer``, sorted."""
    return sorted(_REGISTRY)


def get_optimizer_entry(name: str) -> OptimizerEntry:
    """The entry registered as ``name`` (case-insensitive); a close-match hint otherwise."""
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
    forge = Capabilities(supports_complex=True, backends=("loop", "compiled"))
    torch_optims = {
        "adamw": ("torch.optim:AdamW", "torch.optim.AdamW"),
        "adam": ("torch.optim:Adam", "torch.optim.Adam"),
        "sgd": ("torch.optim:SGD", "torch.optim.SGD"),
        "nadam": ("torch.optim:NAdam", "torch.optim.NAdam"),
        "nadamw": (
            _nadamw,
            "torch.optim.NAdam with decoupled weight decay (AlgoPerf's NAdamW baseline)",
        ),
        "rmsprop": ("torch.optim:RMSprop", "torch.optim.RMSprop"),
        "adagrad": ("torch.optim:Adagrad", "torch.optim.Adagrad"),
    }
    for name, (target, description) in torch_optims.items():
        register_optimizer(name, target, description=description)
    register_optimizer(
        "lion",
        "optforge.optim.lion:Lion",
        description="optforge.optim.Lion (Chen et al., 2023)",
        capabilities=Capabilities(supports_complex=True, backends=("loop", "foreach", "compiled")),
    )
    register_optimizer(
        "lamb",
        "optforge.optim.lamb:LAMB",
        description="optforge.optim.LAMB (You et al., 2020)",
        capabilities=Capabilities(
            supports_complex=True, state_dtypes="param; step fp32 on CPU", backends=forge.backends
        ),
    )
    # Same convention: "adamw" stays torch.optim.AdamW (the harness's AdamW baseline and its
    # recorded results use it); optforge's, on the written-once rule, is "optforge_adamw".
    register_optimizer(
        "optforge_adamw",
        "optforge.optim.adamw:AdamW",
        description="optforge.optim.AdamW (Loshchilov and Hutter, 2019): torch.optim.AdamW's "
        "defaults on optforge's backends and Triton kernel, with master weights and stochastic "
        "rounding for bf16 parameters",
        capabilities=Capabilities(
            supports_complex=True,
            state_dtypes="fp32 moments (and fp32 master with master_weights) for bf16/fp16 "
            "params, the param's dtype otherwise; step fp32 on CPU",
            backends=("loop", "foreach", "compiled"),
        ),
    )
    # "sgd" stays torch.optim.SGD (the plain names are torch's classes, and the harness's
    # sgd_momentum baseline with its recorded results uses it); optforge's drop-in, on the
    # rule and kernels of optforge.kernels, is "optforge_sgd".
    register_optimizer(
        "optforge_sgd",
        "optforge.optim.sgd:SGD",
        description="optforge.optim.SGD: torch.optim.SGD's semantics (Polyak momentum, "
        "Sutskever et al.'s Nesterov) on optforge's backends and Triton kernel",
        capabilities=Capabilities(supports_complex=True, backends=("loop", "foreach", "compiled")),
    )
    register_optimizer(
        "lars",
        "optforge.optim.lars:LARS",
        description="optforge.optim.LARS (You et al., 2017)",
        capabilities=forge,
    )
    # backends: of the inner Adam (the projections and residuals run eagerly on every one)
    lowrank = Capabilities(state_dtypes="fp32 moments and bases for 16-bit params; int counters",
                           backends=("loop", "foreach"))
    lowrank_8bit = Capabilities(state_dtypes="uint8 moments + fp32 absmax; fp32 bases; counters",
                                backends=("loop", "foreach"))
    for name, target, description, caps in (
        ("galore_adamw", "galore:GaLoreAdamW", "GaLore (Zhao et al., 2024)", lowrank),
        ("galore_adamw8bit", "galore:GaLoreAdamW8bit", "GaLore, 8-bit Adam", lowrank_8bit),
        ("qgalore_adamw8bit", "qgalore:QGaLoreAdamW8bit", "Q-GaLore (2024)", lowrank_8bit),
        ("natural_galore_adamw", "natural_galore:NaturalGaLoreAdamW", "Natural GaLore", lowrank),
        ("fira_adamw", "fira:FiraAdamW", "Fira (Chen et al., 2024)", lowrank),
        ("frugal", "frugal:FRUGAL", "FRUGAL (Zmushko et al., 2024)", lowrank),
    ):
        register_optimizer(
            name,
            f"optforge.lowrank.{target}",
            description=f"optforge.lowrank: {description}",
            capabilities=caps,
        )
    eightbit = Capabilities(
        state_dtypes="uint8 codes + fp32 absmax per 256 (tensors >= min_8bit_size); fp32 else",
        backends=("loop", "compiled"),
    )
    register_optimizer(
        "adamw8bit",
        "optforge.optim.eightbit:AdamW8bit",
        description="optforge.optim.AdamW8bit (8-bit blockwise moments, Dettmers et al., 2022)",
        capabilities=eightbit,
    )
    register_optimizer(
        "lion8bit",
        "optforge.optim.eightbit:Lion8bit",
        description="optforge.optim.Lion8bit (8-bit blockwise momentum)",
        capabilities=eightbit,
    )
    zo = Capabilities(
        uses_gradients=False, needs_closure=True, state_dtypes="step int64 on CPU; fp32 masters "
        "for bf16/fp16 params; fp32 moments"
    )
    register_optimizer(
        "mezo",
        "optforge.zo.mezo:MeZO",
        description="optforge.zo.MeZO (Malladi et al., 2023) and ZO-Bench's SGD/sign/momentum/"
        "conservative variants",
        capabilities=zo,
    )
    register_optimizer(
        "zoadam",
        "optforge.zo.mezo:ZOAdam",
        description="optforge.zo.ZOAdam: Adam on MeZO's estimate (ZO-Bench, 2024)",
        capabilities=zo,
    )
    register_optimizer(
        "deepzero",
        "optforge.zo.deepzero:DeepZero",
        description="optforge.zo.DeepZero: sparse coordinate-wise estimation (Chen et al., 2024)",
        capabilities=Capabilities(uses_gradients=False, needs_closure=True,
                                  state_dtypes="step int64 on CPU; fp32 momentum"),
    )


def _nadamw(params: Any, **kwargs: Any) -> Optimizer:
    return torch.optim.NAdam(params, decoupled_weight_decay=True, **kwargs)


_register_builtins()
