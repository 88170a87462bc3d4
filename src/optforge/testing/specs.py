"""The optimizer database that drives the conformance suite (one entry per optimizer).

Adding an optimizer to optforge means adding one ``OptimSpec`` here; test_conformance.py then
checks param groups, closures, maximize, resume, bad input, dtypes and backends for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from optforge.optim import AGVM, LAMB, LARS, GradientNoise, Lion


@dataclass
class OptimSpec:
    name: str
    factory: Callable[..., torch.optim.Optimizer]
    configs: list[dict[str, Any]]
    errors: list[tuple[dict[str, Any], type[Exception], str]] = field(default_factory=list)
    impls: tuple[str, ...] = ("loop",)  # backends: "loop", "foreach", "fused"
    forge: bool = True  # an optforge optimizer: check_finite, foreign-state rejection, ...
    #: config keys that couple param groups by design (e.g. LAMB's global gradient clipping)
    coupling_keys: tuple[str, ...] = ()
    #: the wrapper itself couples groups (gradient noise streams are keyed by global index)
    coupled: bool = False

    def __repr__(self) -> str:
        return self.name


def _agvm_sgd(params: Any, **kw: Any) -> AGVM:
    # Outside its window AGVM is a transparent wrapper; its own tests cover the modulation.
    return AGVM(torch.optim.SGD(params, **kw), start_iter=10**9)


def _noisy_sgd(params: Any, **kw: Any) -> GradientNoise:
    noise = {k: kw.pop(k) for k in ("eta", "gamma", "seed") if k in kw}
    return GradientNoise(torch.optim.SGD(params, **kw), **noise)


_COMMON_ERRORS = [
    ({"lr": -1.0}, ValueError, r"lr must be >= 0 \(got -1.0\)"),
    ({"lr": float("nan")}, ValueError, r"lr must be finite"),
]

OPTIMIZERS = [
    OptimSpec(
        "Lion",
        Lion,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.5},
            {"lr": 1e-2, "betas": (0.95, 0.98)},
        ],
        errors=_COMMON_ERRORS
        + [
            ({"betas": (1.0, 0.99)}, ValueError, r"betas\[0\] must be in \[0.0, 1.0\) \(got 1.0\)"),
            ({"betas": (0.9, -0.1)}, ValueError, r"betas\[1\] must be in \[0.0, 1.0\)"),
            ({"betas": 0.9}, TypeError, r"betas must be a pair"),
            ({"weight_decay": -1.0}, ValueError, r"weight_decay must be >= 0"),
            ({"foreach": True, "fused": True}, ValueError, r"mutually exclusive"),
        ],
        impls=("loop", "foreach", "fused"),
    ),
    OptimSpec(
        "LAMB",
        LAMB,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "bias_correction": False, "max_weight_norm": 10.0},
            {"lr": 1e-2, "max_grad_norm": 1.0, "adapt_no_decay": False, "weight_decay": 0.0},
            {"lr": 1e-2, "max_trust_ratio": 1.0},
        ],
        errors=_COMMON_ERRORS
        + [
            ({"eps": 0.0}, ValueError, r"eps must be > 0 \(got 0.0\)"),
            ({"betas": (0.9, 1.5)}, ValueError, r"betas\[1\] must be in \[0.0, 1.0\)"),
            ({"max_grad_norm": -1.0}, ValueError, r"max_grad_norm must be > 0"),
            ({"max_trust_ratio": 0.0}, ValueError, r"max_trust_ratio must be > 0"),
        ],
        impls=("loop", "fused"),
        coupling_keys=("max_grad_norm",),
    ),
    OptimSpec(
        "LARS",
        LARS,
        configs=[
            {"lr": 0.5},
            {"lr": 0.5, "weight_decay": 1e-2, "eps": 1e-8},
            {"lr": 0.5, "momentum": 0.0},
        ],
        errors=[
            ({"lr": -1.0}, ValueError, r"lr must be >= 0 \(got -1.0\)"),
            ({"lr": 0.1, "momentum": 1.0}, ValueError, r"momentum must be in \[0.0, 1.0\)"),
            ({"lr": 0.1, "trust_coefficient": 0.0}, ValueError, r"trust_coefficient must be > 0"),
            ({"lr": 0.1, "eps": -1.0}, ValueError, r"eps must be >= 0"),
        ],
        impls=("loop", "fused"),
    ),
    OptimSpec(
        "GradientNoise(SGD)",
        _noisy_sgd,
        configs=[{"lr": 0.05, "eta": 0.01}, {"lr": 0.05, "momentum": 0.9, "eta": 0.3, "seed": 7}],
        errors=[
            ({"lr": 0.1, "eta": -1.0}, ValueError, r"eta must be >= 0 \(got -1.0\)"),
            ({"lr": 0.1, "gamma": float("inf")}, ValueError, r"gamma must be finite"),
            ({"lr": 0.1, "seed": 1.5}, TypeError, r"seed must be an int"),
        ],
        forge=False,
        coupled=True,
    ),
    OptimSpec(
        "AGVM(SGD)",
        _agvm_sgd,
        configs=[{"lr": 0.05, "momentum": 0.9}],
        forge=False,
    ),
]
