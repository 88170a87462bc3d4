"""AdamW (Loshchilov and Hutter, 2019, "Decoupled Weight Decay Regularization") as an optforge
rule: ``adam_direction`` + ``apply_update``, so every backend (and the Triton kernel registered
for ``adamw_rule``) runs the same written-once math.

Notation: θ parameter, g gradient, m, v moments, η lr, λ weight decay, t step.

    θ ← θ·(1 − ηλ)
    m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²
    θ ← θ − η · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)

Equal to ``torch.optim.AdamW`` up to rounding (torch divides by ``√v/√(1−β2^t)``; this rule
by ``√(v/(1−β2^t))``): within fp32 ``assert_close`` after tens of steps (tests/optim/test_adamw.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from optforge._validation import check_betas, check_int, check_non_negative, check_positive
from optforge.kernels import Rule
from optforge.optim.base import CHECK_FINITE_DOC, FirstOrderOptimizer, StateSpec
from optforge.optim.rules import adam_direction, direction_rule, stochastic_round_bf16

__all__ = ["AdamW", "adam_inner_rule", "adamw_master_rule", "adamw_rule", "bias_corrections"]

#: The AdamW update of one tensor: ``(param, exp_avg, exp_avg_sq, grad)``.
adamw_rule = direction_rule(adam_direction, n_state=2, name="adamw")


def _adamw_master(
    param: Tensor,
    master: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad: Tensor,
    *random_bits: Tensor,
    **hyper: Any,
) -> tuple[Tensor, ...]:
    """AdamW on the fp32 ``master`` of a bf16/fp16 ``param``; the parameter gets the master's
    rounding (to nearest when written, or stochastic with ``random_bits``)."""
    # fp32 math throughout, as the Triton kernel (a bf16 gradient upcast first)
    new_master, m, v = adamw_rule(master, exp_avg, exp_avg_sq, grad.to(master.dtype), **hyper)
    new_param = stochastic_round_bf16(new_master, *random_bits) if random_bits else new_master
    return new_param, new_master, m, v


#: ``(param, master, exp_avg, exp_avg_sq, grad[, random_bits])``: fp32 master weights.
adamw_master_rule = Rule(_adamw_master, n_out=4, elementwise=True, name="adamw_master")


def bias_corrections(beta1: float, beta2: float, step: float) -> dict[str, float]:
    """``1 − β1^t`` and ``1 − β2^t`` as the rules take them (computed on the host, in double)."""
    return {"bias_correction1": 1 - beta1**step, "bias_correction2": 1 - beta2**step}


def step_groups(state: Any, params: list[Tensor]) -> dict[float, list[int]]:
    """Advance every parameter's ``step`` and group indices by the new count: parameters that
    share a count share bias corrections, hence one call per count."""
    by_step: dict[float, list[int]] = {}
    for i, p in enumerate(params):
        st = state[p]
        st["step"] += 1
        by_step.setdefault(float(st["step"]), []).append(i)
    return by_step


class AdamW(FirstOrderOptimizer):
    __doc__ = f"""AdamW (Loshchilov and Hutter, 2019): Adam with decoupled weight decay.

    Defaults are ``torch.optim.AdamW``'s (η = 1e-3, β = (0.9, 0.999), ε = 1e-8, λ = 0.01).
    State per parameter: ``step`` (fp32 on the CPU), ``exp_avg`` and ``exp_avg_sq`` in fp32 for
    bf16/fp16 parameters (``at_least_fp32``), the parameter's dtype otherwise.

    Args:
        params: parameters or param groups.
        lr: learning rate η (1e-3).
        betas: (β1, β2) in [0, 1) ((0.9, 0.999)).
        eps: ε added to √v̂, > 0 (1e-8).
        weight_decay: decoupled λ (0.01).
        maximize: ascend the objective.
        foreach: run the rule once over all same-device, same-dtype tensors.
        fused: compiled kernels (``torch.compile``).
        backend: ``"auto"`` (default), ``"loop"``, ``"foreach"``, ``"compiled"`` or ``"native"``;
            ``auto`` runs the registered C loop on fp32 CPU tensors and, on CUDA with Triton
            installed, the Triton kernel (``optforge.kernels``).
        stochastic_rounding: for bf16 parameters, compute the new value in fp32 and round it
            stochastically (unbiased) instead of to nearest, so steps below half a bf16 ulp are
            not lost (default False; fp16 parameters are refused).
        seed: seed of the rounding streams (keyed by seed, step and parameter index).
        master_weights: keep an fp32 copy (state ``master``) of each bf16/fp16 parameter; the
            update runs on it and the parameter is written as its rounding, so steps below a
            bf16 ulp accumulate (default False; fp32 parameters keep none).
        {CHECK_FINITE_DOC}

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = AdamW(model.parameters(), lr=1e-3)
        >>> model(torch.randn(8, 4)).sum().backward(); opt.step()
    """

    state_spec = {
        "step": StateSpec(dtype=torch.float32, shape=(), device="cpu"),
        "exp_avg": StateSpec(dtype="at_least_fp32"),
        "exp_avg_sq": StateSpec(dtype="at_least_fp32"),
    }
    _unscales_in_update = True
    rules = (adamw_rule, adamw_master_rule)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        master_weights: bool = False,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            backend=backend,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
            master_weights=master_weights,
        )
        super().__init__(params, defaults, check_finite=check_finite)

    def state_schema(self, param: Tensor, group: dict[str, Any]) -> Mapping[str, StateSpec]:
        schema = super().state_schema(param, group)
        if _has_master(param, group):
            schema = {**schema, "master": StateSpec(dtype=torch.float32)}
        return schema

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super()._init_state(param, state, group)
        if "master" in state:
            state["master"].copy_(param.detach())

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_betas(group["betas"])
        check_positive("eps", group["eps"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_int("seed", group["seed"], 0)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        beta1, beta2 = group["betas"]
        for step, idx in step_groups(self.state, params).items():
            hyper = dict(
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                **bias_corrections(beta1, beta2, step),
            )
            for rule, chosen in (
                (adamw_rule, [i for i in idx if "master" not in self.state[params[i]]]),
                (adamw_master_rule, [i for i in idx if "master" in self.state[params[i]]]),
            ):
                if not chosen:
                    continue
                ps = [params[i] for i in chosen]
                master = [self.state[p]["master"] for p in ps if "master" in self.state[p]]
                lists = (
                    ps,
                    *([master] if master else []),
                    [self.state[p]["exp_avg"] for p in ps],
                    [self.state[p]["exp_avg_sq"] for p in ps],
                    [grads[i] for i in chosen],
                )
                self._apply(rule, group, lists, hyper)


def _has_master(param: Tensor, group: dict[str, Any]) -> bool:
    return bool(group.get("master_weights")) and param.dtype in (torch.bfloat16, torch.float16)


def _adam_inner(
    update: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad: Tensor,
    *,
    beta1: Any,
    beta2: Any,
    eps: Any,
    bias_correction1: Any,
    bias_correction2: Any,
) -> tuple[Tensor, ...]:
    """Adam's direction alone, into ``update``: the inner rule of a low-rank optimizer, run on
    projected (r×n) gradients and states; the caller projects ``update`` back."""
    del update  # written only
    return adam_direction(
        exp_avg,
        exp_avg_sq,
        grad,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        bias_correction1=bias_correction1,
        bias_correction2=bias_correction2,
    )


#: ``(update, exp_avg, exp_avg_sq, grad) -> (update, exp_avg, exp_avg_sq)``.
adam_inner_rule = Rule(_adam_inner, n_out=3, elementwise=True, name="adam_inner")
