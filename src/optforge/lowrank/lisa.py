"""LISA (Pan et al., 2024, "LISA: Layerwise Importance Sampling for Memory-Efficient Large
Language Model Fine-Tuning", arXiv:2403.17919): train a random subset of γ layers, re-drawn
every K steps, while the always-active parameters (embeddings, head) train every step.

``LISA(optimizer, layers, n_active=γ, period=K)`` wraps any optimizer over all parameters.
At steps 0, K, 2K, ... it draws γ of the ``layers`` (lists of parameters) from
``generator_for(cpu, seed, period index)``, sets ``requires_grad=False`` on the others (no
gradient is computed or stored for them) and deletes their optimizer state (the memory
saving; a re-activated layer starts with fresh moments, as LMFlow's ``LISATrainer`` does: it
rebuilds the optimizer at every draw and carries over only the non-layer groups' state).
``free_state=False`` keeps the frozen layers' state instead, so a re-drawn layer resumes its
stale moments: LMFlow's first implementation, the ``DynamicLayerActivationCallback`` that only
flips ``requires_grad`` (torch AdamW never drops state), with no optimizer-memory saving.
Defaults from the paper: γ = 2, K = 20 (LMFlow ``lisa_activated_layers=2``,
``lisa_interval_steps=20``).

``rewarm_steps=W`` (optforge's option, off by default; not in the paper) scales a layer's
update by ``(k + 1) / W`` on the k-th step after it became active (k < W), the linear re-warm-up
ReLoRA (Lialin et al., 2023, arXiv:2307.05695) puts after each optimizer-state reset: a layer
starting with fresh moments otherwise takes Adam's first, sign-like steps of size lr. The
scaling is exact for optimizers whose step is linear in lr (SGD, Adam(W), Lion: their state
does not depend on lr); it costs a copy of the warming layers' parameters during the step.
It needs no state of its own: how long a layer has been active follows from the step counter
and the draws.

The wrapper's own state (its step counter) is one tensor in the ``"wrappers"`` entry of the
state dict, so a resumed run draws the same layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optforge._seeding import generator_for
from optforge._validation import check_count, check_int
from optforge.optim.wrapper import OptimizerWrapper

__all__ = ["LISA"]


class LISA(OptimizerWrapper):
    """Layerwise importance sampling around ``optimizer`` (see the module docstring).

    Args:
        optimizer: the inner optimizer, over every parameter (active or not).
        layers: the sampled units, each a sequence of parameters (e.g. transformer blocks).
            Parameters in no layer are always trained.
        n_active: γ, layers trained per period.
        period: K, steps between draws.
        seed: keys the draws (with the period index).
        free_state: delete a frozen layer's optimizer state (default; fresh moments when it
            is re-drawn), or keep it (stale moments resume; no memory saving).
        rewarm_steps: W, steps of linear update re-warm-up after a layer becomes active
            (default 0: none; see the module docstring).

    Example:
        >>> blocks = [torch.nn.Linear(8, 8) for _ in range(4)]
        >>> params = [p for b in blocks for p in b.parameters()]
        >>> opt = LISA(torch.optim.AdamW(params), [list(b.parameters()) for b in blocks],
        ...            n_active=1, period=5)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        layers: Sequence[Sequence[Tensor]],
        *,
        n_active: int = 2,
        period: int = 20,
        seed: int = 0,
        free_state: bool = True,
        rewarm_steps: int = 0,
    ) -> None:
        super().__init__(optimizer)
        self.layers = [list(layer) for layer in layers]
        if not self.layers:
            raise ValueError("LISA needs at least one layer to sample")
        check_int("n_active", n_active, 1)
        if n_active > len(self.layers):
            raise ValueError(f"n_active must be <= {len(self.layers)} layers (got {n_active})")
        check_int("period", period, 1)
        check_int("seed", seed, 0)
        check_int("rewarm_steps", rewarm_steps, 0)
        if not isinstance(free_state, bool):
            raise TypeError(f"free_state must be True or False (got {free_state!r})")
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for i, layer in enumerate(self.layers):
            if any(id(p) not in owned for p in layer):
                raise ValueError(f"layer {i} holds a parameter the optimizer does not")
        self.n_active, self.period, self.seed = n_active, period, seed
        self.free_state = free_state
        self.rewarm_steps = rewarm_steps
        self.lisa_step = 0
        self._activate()

    def active_layers(self) -> list[int]:
        """Indices of the layers trained in the current period."""
        return self._drawn(self.lisa_step // self.period)

    def _drawn(self, period_index: int) -> list[int]:
        gen = generator_for("cpu", self.seed, period_index)
        return sorted(torch.randperm(len(self.layers), generator=gen)[: self.n_active].tolist())

    def _rewarm_factor(self, layer: int) -> float:
        """``(k + 1) / W`` for an active layer's k-th step since it became active, k < W."""
        period = self.lisa_step // self.period
        start = period  # first period of the layer's current run of consecutive draws
        while start > 0 and (period - start) * self.period < self.rewarm_steps and (
            layer in self._drawn(start - 1)
        ):
            start -= 1
        since = self.lisa_step - start * self.period
        return min(1.0, (since + 1) / self.rewarm_steps)

    def _activate(self) -> None:
        active = set(self.active_layers())
        for i, layer in enumerate(self.layers):
            for p in layer:
                p.requires_grad_(i in active)
                if i not in active:
                    p.grad = None
                    if self.free_state:
                        self.optimizer.state.pop(p, None)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        warming = []  # (parameter, its value before the step, the update's scale)
        if self.rewarm_steps:
            for i in self.active_layers():
                w = self._rewarm_factor(i)
                if w < 1.0:
                    warming += [(p, p.detach().clone(), w) for p in self.layers[i]]
        loss = super().step(closure)
        with torch.no_grad():
            for p, before, w in warming:
                p.copy_(before.lerp_(p, w))  # before + w (after - before), no temporary
        self.lisa_step += 1
        if self.lisa_step % self.period == 0:
            self._activate()
        return loss

    def _wrapper_state(self) -> dict[str, Any]:
        return {"lisa_step": torch.tensor(self.lisa_step, dtype=torch.int64)}

    def _parse_wrapper_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"lisa_step": check_count("lisa_step", state["lisa_step"])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._activate()  # the saved step decides which layers train now
