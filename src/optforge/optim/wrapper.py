"""A base for gradient transforms that wrap any ``torch.optim.Optimizer``.

The wrapper *is* an ``Optimizer`` (LR schedulers and hooks accept it) that shares the inner
optimizer's ``param_groups`` and ``state``: a scheduler that changes ``lr`` on the wrapper changes
it for the inner optimizer. Subclasses act before and after the inner step and keep their own
state in one extra ``state_dict`` entry, ``"wrappers"``: a list with one record per wrapper,
innermost first, so wrappers nest (``GradientNoise(AGVM(SGD(...)))``, or two of one class) and
the dict keeps torch's ``state``/``param_groups`` layout. The wrapper's own state-dict hooks run
around its whole dict, and its settings survive ``deepcopy`` and ``pickle``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from optforge.optim.base import picklable_state

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

    def __getstate__(self) -> dict[str, Any]:
        return picklable_state(self)  # the inner optimizer and the settings travel along

    # -- subclass hooks -------------------------------------------------------------------------
    def _wrapper_state(self) -> dict[str, Any]:
        """This wrapper's own state: tensors and plain numbers only."""
        return {}

    def _parse_wrapper_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Check what ``_wrapper_state`` returned; return the attributes to set from it.

        Runs before anything is loaded; the attributes are set only once the inner optimizer
        has loaded too. Raise ValueError/TypeError on a bad value (the caller names the entry).
        """
        return {}

    # -- the Optimizer interface ----------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_inner()
        return loss

    def _step_inner(self) -> None:
        """Step the inner optimizer with its own step hooks but not torch's global ones: those
        already ran around this wrapper's step, and one user step must fire them once."""
        inner = self.optimizer
        step = type(inner).step
        raw = getattr(step, "__wrapped__", None) if getattr(step, "hooked", False) else None
        if raw is None:
            inner.step()
            return
        args: tuple[Any, ...] = (inner,)
        kwargs: dict[str, Any] = {}
        for pre_hook in inner._optimizer_step_pre_hooks.values():
            result = pre_hook(inner, args, kwargs)
            if result is not None:
                args, kwargs = result
        raw(*args, **kwargs)
        for post_hook in inner._optimizer_step_post_hooks.values():
            post_hook(inner, args, kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self._sharing:  # during Optimizer.__init__ the groups already live in the inner one
            self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state = self.optimizer.state_dict()
        records = list(state.get("wrappers", []))
        records.append({"class": type(self).__name__, "state": self._wrapper_state()})
        state["wrappers"] = records
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state)
            if result is not None:
                state = result
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        if not isinstance(state_dict, dict):
            raise TypeError(f"{name}.load_state_dict expects a dict (got {type(state_dict)})")
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        records = state_dict.get("wrappers")
        if not isinstance(records, list) or not records:
            raise ValueError(f"state_dict has no 'wrappers' entry: it was not saved from a {name}")
        own = records[-1]
        if not isinstance(own, dict) or own.get("class") != name:
            found = own.get("class") if isinstance(own, dict) else own
            raise ValueError(f"state_dict['wrappers'][-1] was saved by {found!r}, not by a {name}")
        inner = dict(state_dict)
        if len(records) > 1:
            inner["wrappers"] = records[:-1]
        else:
            del inner["wrappers"]
        try:
            if not isinstance(own.get("state"), dict):
                raise TypeError("'state' must be a dict")
            attributes = self._parse_wrapper_state(own["state"])
        except KeyError as exc:
            raise ValueError(f"state_dict['wrappers'][-1] ({name}) lacks {exc}") from None
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"state_dict['wrappers'][-1] ({name}): {exc}") from None
        # The inner load checks its part; ours is applied only once both passed.
        self.optimizer.load_state_dict(inner)
        self.__dict__.update(attributes)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
