"""optforge's optimizers as torch ``OptimizerInfo`` entries (torch's ``optim_db`` convention).

Each entry follows ``torch.testing._internal.common_optimizers``: ``optim_inputs_func(device,
dtype=None)`` returns ``OptimizerInput``s whose kwargs hold only algorithm-specific and
"global-friendly" flags (lr, weight_decay, maximize), never the "global-cliquey" ones (foreach,
fused, differentiable), which the tests add themselves; ``optim_error_inputs_func(device, dtype)``
returns ``ErrorOptimizerInput``s with the error type and a regex.

Wrappers are entered through small factories (``GradientNoiseSGD``, ``AGVMSGD``) that take
``params`` first like any optimizer class, build ``torch.optim.SGD`` and wrap it. torch's own
AdamW is entered as a control: every contract test must pass on it, which shows that a failure on
an optforge entry is the optimizer's, not the test's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import Parameter
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    get_error_inputs_for_all_optims,
)

from optforge.optim import AGVM, LAMB, LARS, SGD, GradientNoise, Lion
from optforge.optim import AdamW as ForgeAdamW

CONSTRUCTION = OptimizerErrorEnum.CONSTRUCTION_ERROR
STEP = OptimizerErrorEnum.STEP_ERROR


# -- wrapper factories --------------------------------------------------------------------------
def GradientNoiseSGD(  # noqa: N802 (stands where an optimizer class stands)
    params: Any,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    maximize: bool = False,
    eta: float = 1e-4,
    gamma: float = 0.55,
    seed: int = 0,
) -> GradientNoise:
    """``GradientNoise(torch.optim.SGD(params, ...), eta=..., gamma=..., seed=...)``."""
    sgd = torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize
    )
    return GradientNoise(sgd, eta=eta, gamma=gamma, seed=seed)


def AGVMSGD(  # noqa: N802
    params: Any,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    maximize: bool = False,
    start_iter: int = 10**9,
    **agvm_kwargs: Any,
) -> AGVM:
    """``AGVM(torch.optim.SGD(params, ...), start_iter=10**9)``: AGVM never triggers, so plain
    (non-halved) backward passes are valid and the wrapper must behave as the SGD it wraps."""
    sgd = torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize
    )
    return AGVM(sgd, start_iter=start_iter, **agvm_kwargs)


# -- shared error inputs ------------------------------------------------------------------------
def _param() -> Parameter:
    return Parameter(torch.randn(2, 3))


def _with_grad(grad: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> Parameter:
    p = Parameter(torch.randn(2, 3, dtype=dtype))
    p.grad = torch.randn(2, 3, dtype=dtype) if grad is None else grad
    return p


def _construction(
    kwargs: dict[str, Any], desc: str, error_type: type, regex: str, params: Any = None
) -> ErrorOptimizerInput:
    return ErrorOptimizerInput(
        OptimizerInput(params=[_param()] if params is None else params, kwargs=kwargs, desc=desc),
        error_on=CONSTRUCTION,
        error_type=error_type,
        error_regex=regex,
    )


def _generic_errors(device: Any, dtype: Any, base: dict[str, Any]) -> list[ErrorOptimizerInput]:
    """torch's errors for every optimizer (Optimizer base behaviour), minus the Tensor-lr one
    (its params are None: it tests torch's own lr check that runs before the params are read).
    ``base`` holds required kwargs (LARS's lr)."""
    out = []
    for e in get_error_inputs_for_all_optims(device, dtype):
        inp = e.optimizer_error_input
        if "Tensor lr" in inp.desc or inp.params is None:
            continue
        inp.kwargs = {**base, **inp.kwargs}
        out.append(e)
    return out


def _forge_errors(base: dict[str, Any]) -> list[ErrorOptimizerInput]:
    """Errors every ForgeOptimizer shares: values, flag types and conflicts, sparse/non-finite
    gradients."""
    b = dict(base)
    out = [
        _construction({**b, "lr": -1.0}, "negative lr", ValueError, "lr"),
        _construction({**b, "lr": math.nan}, "nan lr", ValueError, "lr"),
        _construction(
            {**b, "weight_decay": -0.1}, "negative weight_decay", ValueError, "weight_decay"
        ),
        _construction(
            {**b, "maximize": "no"}, "maximize must be a bool", (TypeError, ValueError), "maximize"
        ),
        _construction(
            {**b, "fused": "yes"}, "fused must be a bool", (TypeError, ValueError), "fused"
        ),
        _construction(
            {**b},
            "fused and foreach conflict inside one param group",
            ValueError,
            "fused.*foreach|foreach.*fused",
            params=[{"params": [_param()], "fused": True, "foreach": True}],
        ),
        ErrorOptimizerInput(
            OptimizerInput(
                params=[_with_grad(torch.randn(2, 3).to_sparse())], kwargs=b, desc="sparse gradient"
            ),
            error_on=STEP,
            error_type=RuntimeError,
            error_regex="sparse",
        ),
    ]
    return out


# -- Lion ---------------------------------------------------------------------------------------
def optim_inputs_func_lion(device: Any, dtype: Any = None) -> list[OptimizerInput]:
    return [
        OptimizerInput(params=None, kwargs={}, desc="default"),
        OptimizerInput(params=None, kwargs={"lr": 1e-2}, desc="non-default lr"),
        OptimizerInput(params=None, kwargs={"lr": 1e-2, "weight_decay": 0.1}, desc="weight_decay"),
        OptimizerInput(params=None, kwargs={"lr": 1e-2, "betas": (0.95, 0.98)}, desc="betas"),
        OptimizerInput(
            params=None,
            kwargs={"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
            desc="maximize, weight_decay",
        ),
    ]


def optim_error_inputs_func_lion(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
    return [
        *_generic_errors(device, dtype, {}),
        *_forge_errors({}),
        _construction(
            {"fused": True, "foreach": True},
            "fused and foreach conflict",
            ValueError,
            "fused.*foreach|foreach.*fused",
        ),
        _construction({"betas": (1.0, 0.99)}, "beta1 == 1", ValueError, "beta"),
        _construction({"betas": (0.9, -0.1)}, "negative beta2", ValueError, "beta"),
        _construction(
            {"foreach": "yes"}, "foreach must be a bool", (TypeError, ValueError), "foreach"
        ),
    ]


# -- SGD ----------------------------------------------------------------------------------------
def optim_inputs_func_sgd(device: Any, dtype: Any = None) -> list[OptimizerInput]:
    """torch's ``optim_inputs_func_sgd`` without its Tensor lr (rejected, as by every optforge
    optimizer: see test_tensor_lr), plus dampening with maximize."""
    return [
        OptimizerInput(params=None, kwargs={}, desc="default"),
        OptimizerInput(params=None, kwargs={"lr": 1e-2}, desc="non-default lr"),
        OptimizerInput(params=None, kwargs={"weight_decay": 0.5}, desc="non-zero weight_decay"),
        OptimizerInput(params=None, kwargs={"momentum": 0.9}, desc="momentum"),
        OptimizerInput(
            params=None, kwargs={"weight_decay": 0.1, "maximize": True}, desc="maximize"
        ),
        OptimizerInput(params=None, kwargs={"momentum": 0.9, "dampening": 0.5}, desc="dampening"),
        OptimizerInput(
            params=None,
            kwargs={"momentum": 0.9, "weight_decay": 0.1},
            desc="weight_decay w/ momentum",
        ),
        OptimizerInput(
            params=None,
            kwargs={"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
            desc="nesterov",
        ),
        OptimizerInput(
            params=None,
            kwargs={"momentum": 0.9, "dampening": 0.5, "maximize": True},
            desc="dampening, maximize",
        ),
    ]


def optim_error_inputs_func_sgd(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
    return [
        *_generic_errors(device, dtype, {}),
        *_forge_errors({}),
        # torch's own error input, its message included
        _construction(
            {"lr": 1e-2, "momentum": -0.5}, "momentum should be between 0 and 1", ValueError,
            "Invalid momentum value: -0.5",
        ),
        _construction(
            {"nesterov": True}, "nesterov without momentum", ValueError,
            "Nesterov momentum requires a momentum and zero dampening",
        ),
    ]


# -- optforge's AdamW ---------------------------------------------------------------------------
def optim_inputs_func_forge_adamw(device: Any, dtype: Any = None) -> list[OptimizerInput]:
    """torch's ``optim_inputs_func_adamw`` minus amsgrad, capturable and the Tensor lr (not
    offered), plus the bf16 options: on fp32/fp64 parameters they change nothing, on bf16 (the
    state-dtype reload test, the slow fused test) they keep an fp32 master and round
    stochastically. fp16 parameters refuse stochastic rounding, so those inputs are left out."""
    inputs = [
        OptimizerInput(params=None, kwargs={}, desc="default"),
        OptimizerInput(params=None, kwargs={"lr": 1e-2, "weight_decay": 0.1}, desc="decay"),
        OptimizerInput(
            params=None, kwargs={"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6}, desc="betas, eps"
        ),
        OptimizerInput(
            params=None, kwargs={"lr": 1e-2, "weight_decay": 0.1, "maximize": True}, desc="maximize"
        ),
        OptimizerInput(params=None, kwargs={"lr": 1e-2, "master_weights": True}, desc="master"),
    ]
    if dtype != torch.float16:
        inputs += [
            OptimizerInput(
                params=None,
                kwargs={"lr": 1e-2, "stochastic_rounding": True, "seed": 3},
                desc="stochastic rounding",
            ),
            OptimizerInput(
                params=None,
                kwargs={"lr": 1e-2, "master_weights": True, "stochastic_rounding": True},
                desc="master, stochastic rounding",
            ),
        ]
    return inputs


def optim_error_inputs_func_forge_adamw(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
    return [
        *_generic_errors(device, dtype, {}),
        *_forge_errors({}),
        _construction({"betas": (1.0, 0.99)}, "beta1 == 1", ValueError, "beta"),
        _construction({"betas": (0.9, 1.0)}, "beta2 == 1", ValueError, "beta"),
        _construction({"eps": 0.0}, "eps == 0", ValueError, "eps"),
        _construction({"seed": -1}, "negative seed", ValueError, "seed"),
        _construction(
            {"stochastic_rounding": 1}, "stochastic_rounding must be a bool", TypeError,
            "stochastic_rounding",
        ),
        _construction(
            {"master_weights": "yes"}, "master_weights must be a bool", TypeError, "master_weights"
        ),
        _construction(
            {"stochastic_rounding": True},
            "stochastic rounding on fp16 parameters",
            ValueError,
            "fp16",
            params=[Parameter(torch.randn(2, 3, dtype=torch.float16))],
        ),
    ]


# -- LAMB ---------------------------------------------------------------------------------------
def optim_inputs_func_lamb(device: Any, dtype: Any = None) -> list[OptimizerInput]:
    return [
        OptimizerInput(params=None, kwargs={}, desc="default"),
        OptimizerInput(params=None, kwargs={"lr": 1e-2, "weight_decay": 0.0}, desc="no decay"),
        OptimizerInput(
            params=None,
            kwargs={"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
            desc="maximize, weight_decay",
        ),
        OptimizerInput(
            params=None,
            kwargs={"lr": 1e-2, "bias_correction": False, "max_weight_norm": 10.0},
            desc="cybertronai",
        ),
        OptimizerInput(
            params=None,
            kwargs={"lr": 1e-2, "max_grad_norm": 1.0, "adapt_no_decay": False},
            desc="apex",
        ),
        OptimizerInput(
            params=None, kwargs={"lr": 1e-2, "max_trust_ratio": 1.0}, desc="capped trust ratio"
        ),
    ]


def optim_error_inputs_func_lamb(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
    return [
        *_generic_errors(device, dtype, {}),
        *_forge_errors({}),
        _construction({"betas": (0.9, 1.0)}, "beta2 == 1", ValueError, "beta"),
        _construction({"eps": 0.0}, "eps == 0", ValueError, "eps"),
        _construction({"max_grad_norm": 0.0}, "max_grad_norm == 0", ValueError, "max_grad_norm"),
        _construction(
            {"max_trust_ratio": -1.0}, "negative max_trust_ratio", ValueError, "max_trust_ratio"
        ),
    ]


# -- LARS ---------------------------------------------------------------------------------------
def optim_inputs_func_lars(device: Any, dtype: Any = None) -> list[OptimizerInput]:
    return [
        OptimizerInput(params=None, kwargs={"lr": 1.0}, desc="lr only"),
        OptimizerInput(params=None, kwargs={"lr": 1.0, "weight_decay": 5e-4}, desc="decay"),
        OptimizerInput(params=None, kwargs={"lr": 1.0, "momentum": 0.0}, desc="no momentum"),
        OptimizerInput(
            params=None,
            kwargs={"lr": 1.0, "trust_coefficient": 0.01, "eps": 1e-8, "maximize": True},
            desc="maximize",
        ),
        OptimizerInput(
            params=None,
            kwargs={"lr": 0.05, "weight_decay": 5e-4, "adapt_no_decay": False},
            desc="MLPerf",
        ),
    ]


def optim_error_inputs_func_lars(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
    base = {"lr": 1.0}
    return [
        *_generic_errors(device, dtype, base),
        *_forge_errors(base),
        _construction({}, "lr is required", TypeError, "lr"),
        _construction({**base, "momentum": 1.0}, "momentum == 1", ValueError, "momentum"),
        _construction(
            {**base, "trust_coefficient": 0.0},
            "trust_coefficient == 0",
            ValueError,
            "trust_coefficient",
        ),
        _construction({**base, "eps": -1.0}, "negative eps", ValueError, "eps"),
    ]


# -- wrappers -----------------------------------------------------------------------------------
def optim_inputs_func_gradient_noise(device: Any, dtype: Any = None) -> list[OptimizerInput]:
    return [
        OptimizerInput(params=None, kwargs={}, desc="default"),
        OptimizerInput(params=None, kwargs={"eta": 0.0}, desc="noise off"),
        OptimizerInput(
            params=None, kwargs={"lr": 0.02, "weight_decay": 0.01, "seed": 3}, desc="decay, seed"
        ),
        OptimizerInput(params=None, kwargs={"maximize": True}, desc="maximize"),
    ]


def optim_error_inputs_func_gradient_noise(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
    return [
        *_generic_errors(device, dtype, {}),
        _construction({"eta": -1.0}, "negative eta", ValueError, "eta"),
        _construction({"eta": math.nan}, "nan eta", ValueError, "eta"),
        _construction({"gamma": -1.0}, "negative gamma", ValueError, "gamma"),
        _construction({"seed": 1.5}, "seed must be an int", TypeError, "seed"),
    ]


def optim_inputs_func_agvm(device: Any, dtype: Any = None) -> list[OptimizerInput]:
    return [
        OptimizerInput(params=None, kwargs={}, desc="default (AGVM never starts)"),
        OptimizerInput(params=None, kwargs={"lr": 0.02, "weight_decay": 0.01}, desc="decay"),
        OptimizerInput(params=None, kwargs={"maximize": True, "momentum": 0.0}, desc="maximize"),
    ]


def optim_error_inputs_func_agvm(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
    return [
        *_generic_errors(device, dtype, {}),
        _construction(
            {"momentum": 0.9, "update_interval": 0},
            "update_interval == 0",
            ValueError,
            "update_interval",
        ),
        _construction(
            {"start_iter": 10, "stop_iter": 5}, "stop_iter < start_iter", ValueError, "stop_iter"
        ),
        _construction({"use_adam": 1}, "use_adam must be a bool", TypeError, "use_adam"),
        _construction({"eps": 0.0}, "eps == 0", ValueError, "eps"),
    ]


# -- control: torch's AdamW ---------------------------------------------------------------------
def optim_inputs_func_adamw(device: Any, dtype: Any = None) -> list[OptimizerInput]:
    inputs = [
        OptimizerInput(params=None, kwargs={}, desc="default"),
        OptimizerInput(params=None, kwargs={"lr": 1e-2, "weight_decay": 0.1}, desc="decay"),
        OptimizerInput(params=None, kwargs={"lr": 1e-2, "amsgrad": True}, desc="amsgrad"),
        OptimizerInput(
            params=None, kwargs={"lr": 1e-2, "weight_decay": 0.1, "maximize": True}, desc="maximize"
        ),
    ]
    if dtype == torch.float16:  # torch's optim_inputs_func_adam: eps=1e-8 is 0 in fp16
        for inp in inputs:
            inp.kwargs["eps"] = 0.1
    return inputs


def optim_error_inputs_func_adamw(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
    return [
        *_generic_errors(device, dtype, {}),
        _construction({"lr": -1.0}, "negative lr", ValueError, "learning rate"),
        _construction({"betas": (1.0, 0.99)}, "beta1 == 1", ValueError, "beta"),
        _construction(
            {"fused": True, "foreach": True},
            "fused and foreach conflict",
            RuntimeError,
            "fused.*foreach|foreach.*fused",
        ),
    ]


class ForgeOptimizerInfo(OptimizerInfo):
    """An ``OptimizerInfo`` plus what the torch-derived tests need to know about a third-party
    optimizer.

    Args:
        elementwise: each element's update depends only on that element's history (Lion, SGD):
            splitting a tensor into pieces changes nothing (torch's ``test_complex_2d``).
            Layer-wise methods (LAMB, LARS) scale by whole-tensor norms, so they are not.
        moves_without_grad: names of kwargs that move parameters even when the gradient is zero
            (torch skips ``weight_decay != 0``; ``eta > 0`` for gradient noise); the effective
            value is read from the constructed optimizer.
        noisy: the step adds seeded noise (pieces of a tensor get different noise).
        label: the test id, where the class name is taken (optforge's and torch's AdamW).
    """

    def __init__(
        self,
        optim_cls: Any,
        *,
        elementwise: bool = False,
        moves_without_grad: tuple[str, ...] = ("weight_decay",),
        noisy: bool = False,
        label: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(optim_cls, **kwargs)
        self.label = label
        self.elementwise = elementwise
        self.moves_without_grad = moves_without_grad
        self.noisy = noisy

    @property
    def name(self) -> str:
        return self.label or self.optim_cls.__name__


FORGE_OPTIM_DB: list[ForgeOptimizerInfo] = [
    ForgeOptimizerInfo(
        Lion,
        optim_inputs_func=optim_inputs_func_lion,
        optim_error_inputs_func=optim_error_inputs_func_lion,
        supported_impls=("foreach", "fused"),
        supports_fused_on=("cpu", "cuda"),
        # Every flag shipped with optforge's first release: no "older" state_dict lacks one.
        not_og_supported_flags=(),
        elementwise=True,
    ),
    ForgeOptimizerInfo(
        SGD,
        optim_inputs_func=optim_inputs_func_sgd,
        optim_error_inputs_func=optim_error_inputs_func_sgd,
        supported_impls=("foreach", "fused"),
        supports_fused_on=("cpu", "cuda"),
        not_og_supported_flags=(),
        elementwise=True,
    ),
    ForgeOptimizerInfo(
        ForgeAdamW,
        label="optforge_AdamW",  # torch's AdamW, the control, is "AdamW"
        optim_inputs_func=optim_inputs_func_forge_adamw,
        optim_error_inputs_func=optim_error_inputs_func_forge_adamw,
        supported_impls=("foreach", "fused"),
        supports_fused_on=("cpu", "cuda"),
        not_og_supported_flags=(),
        elementwise=True,
    ),
    ForgeOptimizerInfo(
        LAMB,
        optim_inputs_func=optim_inputs_func_lamb,
        optim_error_inputs_func=optim_error_inputs_func_lamb,
        supported_impls=("fused",),
        supports_fused_on=("cpu", "cuda"),
        not_og_supported_flags=(),
        # LAMB's default weight_decay is 0.01, and its trust ratio rescales even the pure-decay
        # update: a zero gradient moves it whenever weight_decay != 0.
    ),
    ForgeOptimizerInfo(
        LARS,
        optim_inputs_func=optim_inputs_func_lars,
        optim_error_inputs_func=optim_error_inputs_func_lars,
        supported_impls=("fused",),
        supports_fused_on=("cpu", "cuda"),
        not_og_supported_flags=(),
    ),
    ForgeOptimizerInfo(
        GradientNoiseSGD,
        optim_inputs_func=optim_inputs_func_gradient_noise,
        optim_error_inputs_func=optim_error_inputs_func_gradient_noise,
        supported_impls=(),
        not_og_supported_flags=("foreach", "fused", "differentiable", "maximize"),
        moves_without_grad=("weight_decay", "eta"),
        noisy=True,
    ),
    ForgeOptimizerInfo(
        AGVMSGD,
        optim_inputs_func=optim_inputs_func_agvm,
        optim_error_inputs_func=optim_error_inputs_func_agvm,
        supported_impls=(),
        not_og_supported_flags=("foreach", "fused", "differentiable", "maximize"),
        elementwise=True,
    ),
]

CONTROL_OPTIM_DB: list[ForgeOptimizerInfo] = [
    ForgeOptimizerInfo(
        torch.optim.AdamW,
        optim_inputs_func=optim_inputs_func_adamw,
        optim_error_inputs_func=optim_error_inputs_func_adamw,
        supported_impls=("foreach", "fused"),
        supports_fused_on=("cpu", "cuda"),
        not_og_supported_flags=("foreach", "differentiable", "fused", "maximize", "capturable"),
        elementwise=True,
    ),
]

ALL_OPTIM_DB = FORGE_OPTIM_DB + CONTROL_OPTIM_DB
