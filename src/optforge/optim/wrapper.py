"""A base for gradient transforms that wrap any ``torch.optim.Optimizer``.

The wrapper *is* an ``Optimizer`` (LR schedulers and hooks accept it) that shares the inner
optimizer's ``param_groups`` and ``state``: a scheduler that changes ``lr`` on the wrapper changes
it for the inner optimizer. Subclasses act before and after the inner step and keep their own
state under one extra ``state_dict`` key named after the class, so wrappers nest
(``GradientNoise(AGVM(SGD(...)))``) and the dict keeps torch's ``state``/``param_groups`` layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["OptimizerWrapper"]


class OptimizerWrapper(Optimizer):
    """Wraps ``optimizer``; subclasses override the step and state hooks below."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__} wraps a torch.optim.Optimizer"
                f" (got {type(optimizer).__name__})"
            )
        self.optimizer = optimizer
        self._sharing = False  # Optimizer.__init__ below sets up hooks; it must not touch groups
        super().__init__(optimizer.param_groups, {})
        self._sharing = True

    # Delegated, not copied: the inner optimizer replaces these objects on load_state_dict, and
    # schedulers or add_param_group acting on the wrapper must act on the inner optimizer.
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        if self._sharing:
            self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        if self._sharing:
            self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        if self._sharing:
            self.optimizer.defaults = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optimizer!r})"

    @property
    def _state_key(self) -> str:
        return f"wrapper:{type(self).__name__}"

    # -- subclass hooks -------------------------------------------------------------------------
    def _before_step(self) -> None:
        """Runs after the closure, before the inner step (gradients are final here)."""

    def _after_step(self) -> None:
        """Runs after the inner step."""

    def _wrapper_state(self) -> dict[str, Any]:
        """This wrapper's own state: tensors and plain numbers only."""
        return {}

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_wrapper_state`` returned."""

    # -- the Optimizer interface ----------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._before_step()
        self.optimizer.step()
        self._after_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self._sharing:  # during Optimizer.__init__ the groups already live in the inner one
            self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        state[self._state_key] = self._wrapper_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or self._state_key not in state_dict:
            raise ValueError(
                f"state_dict has no {self._state_key!r} entry: it was not saved from a "
                f"{type(self).__name__}"
            )
        state_dict = dict(state_dict)
        own = state_dict.pop(self._state_key)
        self.optimizer.load_state_dict(state_dict)
        self._load_wrapper_state(own)
