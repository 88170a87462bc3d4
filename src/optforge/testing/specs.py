"""optforge's own optimizers as conformance ``Spec``s: one entry per optimizer.

Adding an optimizer to optforge means adding one ``Spec`` here (capabilities come from its
registry entry); the conformance suite then checks it. ``SPECS`` covers every optforge entry of
the registry plus the wrappers, which wrap torch's SGD.
"""

from __future__ import annotations

from typing import Any

import torch

from optforge.lowrank import (
    FRUGAL,
    FiraAdamW,
    GaLoreAdamW,
    GaLoreAdamW8bit,
    NaturalGaLoreAdamW,
    QGaLoreAdamW8bit,
)
from optforge.optim import (
    AGVM,
    LAMB,
    LARS,
    SGD,
    AdamW,
    AdamW8bit,
    GradientNoise,
    Lion,
    Lion8bit,
)
from optforge.registry import Capabilities, get_optimizer_entry
from optforge.testing.conformance import Spec

__all__ = ["SPECS"]


def _agvm_sgd(params: Any, **kw: Any) -> AGVM:
    # Outside its window AGVM is a transparent wrapper; its own tests cover the modulation.
    return AGVM(torch.optim.SGD(params, **kw), start_iter=10**9)


def _noisy_sgd(params: Any, **kw: Any) -> GradientNoise:
    noise = {k: kw.pop(k) for k in ("eta", "gamma", "seed") if k in kw}
    return GradientNoise(torch.optim.SGD(params, **kw), **noise)


def _mezo(params: Any, **kw: Any) -> Any:
    from optforge.zo import MeZO  # lazy: zo stands on optim, not the reverse

    return MeZO(params, **kw)


def _zoadam(params: Any, **kw: Any) -> Any:
    from optforge.zo import ZOAdam

    return ZOAdam(params, **kw)


def _deepzero(params: Any, **kw: Any) -> Any:
    from optforge.zo import DeepZero

    return DeepZero(params, **kw)


#: torch's SGD, wrapped: complex parameters are torch's business, not the wrapper's.
_TORCH_SGD = Capabilities(supports_complex=True)

_COMMON_ERRORS = [
    ({"lr": -1.0}, ValueError, r"lr must be >= 0 \(got -1.0\)"),
    ({"lr": float("nan")}, ValueError, r"lr must be finite"),
]

_EIGHTBIT_ERRORS = [
    ({"min_8bit_size": 0}, ValueError, r"min_8bit_size must be"),
    ({"backend": "foreach"}, ValueError, r"no foreach path"),
    ({"backend": "cuda"}, ValueError, r"backend must be one of"),
]


SPECS = [
    Spec(
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
            ({"fused": 1}, TypeError, r"fused must be True, False or None \(got 1\)"),
            ({"maximize": "no"}, TypeError, r"maximize must be True or False"),
            ({"backend": "cuda"}, ValueError, r"backend must be one of"),
            ({"backend": "loop", "fused": True}, ValueError, r"pick one"),
        ],
        capabilities=get_optimizer_entry("lion").capabilities,
    ),
    Spec(
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
            ({"backend": "foreach"}, ValueError, r"no foreach path"),
        ],
        capabilities=get_optimizer_entry("lamb").capabilities,
        coupling_keys=("max_grad_norm",),
    ),
    Spec(
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
        capabilities=get_optimizer_entry("lars").capabilities,
    ),
    Spec(
        "GradientNoise(SGD)",
        _noisy_sgd,
        configs=[{"lr": 0.05, "eta": 0.01}, {"lr": 0.05, "momentum": 0.9, "eta": 0.3, "seed": 7}],
        errors=[
            ({"lr": 0.1, "eta": -1.0}, ValueError, r"eta must be >= 0 \(got -1.0\)"),
            ({"lr": 0.1, "gamma": float("inf")}, ValueError, r"gamma must be finite"),
            ({"lr": 0.1, "seed": 1.5}, TypeError, r"seed must be an int"),
        ],
        capabilities=_TORCH_SGD,
        forge=False,
        coupled=True,
    ),
    Spec(
        "AGVM(SGD)",
        _agvm_sgd,
        configs=[{"lr": 0.05, "momentum": 0.9}],
        capabilities=_TORCH_SGD,
        forge=False,
    ),
    Spec(
        "optforge_AdamW",
        AdamW,
        # Three configurations, not one per flag: each compiles its own graphs in
        # backends_match_the_loop, ~20 s apiece with a cold inductor cache (CI's case).
        configs=[
            {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.8, 0.99)},
            # the bf16 options (no-ops on fp32 parameters; the bf16 runs of backends_match_the_loop
            # exercise them): fp32 master weights, then with stochastic rounding too
            {"lr": 1e-2, "master_weights": True},
            {"lr": 1e-2, "master_weights": True, "stochastic_rounding": True, "seed": 5},
        ],
        errors=_COMMON_ERRORS
        + [
            ({"eps": 0.0}, ValueError, r"eps must be > 0"),
            ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\] must be in \[0.0, 1.0\)"),
            ({"weight_decay": -1.0}, ValueError, r"weight_decay must be >= 0"),
            ({"seed": -1}, ValueError, r"seed must be >= 0"),
            ({"stochastic_rounding": 1}, TypeError, r"stochastic_rounding must be True or False"),
            ({"master_weights": "yes"}, TypeError, r"master_weights must be True or False"),
            ({"backend": "cuda"}, ValueError, r"backend must be one of"),
        ],
        capabilities=get_optimizer_entry("optforge_adamw").capabilities,
    ),
    Spec(
        "optforge_SGD",
        SGD,
        configs=[
            {"lr": 0.05, "momentum": 0.9},
            {"lr": 0.05},  # no momentum: no state
            {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
            {"lr": 0.05, "momentum": 0.9, "dampening": 0.5},
        ],
        errors=[
            ({"lr": -1.0}, ValueError, r"Invalid learning rate: -1.0; lr must be >= 0 \(got"),
            ({"lr": float("nan")}, ValueError, r"lr must be finite"),
            ({"momentum": -0.5}, ValueError, r"Invalid momentum value: -0.5"),
            ({"weight_decay": -1.0}, ValueError, r"Invalid weight_decay value: -1.0"),
            ({"momentum": 0.0, "nesterov": True}, ValueError, r"Nesterov momentum requires"),
            ({"momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError, r"dampening=0.1"),
            ({"nesterov": 1}, TypeError, r"nesterov must be True or False \(got 1\)"),
            ({"dampening": float("inf")}, ValueError, r"dampening must be finite"),
            ({"backend": "cuda"}, ValueError, r"backend must be one of"),
        ],
        capabilities=get_optimizer_entry("optforge_sgd").capabilities,
    ),
    Spec(
        "AdamW8bit",
        AdamW8bit,
        configs=[
            {"lr": 1e-2, "min_8bit_size": 1},
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1, "eps": 1e-6, "min_8bit_size": 16},
        ],
        errors=_COMMON_ERRORS + _EIGHTBIT_ERRORS + [({"eps": 0.0}, ValueError, r"eps must be > 0")],
        capabilities=get_optimizer_entry("adamw8bit").capabilities,
    ),
    Spec(
        "Lion8bit",
        Lion8bit,
        configs=[
            {"lr": 1e-2, "min_8bit_size": 1},
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.5, "betas": (0.95, 0.98), "min_8bit_size": 16},
        ],
        errors=_COMMON_ERRORS + _EIGHTBIT_ERRORS,
        capabilities=get_optimizer_entry("lion8bit").capabilities,
    ),
]


# -- optforge.lowrank: rank 2 on the suite's 7×3, 3×7 and 4×4 matrices (below min(m, n) on two
# of them), refreshes every 2 steps so a resume crosses a refresh; the 1-D tensors are plain
# AdamW. Random bases and stochastic rounding key on the global parameter index: coupled.
_LOWRANK = {"lr": 1e-2, "rank": 2, "update_proj_gap": 2}
_LOWRANK_ERRORS = _COMMON_ERRORS + [
    ({"rank": 0}, ValueError, r"rank must be >= 1 \(got 0\)"),
    ({"update_proj_gap": 0}, ValueError, r"update_proj_gap must be >= 1"),
    ({"proj_type": "diag"}, ValueError, r"proj_type must be one of"),
    ({"projector": "qr"}, ValueError, r"projector must be one of"),
    ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\] must be in \[0.0, 1.0\)"),
    ({"residual": "fira", "proj_type": "full"}, ValueError, r"proj_type='full' has none"),
    ({"on_switch": "drop"}, ValueError, r"on_switch must be one of"),
    ({"proj_dtype": "int8"}, ValueError, r"proj_dtype must be one of"),
]
SPECS += [
    Spec(
        "galore_adamw",
        GaLoreAdamW,
        configs=[
            _LOWRANK,
            {**_LOWRANK, "proj_type": "std", "weight_decay": 0.1, "scale": 0.25},
            {**_LOWRANK, "proj_dtype": "bfloat16"},  # opt-in 2-byte basis
        ],
        errors=_LOWRANK_ERRORS,
        capabilities=get_optimizer_entry("galore_adamw").capabilities,
    ),
    Spec(
        "galore_adamw8bit",
        GaLoreAdamW8bit,
        configs=[{**_LOWRANK, "min_8bit_size": 4}],
        errors=_LOWRANK_ERRORS,
        capabilities=get_optimizer_entry("galore_adamw8bit").capabilities,
    ),
    Spec(
        "qgalore_adamw8bit",
        QGaLoreAdamW8bit,
        configs=[{**_LOWRANK, "update_proj_gap": 1, "min_8bit_size": 4, "queue_size": 2}],
        errors=_LOWRANK_ERRORS
        + [({"proj_bits": 9}, ValueError, r"proj_bits must be in \[2, 8\]")],
        capabilities=get_optimizer_entry("qgalore_adamw8bit").capabilities,
        coupled=True,
    ),
    Spec(
        "natural_galore_adamw",
        NaturalGaLoreAdamW,
        configs=[{**_LOWRANK, "natural_history": 3}],
        errors=[({"natural_history": 0}, ValueError, r"natural_history must be >= 1")],
        capabilities=get_optimizer_entry("natural_galore_adamw").capabilities,
    ),
    Spec(
        "fira_adamw",
        FiraAdamW,
        configs=[_LOWRANK, {**_LOWRANK, "residual": "fira_orthogonal", "proj_type": "std"}],
        errors=[({"residual": "sgd"}, ValueError, r"residual must be 'fira' or")],
        capabilities=get_optimizer_entry("fira_adamw").capabilities,
    ),
    Spec(
        "frugal",
        FRUGAL,
        configs=[
            {"lr": 1e-2, "density": 0.5, "update_proj_gap": 2},
            {"lr": 1e-2, "density": 0.5, "update_proj_gap": 2, "projector": "columns"},
        ],
        errors=[({"density": 1.5}, ValueError, r"density must be in \[0.0, 1.0\]")],
        capabilities=get_optimizer_entry("frugal").capabilities,
        coupled=True,
    ),
    # Zeroth-order. The first config carries a momentum buffer: the checkpoint-damage check
    # needs a non-scalar state tensor to damage (plain MeZO keeps only its step counter).
    Spec(
        "MeZO",
        _mezo,
        configs=[
            {"lr": 1e-3, "momentum": 0.9},
            {"lr": 1e-3},
            {"lr": 1e-3, "n_directions": 2, "dist": "rademacher", "weight_decay": 0.1},
            {"lr": 1e-3, "formula": "forward", "dist": "sphere"},
            {"lr": 3e-3, "update": "sign"},
            {"lr": 1e-3, "update": "conservative"},
        ],
        errors=_COMMON_ERRORS
        + [
            ({"eps": 0.0}, ValueError, r"eps must be > 0 \(got 0.0\)"),
            ({"n_directions": 0}, ValueError, r"n_directions must be >= 1 \(got 0\)"),
            ({"dist": "uniform"}, ValueError, r"dist must be one of"),
            ({"update": "lion"}, ValueError, r"update must be one of"),
            ({"precision": "fp8"}, ValueError, r"precision must be one of"),
            ({"update": "adam", "momentum": 0.9}, ValueError, r"momentum applies to"),
            ({"seed": 1.5}, TypeError, r"seed must be an int"),
        ],
        capabilities=get_optimizer_entry("mezo").capabilities,
        coupled=True,
    ),
    Spec(
        "ZOAdam",
        _zoadam,
        configs=[{"lr": 1e-2}, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}],
        errors=_COMMON_ERRORS
        + [({"betas": (1.0, 0.9)}, ValueError, r"betas\[0\] must be in \[0.0, 1.0\)")],
        capabilities=get_optimizer_entry("zoadam").capabilities,
        coupled=True,
    ),
    Spec(
        "DeepZero",
        _deepzero,
        # Sparse first: the per-optimizer checks run it on a 4231-element tensor, where dense
        # CGE costs 4232 closures per step.
        configs=[{"lr": 1e-2, "keep_ratio": 0.05, "mask_interval": 2}, {"lr": 1e-2}],
        errors=_COMMON_ERRORS
        + [
            ({"mu": 0.0}, ValueError, r"mu must be > 0 \(got 0.0\)"),
            ({"keep_ratio": 1.5}, ValueError, r"keep_ratio must be in \[0.0, 1.0\]"),
            ({"mask_interval": 0}, ValueError, r"mask_interval must be >= 1"),
        ],
        capabilities=get_optimizer_entry("deepzero").capabilities,
        coupled=True,
    ),
]
