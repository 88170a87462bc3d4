"""MeZO (Malladi et al., 2023) and the ZO-Bench family: SPSA with the seed trick, in place.

Each step, for direction j = 1..n (keys ``(seed, step, j, parameter index)``, see
``optforge.zo.directions``), exactly the sequence of MeZO's Algorithm 1 / ``zo_step``:

    θ ← θ + εz_j;  ℓ+ = L(θ)            (closure 1)
    θ ← θ − 2εz_j; ℓ− = L(θ)            (closure 2)
    θ ← θ + εz_j                        (restore)
    c_j = (ℓ+ − ℓ−)/(2ε)                (one-sided: ℓ0 = L(θ) once, c_j = (ℓ+ − ℓ0)/ε)

then the estimate ĝ = (1/n) Σ_j c_j z_j is regenerated tensor by tensor (never stored whole)
and fed to an update rule of ``optforge.optim.rules``:

=================  ===================================================  =============  ======
``update``         θ ←                                                  state per θ    source
=================  ===================================================  =============  ======
``"sgd"``          θ(1 − ηλ) − ηĝ  (``momentum`` > 0: heavy ball on ĝ)  none (1×P)     MeZO
``"sign"``         θ(1 − ηλ) − η(1/n)Σ_j sign(c_j) z_j                  none           ZO-Bench
``"adam"``         θ(1 − ηλ) − η·Adam(ĝ)                                2×P fp32       ZO-Bench
``"conservative"`` argmin over {θ, θ − ηĝ, θ + ηĝ} of L (3 more closures)  none         ZO-Bench
=================  ===================================================  =============  ======

``"sign"`` takes the sign of the scalar c_j, as ZO-Bench's ``zo_sign_opt`` code does (its
coordinate-wise ``sign(ĝ)`` is commented out there). ``"conservative"`` evaluates L(θ) after the
restore, so the three candidates are compared at the same θ.

**Half precision.** In-place perturb/restore of a bf16 tensor rounds at every ``add_``: in bf16
the weights drift by ~17% (relative L2) after 2,000 steps with no update at all
(reference/zo.md §5). With ``precision="auto"`` (the default) a bf16/fp16 parameter keeps an
fp32 master copy in state (``master``, 2 bytes more per element than the bf16 weights): the
perturbed value ``master + cεz`` is computed in fp32 and rounded once into the parameter, the
restore copies the master back (bitwise exact), and the update runs on the master. fp32 and
fp64 parameters are perturbed in place (restore exact to rounding, ≤ 1e-6 relative).
``precision="inplace"`` turns masters off (with a warning for half dtypes).

**Distributed.** Under ``torch.distributed`` every rank draws the same directions (shared
seeds); the losses ℓ± (2n scalars) are averaged across ranks with one all-reduce per step, so
the ranks' parameters stay identical and equal those of one process on the concatenated batch
(for a mean loss over equal shards).

**Non-finite losses** skip the update: the parameters are restored and left unchanged, the
step counter advances (the next step draws new directions).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from optforge._validation import (
    check_betas,
    check_in_range,
    check_int,
    check_non_negative,
    check_positive,
)
from optforge.kernels import apply_rule_
from optforge.optim.base import StateSpec, ZerothOrderOptimizer
from optforge.optim.rules import adam_direction, direction_rule, sgd_momentum_direction
from optforge.zo.directions import DISTRIBUTIONS, chunks, draw, flat, sphere_scale
from optforge.zo.estimators import FORMULAS, ZORecord

__all__ = ["MeZO", "ZOAdam"]

UPDATES = ("sgd", "sign", "adam", "conservative")
PRECISIONS = ("auto", "fp32_master", "inplace")
#: keys every param group must share: they define the perturbation, which is global.
_SHARED = ("eps", "n_directions", "dist", "formula", "seed", "maximize")
_HALF = (torch.bfloat16, torch.float16)


def _identity(grad: Tensor) -> tuple[Tensor]:
    return (grad,)


_SGD = direction_rule(_identity, 0, "zo_sgd")
_MOMENTUM = direction_rule(sgd_momentum_direction, 1, "zo_momentum")
_ADAM = direction_rule(adam_direction, 2, "zo_adam")
_STEP = StateSpec(dtype=torch.int64, shape=(), device="cpu")
_FP32 = StateSpec(dtype="at_least_fp32")


class MeZO(ZerothOrderOptimizer):
    """Memory-efficient zeroth-order SGD (MeZO) and its ZO-Bench variants.

    Args:
        params: parameters or param groups. Parameters with ``requires_grad=False`` are not
            perturbed (LoRA / prefix tuning: freeze the rest).
        lr: η (default 1e-6: MeZO's full fine-tuning grid {1e-7, 1e-6, 1e-5}, paper Table 15).
            With n directions, MeZO scales η linearly with n.
        eps: ε, the perturbation scale (default 1e-3, MeZO's for full and LoRA fine-tuning;
            1e-1 for prefix tuning).
        weight_decay: λ, decoupled (MeZO: θ − η(ĝ + λθ)); 0 by default. ``create_optimizer``
            builds a no-decay group for biases and norms, as MeZO does.
        n_directions: n, directions per step (2n closure calls; default 1, the most efficient
            at a fixed forward budget in MeZO's ablation).
        seed: base seed of the directions.
        update: ``"sgd"``, ``"sign"``, ``"adam"`` or ``"conservative"`` (see module docstring).
        momentum, dampening, nesterov: heavy-ball momentum on ĝ (``"sgd"``/``"sign"``), as
            torch's SGD (ZO-Bench's ZO-SGD-MMT).
        betas, adam_eps: Adam's coefficients (``"adam"``; torch defaults).
        dist: ``"gaussian"`` (MeZO), ``"rademacher"`` or ``"sphere"``.
        formula: ``"central"`` (two-sided, MeZO) or ``"forward"`` (one-sided: n + 1 closures).
        precision: ``"auto"``, ``"fp32_master"`` or ``"inplace"`` (see module docstring).
        maximize: climb L instead.
        distributed: average ℓ± across ranks when ``torch.distributed`` is initialized.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> x, y = torch.randn(8, 4), torch.randn(8, 1)
        >>> opt = MeZO(model.parameters(), lr=1e-3)
        >>> loss = opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))

    Reference: Malladi et al., "Fine-Tuning Language Models with Just Forward Passes",
    NeurIPS 2023; Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM
    Fine-Tuning: A Benchmark" (ZO-Bench), ICML 2024.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        n_directions: int = 1,
        seed: int = 0,
        *,
        update: str = "sgd",
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        dist: str = "gaussian",
        formula: str = "central",
        precision: str = "auto",
        maximize: bool = False,
        distributed: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr, eps=eps, weight_decay=weight_decay, n_directions=n_directions, seed=seed,
            update=update, momentum=momentum, dampening=dampening, nesterov=nesterov,
            betas=betas, adam_eps=adam_eps, dist=dist, formula=formula, precision=precision,
            maximize=maximize,
        )
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be True or False (got {distributed!r})")
        self.distributed = distributed
        #: the last step's record: direction keys and the scalars c_j (a trajectory log entry).
        self.last_record: ZORecord | None = None
        super().__init__(params, defaults)

    # -- checks ---------------------------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_positive("eps", group["eps"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_int("n_directions", group["n_directions"], low=1)
        check_int("seed", group["seed"])
        check_in_range("momentum", group["momentum"], 0.0, 1.0)
        check_in_range("dampening", group["dampening"], 0.0, 1.0, high_inclusive=True)
        check_betas(group["betas"])
        check_positive("adam_eps", group["adam_eps"])
        for key, allowed in (("update", UPDATES), ("dist", DISTRIBUTIONS),
                             ("formula", FORMULAS), ("precision", PRECISIONS)):
            if group[key] not in allowed:
                raise ValueError(f"{key} must be one of {allowed} (got {group[key]!r})")
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"nesterov must be True or False (got {group['nesterov']!r})")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening 0")
        if group["momentum"] and group["update"] not in ("sgd", "sign"):
            raise ValueError(
                f"momentum applies to update='sgd' or 'sign' (got update={group['update']!r} "
                f"with momentum={group['momentum']})"
            )
        if group["update"] == "conservative" and group["weight_decay"]:
            raise ValueError("update='conservative' takes no weight_decay (got "
                             f"{group['weight_decay']})")
        for p in group.get("params", []):
            if isinstance(p, Tensor) and p.is_complex():
                raise TypeError(f"{type(self).__name__} does not support complex parameters")
        first = getattr(self, "param_groups", None)
        if first:
            for key in _SHARED:
                if group[key] != first[0][key]:
                    raise ValueError(
                        f"{key} defines the perturbation and must be the same in every param "
                        f"group (got {group[key]!r}, the first group has {first[0][key]!r})"
                    )
        if first and (group["update"] == "conservative") != (first[0]["update"] == "conservative"):
            raise ValueError("update='conservative' must be used by every param group or none")

    # -- state ----------------------------------------------------------------------------------
    @staticmethod
    def _uses_master(param: Tensor, group: dict[str, Any]) -> bool:
        return param.dtype in _HALF and group["precision"] != "inplace"

    def state_schema(self, param: Tensor, group: dict[str, Any]) -> dict[str, StateSpec]:
        schema = {"step": _STEP}
        if self._uses_master(param, group):
            schema["master"] = StateSpec(dtype=torch.float32)
        if group["update"] in ("sgd", "sign") and group["momentum"] > 0:
            schema["momentum_buffer"] = _FP32
        if group["update"] == "adam":
            schema["exp_avg"] = _FP32
            schema["exp_avg_sq"] = _FP32
        return schema

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super()._init_state(param, state, group)
        if "master" in state:
            state["master"].copy_(param.detach())
        if param.dtype in _HALF and group["precision"] == "inplace":
            warnings.warn(
                f"{type(self).__name__}: precision='inplace' on a {param.dtype} parameter: "
                "perturb/restore rounds at every step and the weights drift",
                stacklevel=4,
            )

    def _entries(self) -> list[tuple[Tensor, dict[str, Any], int]]:
        """(parameter, group, global index) of every perturbed parameter, state created."""
        entries = []
        step = None
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                state = self.state[p]
                if state and step is None:
                    step = int(state["step"])
                entries.append((p, group, self.param_index(p)))
        for p, group, _ in entries:
            if not self.state[p]:
                self._init_state(p, self.state[p], group)
                self.state[p]["step"].fill_(step or 0)
        return entries

    # -- per-parameter primitives (the offload engine calls them block by block) ----------------
    def _z(self, p: Tensor, group: dict[str, Any], index: int, step: int, j: int,
           scale: float) -> Tensor:
        return draw(p, group["dist"], group["seed"], step, j, index, scale)

    def _z_chunks(self, p: Tensor, group: dict[str, Any], index: int, step: int, j: int,
                  scale: float) -> Iterator[tuple[slice, Tensor]]:
        return chunks(p, group["dist"], group["seed"], step, j, index, scale)

    def _move(self, p: Tensor, group: dict[str, Any], index: int, step: int, j: int,
              scale: float, before: float, after: float) -> None:
        """Move ``p`` from ``master + before·εz_j`` to ``master + after·εz_j``."""
        master = self.state[p].get("master")
        if master is not None and after == 0:
            p.copy_(master)
            return
        # Piece by piece (directions.chunks): the temporary is one chunk of z, not a tensor.
        for s, z in self._z_chunks(p, group, index, step, j, scale):
            if master is None:
                flat(p, s).add_(z.to(p.dtype), alpha=(after - before) * group["eps"])
            else:
                flat(p, s).copy_(flat(master, s).add(z.to(master.dtype),
                                                     alpha=after * group["eps"]))

    def _estimate(self, p: Tensor, group: dict[str, Any], index: int, step: int,
                  coefficients: list[float], scales: list[float]) -> Tensor:
        n = len(coefficients)
        g = torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32),
                        device=p.device)
        for j, (c, s) in enumerate(zip(coefficients, scales)):
            if group["update"] == "sign":
                c = math.copysign(1.0, c) if c else 0.0
            g.add_(self._z(p, group, index, step, j, s).to(g.dtype), alpha=c / n)
        return g

    def _update(self, p: Tensor, group: dict[str, Any], index: int, step: int,
                coefficients: list[float], scales: list[float]) -> None:
        """Apply the update rule to ``p`` with the regenerated estimate."""
        state = self.state[p]
        target = state.get("master", p)
        if group["update"] != "adam" and "momentum_buffer" not in state:
            # Stateless: θ(1 − ηλ) − (η/n)Σ_j c_j z_j in place, one direction and one chunk of
            # it at a time, so the only temporary is a chunk of z. Measured on MiniLM
            # (benchmarks/zo_memory.py, weights in memory): a step peaks 10 MiB above a forward
            # pass; through the rule (ĝ plus the rule's intermediates) it was ~200 MiB above.
            n = len(coefficients)
            if group["weight_decay"]:
                target.mul_(1 - group["lr"] * group["weight_decay"])
            for j, (c, scale) in enumerate(zip(coefficients, scales)):
                if group["update"] == "sign":
                    c = math.copysign(1.0, c) if c else 0.0
                for s, z in self._z_chunks(p, group, index, step, j, scale):
                    flat(target, s).add_(z.to(target.dtype), alpha=-group["lr"] * c / n)
            if target is not p:
                p.copy_(target)
            return
        grad = self._estimate(p, group, index, step, coefficients, scales)
        hyper: dict[str, Any] = {"lr": group["lr"], "weight_decay": group["weight_decay"],
                                 "maximize": False}
        if group["update"] == "adam":
            beta1, beta2 = group["betas"]
            t = step + 1
            hyper.update(beta1=beta1, beta2=beta2, eps=group["adam_eps"],
                         bias_correction1=1 - beta1**t, bias_correction2=1 - beta2**t)
            lists = [[target], [state["exp_avg"]], [state["exp_avg_sq"]], [grad]]
            rule = _ADAM
        elif "momentum_buffer" in state:
            hyper.update(momentum=group["momentum"], dampening=group["dampening"],
                         nesterov=group["nesterov"])
            # The buffer starts at 0: b_1 = (1 − τ)ĝ, torch's SGD's b_1 = ĝ when τ = 0.
            lists = [[target], [state["momentum_buffer"]], [grad]]
            rule = _MOMENTUM
        else:
            lists = [[target], [grad]]
            rule = _SGD
        apply_rule_(rule, lists, hyper, backend="loop")
        if target is not p:
            p.copy_(target)

    def _shift(self, p: Tensor, group: dict[str, Any], index: int, step: int,
               coefficients: list[float], scales: list[float], alpha: float) -> None:
        """``θ ← θ + alpha·ĝ`` (the conservative update's candidates)."""
        grad = self._estimate(p, group, index, step, coefficients, scales)
        master = self.state[p].get("master")
        if master is None:
            p.add_(grad.to(p.dtype), alpha=alpha)
        else:
            master.add_(grad, alpha=alpha)
            p.copy_(master)

    # -- the step -------------------------------------------------------------------------------
    def _reduce(self, losses: list[float]) -> list[float]:
        """Average losses across ranks (one all-reduce), when distributed."""
        dist = torch.distributed
        if not (self.distributed and dist.is_available() and dist.is_initialized()):
            return losses
        world = dist.get_world_size()
        if world == 1:
            return losses
        t = torch.tensor(losses, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / world).tolist()

    def _scales(self, entries: list[tuple[Tensor, dict[str, Any], int]], step: int) -> list[float]:
        group = self.param_groups[0]
        n = group["n_directions"]
        if group["dist"] != "sphere":
            return [1.0] * n
        params, idx = [e[0] for e in entries], [e[2] for e in entries]
        return [sphere_scale(params, idx, group["seed"], step, j) for j in range(n)]

    def _coefficients(self, losses: list[list[float]]) -> list[float]:
        group = self.param_groups[0]
        eps, sign = group["eps"], -1.0 if group["maximize"] else 1.0
        if group["formula"] == "central":
            return [sign * (a - b) / (2 * eps) for a, b in losses]
        return [sign * (b - a) / eps for a, b in losses]

    def _zo_step(self, closure: Callable[[], Any]) -> Tensor:
        entries = self._entries()
        if not entries:
            return self.evaluate(closure)
        group0 = self.param_groups[0]
        step = int(self.state[entries[0][0]]["step"])
        n, central = group0["n_directions"], group0["formula"] == "central"
        scales = self._scales(entries, step)
        raw: list[float] = []
        base = float(self.evaluate(closure)) if not central else None
        for j, s in enumerate(scales):
            for p, g, i in entries:
                self._move(p, g, i, step, j, s, 0.0, 1.0)
            raw.append(float(self.evaluate(closure)))
            if central:
                for p, g, i in entries:
                    self._move(p, g, i, step, j, s, 1.0, -1.0)
                raw.append(float(self.evaluate(closure)))
                for p, g, i in entries:
                    self._move(p, g, i, step, j, s, -1.0, 0.0)
            else:
                for p, g, i in entries:
                    self._move(p, g, i, step, j, s, 1.0, 0.0)
        if base is not None:
            raw.append(base)
        raw = self._reduce(raw)
        if central:
            losses = [raw[2 * j: 2 * j + 2] for j in range(n)]
            loss = sum(raw) / len(raw)
        else:
            losses = [[raw[-1], raw[j]] for j in range(n)]
            loss = raw[-1]
        coefficients = self._coefficients(losses)
        self.last_record = ZORecord(group0["seed"], step, tuple(e[2] for e in entries),
                                    group0["dist"], tuple(scales), tuple(coefficients),
                                    tuple(tuple(x) for x in losses))
        if all(math.isfinite(x) for x in raw):
            if group0["update"] == "conservative":
                self._conservative(closure, entries, step, coefficients, scales)
            else:
                for p, g, i in entries:
                    self._update(p, g, i, step, coefficients, scales)
        for p, _, _ in entries:
            self.state[p]["step"] += 1
        return torch.tensor(loss, dtype=torch.float64)

    def _conservative(self, closure: Callable[[], Any], entries: list[Any], step: int,
                      coefficients: list[float], scales: list[float]) -> None:
        def shift(alpha_in_lr: float) -> None:
            for p, g, i in entries:
                self._shift(p, g, i, step, coefficients, scales, alpha_in_lr * g["lr"])

        loss0 = float(self.evaluate(closure))
        shift(-1.0)
        loss_minus = float(self.evaluate(closure))
        shift(2.0)
        loss_plus = float(self.evaluate(closure))
        loss0, loss_minus, loss_plus = self._reduce([loss0, loss_minus, loss_plus])
        candidates = [(loss0, -1.0), (loss_minus, -2.0), (loss_plus, 0.0)]
        best = min(candidates, key=lambda c: c[0] if math.isfinite(c[0]) else math.inf)
        if best[1]:
            shift(best[1])


class ZOAdam(MeZO):
    """ZO-Adam (ZO-Bench): Adam on MeZO's estimate ĝ, ``MeZO(update="adam")``.

    Defaults: lr 1e-5 (the top of ZO-Bench's ZO-Adam grid {1e-5 … 1e-8}; MeZO-Adam's grid is
    {1e-6 … 1e-3}), ε 1e-3, torch's betas (0.9, 0.999) and adam_eps 1e-8. State: 2×P fp32
    moments. Every other argument is ``MeZO``'s.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-5,
                 eps: float = 1e-3, weight_decay: float = 0.0, n_directions: int = 1,
                 seed: int = 0, **kwargs: Any) -> None:
        if kwargs.get("update", "adam") != "adam":
            raise ValueError(f"ZOAdam's update is 'adam' (got {kwargs['update']!r}); use MeZO")
        kwargs["update"] = "adam"
        super().__init__(params, lr, eps, weight_decay, n_directions, seed, **kwargs)
