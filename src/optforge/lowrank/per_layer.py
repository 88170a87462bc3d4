"""Per-layer steps: each parameter is updated inside backward, as soon as its gradient is
complete, and its gradient freed at once (GaLore's "per-layer weight updates").

``PerLayerStep(params, factory, accumulation_steps=k)`` builds one optimizer per parameter
(``factory([param]) -> Optimizer``, any optforge or torch optimizer) and registers a
``register_post_accumulate_grad_hook`` on each parameter. The hook counts the backward passes
that reached that parameter; on every k-th it steps that parameter's optimizer and sets its
``.grad`` to None, so under gradient accumulation the parameter is updated once per k
micro-batches with the sum of their gradients, exactly as a whole-model step after k
backwards would (galore-torch's per-layer mode steps on every micro-batch, #78). Between
steps the gradients live only in ``.grad`` of the parameters still accumulating; at a step
boundary each is freed before the next layer's is produced, so at most one parameter's
gradient is alive at a time: the peak drops by the model's gradient bytes minus the largest
single gradient (a whole-model step holds them all until ``zero_grad``).

``step_count`` is the number of completed optimizer steps (for an LR scheduler: call
``set_lr`` after it changes). ``state_dict``/``load_state_dict`` hold every per-parameter
optimizer's dict plus the micro-batch counters, as tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optforge._validation import check_int

__all__ = ["PerLayerStep"]


class PerLayerStep:
    """Steps each parameter inside backward (see the module docstring).

    Example:
        >>> model = torch.nn.Linear(8, 4)
        >>> stepper = PerLayerStep(model.parameters(), lambda p: GaLoreAdamW(p, rank=2),
        ...                        accumulation_steps=2)
        >>> for _ in range(2):
        ...     model(torch.randn(3, 8)).sum().backward()   # steps on the 2nd backward
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        factory: Callable[[list[Tensor]], Optimizer],
        *,
        accumulation_steps: int = 1,
    ) -> None:
        check_int("accumulation_steps", accumulation_steps, 1)
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("PerLayerStep got no parameter that requires grad")
        self.accumulation_steps = accumulation_steps
        self.optimizers = [factory([p]) for p in self.params]
        self.counts = torch.zeros(len(self.params), dtype=torch.int64)
        self.handles = [
            p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(self.params)
        ]

    def _hook(self, i: int) -> Callable[[Tensor], None]:
        def hook(param: Tensor) -> None:
            self.counts[i] += 1
            if int(self.counts[i]) % self.accumulation_steps == 0:
                self.optimizers[i].step()
                param.grad = None

        return hook

    @property
    def step_count(self) -> int:
        """Optimizer steps completed by the parameter that has completed the fewest."""
        return int(self.counts.min()) // self.accumulation_steps

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def remove(self) -> None:
        """Unregister the hooks (the parameters go back to ordinary backward)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "counts": self.counts.clone(),
            "accumulation_steps": self.accumulation_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["optimizers"]
        if len(saved) != len(self.optimizers):
            raise ValueError(
                f"state_dict holds {len(saved)} per-parameter optimizers, this PerLayerStep "
                f"has {len(self.optimizers)}"
            )
        if state_dict["accumulation_steps"] != self.accumulation_steps:
            raise ValueError(
                f"state_dict was saved with accumulation_steps="
                f"{state_dict['accumulation_steps']}, this PerLayerStep has "
                f"{self.accumulation_steps}"
            )
        for opt, sd in zip(self.optimizers, saved):
            opt.load_state_dict(sd)
        self.counts.copy_(state_dict["counts"])
