"""The base of optforge's optimizers: checks, declared state, exact checkpoints, two step skeletons.

``OptimizerBase`` holds what every optimizer shares:

* **Hyperparameter checks** run on construction, on ``add_param_group`` and on
  ``load_state_dict`` alike (``_check_group``), plus the shared flags (booleans must be booleans;
  ``fused`` and ``foreach`` conflict; ``backend`` names a real backend).
* **Declared state.** ``state_schema(param, group)`` says which tensors a parameter keeps, with
  each one's dtype, shape and device (``StateSpec``). Parameters of one optimizer may keep
  different entries. State is created from it, and a checkpoint is checked against it.
* **A loader that keeps dtypes.** torch's ``load_state_dict`` casts every floating state tensor to
  the parameter's dtype (fp32 moments of a bf16 parameter come back as bf16). Ours runs the
  load pre-hooks first (so they can repair a dict), validates every group and state entry with
  a message naming the checkpoint entry, moves tensors to their device and keeps the declared
  dtype.
* **Settings that survive ``deepcopy``/``pickle``.** torch's ``__getstate__`` keeps only
  ``defaults``, ``state`` and ``param_groups``; ours keeps every attribute but the hooks (which
  torch drops too) and caches.
* **A stable global parameter index** (``param_index``): the position of a parameter across all
  groups, as in ``state_dict``. Seeded per-tensor random streams key on it.

Two step skeletons stand on it: ``FirstOrderOptimizer`` (gather gradients, check, update) and
``ZerothOrderOptimizer`` (closure required, no gradients, runs under ``no_grad``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass
from itertools import chain
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from optforge._seeding import generator_for
from optforge.kernels import Rule, all_finite, apply_rule_, check_backend, unscaled
from optforge.optim.rules import random_rounding_bits

__all__ = [
    "CHECK_FINITE_DOC",
    "FirstOrderOptimizer",
    "OptimizerBase",
    "StateSpec",
    "ZerothOrderOptimizer",
]

CHECK_FINITE_DOC = """check_finite: before touching any parameter or state, check that every
            gradient is finite and raise ``FloatingPointError`` otherwise (default True). Off,
            non-finite values flow into parameters and state as in torch.optim (one less pass
            over the gradients, and no host sync on CUDA). Under ``torch.amp.GradScaler`` the
            scaler's own check decides instead: a step with non-finite gradients is skipped,
            not raised (see ``FirstOrderOptimizer``)."""

_HOOKS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)
#: flags that must be real booleans (``None`` allowed where it means "let the library pick").
_BOOL_FLAGS = {
    "maximize": False,
    "check_finite": False,
    "stochastic_rounding": False,
    "master_weights": False,
    "foreach": True,
    "fused": True,
}
#: switches a checkpoint may lack because it was saved before they existed; loading fills them
#: with this optimizer's defaults, as torch does for its flags. Hyperparameters proper (lr,
#: betas, ...) must be present: a dict without them is not this optimizer's.
_FLAGS_FILLED_ON_LOAD = (*_BOOL_FLAGS, "backend", "seed")
#: the counter that seeds a parameter's stochastic-rounding bits (added to its state when used).
_ROUNDING_STEP = "rounding_step"


def picklable_state(optimizer: Optimizer, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``__getstate__`` that keeps every setting, so that ``deepcopy``/``pickle`` give an
    optimizer that can step (torch's keeps only defaults, state and groups). Hooks are dropped,
    as torch drops them."""
    return {k: v for k, v in optimizer.__dict__.items() if k not in {*_HOOKS, *skip}}


@dataclass(frozen=True)
class StateSpec:
    """One per-parameter state tensor.

    Args:
        dtype: a ``torch.dtype``; ``"param"``: the parameter's; ``"at_least_fp32"``: fp32 for
            bf16/fp16 parameters, the parameter's otherwise.
        shape: a fixed shape (``()`` for a scalar) or None for the parameter's shape.
        device: ``"param"`` (the parameter's device) or ``"cpu"`` (host counters).
    """

    dtype: torch.dtype | str = "param"
    shape: tuple[int, ...] | None = None
    device: str = "param"

    def dtype_for(self, param: Tensor) -> torch.dtype:
        if self.dtype == "param":
            return param.dtype
        if self.dtype == "at_least_fp32":
            return torch.promote_types(param.dtype, torch.float32)
        assert isinstance(self.dtype, torch.dtype)
        return self.dtype

    def shape_for(self, param: Tensor) -> tuple[int, ...]:
        return tuple(param.shape) if self.shape is None else self.shape

    def device_for(self, param: Tensor) -> torch.device:
        return param.device if self.device == "param" else torch.device(self.device)

    def zeros(self, param: Tensor) -> Tensor:
        if self.shape is None and self.dtype == "param" and self.device == "param":
            return torch.zeros_like(param, memory_format=torch.preserve_format)
        return torch.zeros(
            self.shape_for(param), dtype=self.dtype_for(param), device=self.device_for(param)
        )


def _rounds(param: Tensor, group: dict[str, Any]) -> bool:
    return bool(group.get("stochastic_rounding")) and param.dtype == torch.bfloat16


class OptimizerBase(Optimizer):
    """What every optforge optimizer shares; see the module docstring."""

    #: the per-parameter state of every parameter, unless ``state_schema`` says otherwise.
    state_spec: ClassVar[Mapping[str, StateSpec]] = {}
    #: the rules this optimizer runs (used to refuse backends a rule cannot take).
    rules: ClassVar[tuple[Rule, ...]] = ()

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
    ) -> None:
        #: the hyperparameters a checkpoint's groups must carry (torch adds others on load).
        self._hyper_names = tuple(defaults)
        super().__init__(params, defaults)

    # -- to be provided by subclasses ---------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate one group's hyperparameters (defaults merged in); raise with a clear message."""

    def state_schema(self, param: Tensor, group: dict[str, Any]) -> Mapping[str, StateSpec]:
        """The state entries ``param`` keeps: ``state_spec``, plus the counter of its rounding
        stream when ``stochastic_rounding`` applies to it (a bf16 parameter)."""
        if _rounds(param, group):
            return {**self.state_spec, _ROUNDING_STEP: StateSpec(torch.int64, (), "cpu")}
        return self.state_spec

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Create the state of ``param`` (zeros of the declared dtype, shape and device)."""
        for key, spec in self.state_schema(param, group).items():
            state[key] = spec.zeros(param)

    # -- groups -----------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._validate_group({**self.defaults, **param_group})
        super().add_param_group(param_group)
        self._index_cache = None
        group = self.param_groups[-1]
        if group.get("stochastic_rounding") and any(
            p.dtype == torch.float16 for p in group["params"]
        ):
            self.param_groups.pop()
            raise ValueError(
                "stochastic_rounding rounds fp32 results to bf16; fp16 parameters are not "
                "supported (use bf16 parameters, or stochastic_rounding=False)"
            )
        if any(p.is_meta for p in group["params"]):
            self.param_groups.pop()
            raise ValueError(
                f"{type(self).__name__}: a parameter is on the meta device and holds no data; "
                "materialize the model (e.g. model.to_empty(device=...)) before creating the "
                "optimizer"
            )

    def _validate_group(self, group: dict[str, Any]) -> None:
        for flag, none_ok in _BOOL_FLAGS.items():
            if flag in group and not (
                isinstance(group[flag], bool) or (none_ok and group[flag] is None)
            ):
                allowed = "True, False or None" if none_ok else "True or False"
                raise TypeError(f"{flag} must be {allowed} (got {group[flag]!r})")
        if group.get("fused") and group.get("foreach"):
            raise ValueError("fused=True and foreach=True are mutually exclusive; pick one")
        backend = group.get("backend")
        if backend is not None:
            check_backend(backend)  # the built-in names and any registered kernel's
            if group.get("fused") or group.get("foreach"):
                raise ValueError(
                    f"backend={backend!r} and fused/foreach both choose the backend; pick one"
                )
        if group.get("foreach") or backend == "foreach":
            for rule in self.rules:
                if not rule.elementwise:
                    raise ValueError(
                        f"{type(self).__name__} has no foreach path: {rule.name} reduces over "
                        "each tensor (use fused=True or backend='compiled')"
                    )
        self._check_group(group)

    def _backend(self, group: dict[str, Any]) -> str:
        if group.get("fused"):
            return "compiled"
        if group.get("foreach"):
            return "foreach"
        return group.get("backend") or "auto"

    # -- the global parameter index -------------------------------------------------------------
    def param_index(self, param: Tensor) -> int:
        """Position of ``param`` across all groups (its id in ``state_dict``): stable under
        checkpointing, so seeded per-parameter streams can key on it."""
        cache = getattr(self, "_index_cache", None)
        if cache is None:
            params = chain.from_iterable(g["params"] for g in self.param_groups)
            cache = self._index_cache = {p: i for i, p in enumerate(params)}
        return cache[param]

    # -- pickling -----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # The index cache is keyed by tensor identity, which a copy does not keep.
        return picklable_state(self, skip=("_index_cache",))

    # -- checkpoints ------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict`` of this optimizer: checked entry by entry, dtypes kept.

        Load pre-hooks run first and may repair the dict; then every param group passes the
        constructor's checks and every state entry must match ``state_schema`` in keys, shape
        and dtype (floating state saved in another floating dtype is converted to the declared
        one). Errors name the checkpoint entry.
        """
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name}.load_state_dict expects a dict (got {type(state_dict)})")
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        if not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError(f"{name}.load_state_dict expects 'state' and 'param_groups' entries")
        saved_groups = deepcopy(state_dict["param_groups"])
        groups = self.param_groups
        if len(saved_groups) != len(groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} param groups, this {name} has {len(groups)}"
            )
        id_to_param: dict[Any, tuple[Tensor, dict[str, Any]]] = {}
        for i, (group, saved) in enumerate(zip(groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"state_dict['param_groups'][{i}] has {len(saved['params'])} parameters, "
                    f"this {name}'s group {i} has {len(group['params'])}"
                )
            for flag in _FLAGS_FILLED_ON_LOAD:  # older checkpoints predate these flags
                if flag not in saved and flag in self.defaults:
                    saved[flag] = self.defaults[flag]
            missing = [k for k in self._hyper_names if k not in saved]
            if missing:
                raise ValueError(
                    f"state_dict['param_groups'][{i}] lacks {missing}: not saved from a {name}"
                )
            try:
                self._validate_group(saved)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"state_dict['param_groups'][{i}]: {exc}") from None
            for pid, p in zip(saved["params"], group["params"]):
                id_to_param[pid] = (p, saved)
        state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        for pid, entry in state_dict["state"].items():
            if pid not in id_to_param:
                raise ValueError(
                    f"state_dict['state'][{pid!r}] belongs to no parameter of its param groups"
                )
            param, saved = id_to_param[pid]
            state[param] = self._load_entry(f"state_dict['state'][{pid!r}]", param, saved, entry)
        for group, saved in zip(groups, saved_groups):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
        self.__setstate__({"state": state, "param_groups": saved_groups})
        self._index_cache = None
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load_entry(
        self, where: str, param: Tensor, group: dict[str, Any], entry: Any
    ) -> dict[str, Any]:
        schema = self.state_schema(param, group)
        if not isinstance(entry, Mapping) or set(entry) != set(schema):
            keys = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
            raise ValueError(
                f"{where} holds {keys}; {type(self).__name__} keeps {sorted(schema)} for a "
                f"parameter of shape {tuple(param.shape)}"
            )
        loaded = {}
        for key, spec in schema.items():
            value = entry[key]
            shape, dtype = spec.shape_for(param), spec.dtype_for(param)
            if shape == () and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = torch.tensor(value, dtype=dtype)  # saved as a Python number (old torch)
            if not isinstance(value, Tensor):
                raise TypeError(f"{where}[{key!r}] must be a tensor (got {type(value).__name__})")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{where}[{key!r}] has shape {tuple(value.shape)}, expected {shape} "
                    f"(the parameter's shape is {tuple(param.shape)})"
                )
            if value.dtype != dtype and not (value.is_floating_point() and dtype.is_floating_point):
                raise ValueError(f"{where}[{key!r}] has dtype {value.dtype}, expected {dtype}")
            loaded[key] = value.to(device=spec.device_for(param), dtype=dtype, copy=True)
        return loaded


class FirstOrderOptimizer(OptimizerBase):
    """The gradient step skeleton: closure, gather, finiteness check, lazy state, update.

    Subclasses implement ``_update_group(group, params, grads)``; ``_before_update(grads)``
    runs once per step with every gradient (e.g. global clipping).

    **torch.amp.GradScaler.** Like torch's fused Adam, these optimizers declare
    ``_step_supports_amp_scaling``: ``GradScaler.step`` then sets ``grad_scale`` (its scale, or
    None after ``scaler.unscale_(opt)``) and ``found_inf`` on the optimizer and calls ``step()``
    with the gradients still scaled. The skeleton reads both in one host read (free on CPU;
    one sync on CUDA, as torch's non-fused path) and

    * skips the whole step when ``found_inf`` is non-zero: no parameter, state or step counter
      is written (``check_finite`` does not raise: the scaler expects such steps and lowers
      its scale);
    * otherwise unscales where the rule reads the gradient (``kernels.unscaled``: inside the
      compiled graph, the foreach tile, the C 8-bit loop) for classes whose every gradient
      read goes through ``_apply``/``_unscaled`` (``_unscales_in_update``); the others get the
      gradients unscaled in place first, as ``GradScaler.unscale_`` would do.

    A subclass that overrides ``step`` does not declare the support (it would get scaled
    gradients it does not expect), unless it sets ``_step_supports_amp_scaling`` itself.
    """

    _step_supports_amp_scaling: ClassVar[bool] = True
    #: True where every gradient read goes through ``_apply`` or ``_unscaled``.
    _unscales_in_update: ClassVar[bool] = False
    #: the inverse scale of the step in progress (None: gradients are not scaled).
    _inv_grad_scale: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__ and "_step_supports_amp_scaling" not in cls.__dict__:
            cls._step_supports_amp_scaling = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        check_finite: bool = True,
    ) -> None:
        super().__init__(params, {**defaults, "check_finite": check_finite})

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        raise NotImplementedError

    def _before_update(self, grads: list[Tensor]) -> None:
        """Runs once per step with all gradients, before any update."""

    def _apply(
        self,
        rule: Rule,
        group: dict[str, Any],
        lists: tuple[list[Tensor], ...],
        hyper: dict[str, Any],
    ) -> None:
        """Run a ``direction_rule`` over ``(params, *states, grads)`` on the group's backend.

        Where ``stochastic_rounding`` applies (bf16 parameters of a group that asks for it), the
        parameters get the rule's ``random_bits`` input, drawn from a generator keyed by
        (seed, the parameter's rounding step, its global index): reproducible and resumable.
        """
        backend = self._backend(group)
        params = lists[0]
        rule, hyper = self._unscaled(rule, len(lists) - 1, hyper)
        rounded = [i for i, p in enumerate(params) if _rounds(p, group)]
        if not rounded:
            apply_rule_(rule, lists, hyper, backend=backend)
            return
        plain = [i for i in range(len(params)) if not _rounds(params[i], group)]
        if plain:
            apply_rule_(rule, [[lst[i] for i in plain] for lst in lists], hyper, backend=backend)
        bits = []
        for i in rounded:
            p, state = params[i], self.state[params[i]]
            keys = (group.get("seed", 0), int(state[_ROUNDING_STEP]), self.param_index(p))
            bits.append(random_rounding_bits(p.shape, generator_for(p.device, *keys)))
            state[_ROUNDING_STEP] += 1
        chosen = [[lst[i] for i in rounded] for lst in lists]
        apply_rule_(rule, [*chosen, bits], hyper, backend=backend)

    def _unscaled(
        self, rule: Rule, grad_list: int, hyper: dict[str, Any]
    ) -> tuple[Rule, dict[str, Any]]:
        """``rule`` and ``hyper`` for the step in progress: under a GradScaler scale, the rule
        that reads tensor ``grad_list`` (the gradient) unscaled; otherwise both unchanged."""
        if self._inv_grad_scale is None:
            return rule, hyper
        return unscaled(rule, grad_list), {**hyper, "inv_grad_scale": self._inv_grad_scale}

    def _amp_step(self) -> tuple[bool, float | None]:
        """(whether GradScaler asks for this step, the inverse scale or None) from the
        ``found_inf``/``grad_scale`` attributes ``GradScaler.step`` sets; one host read."""
        found_inf = getattr(self, "found_inf", None)
        grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None and grad_scale is None:
            return True, None
        values = [
            torch.as_tensor(0.0 if found_inf is None else found_inf),
            torch.as_tensor(1.0 if grad_scale is None else grad_scale),
        ]
        device = values[0].device if found_inf is not None else values[1].device
        # both on the scaler's device: stacked there, so one copy (one sync on CUDA)
        stacked = torch.stack([v.to(device).double().reshape(()) for v in values])
        found, scale = stacked.tolist()
        if found != 0:
            return False, None
        if grad_scale is None or scale == 1.0:
            return True, None
        # GradScaler.unscale_'s inverse: the reciprocal in double (a Python float), rounded to fp32.
        return True, float(torch.tensor(1.0 / scale, dtype=torch.float32))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        run, inv_scale = self._amp_step()
        if not run:
            return loss  # GradScaler found inf/NaN: nothing is written, the step not counted
        gathered = [self._gather(group) for group in self.param_groups]
        if getattr(self, "found_inf", None) is None:  # under GradScaler its check decides
            self._raise_if_nonfinite(gathered)
        if inv_scale is not None and not self._unscales_in_update:
            for _, grads in gathered:
                if grads:
                    torch._foreach_mul_(grads, inv_scale)
            inv_scale = None
        self._inv_grad_scale = inv_scale
        try:
            self._before_update([g for _, grads in gathered for g in grads])
            for group, (params, grads) in zip(self.param_groups, gathered):
                for p in params:
                    if not self.state.get(p):
                        # an entry only for a parameter that keeps state (torch's SGD without
                        # momentum keeps none, and its state_dict lists no parameter)
                        state: dict[str, Any] = {}
                        self._init_state(p, state, group)
                        if state:
                            self.state[p] = state
                if params:
                    self._update_group(group, params, grads)
        finally:
            self._inv_grad_scale = None
        return loss

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients; "
                    "consider torch.optim.SparseAdam instead"
                )
            params.append(p)
            grads.append(p.grad)
        return params, grads

    def _raise_if_nonfinite(self, gathered: list[tuple[list[Tensor], list[Tensor]]]) -> None:
        # Every group's gradients are checked before any update writes (kernels.all_finite:
        # eager packs on CPU, compiled reductions on CUDA), then one host sync decides.
        flags = [
            all_finite(grads, backend=self._backend(group))
            for group, (_, grads) in zip(self.param_groups, gathered)
            if group["check_finite"] and grads
        ]
        if not flags or all(bool(f) for f in flags):
            return
        for gi, (group, (_, grads)) in enumerate(zip(self.param_groups, gathered)):
            if not group["check_finite"]:
                continue
            for pi, g in enumerate(grads):
                if not bool(torch.isfinite(g).all()):
                    raise FloatingPointError(
                        f"{type(self).__name__}: the gradient of parameter {pi} in param group "
                        f"{gi} contains inf or NaN; no parameter or state was changed. Skip this "
                        "step, or pass check_finite=False to let non-finite values through."
                    )


class ZerothOrderOptimizer(OptimizerBase):
    """The zeroth-order step skeleton: ``step(closure)`` with a closure that returns the loss.

    The closure runs without a backward (under ``torch.no_grad``); the loss may be
    non-differentiable. Subclasses implement ``_zo_step(closure) -> loss`` and evaluate the
    closure through ``evaluate``; gradients are never read.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One zeroth-order step; returns the loss the closure gave at the current parameters."""
        if closure is None or not callable(closure):
            raise TypeError(
                f"{type(self).__name__}.step needs a closure that computes and returns the loss "
                "(no backward): opt.step(lambda: loss_fn(model(x), y))"
            )
        return self._zo_step(closure)

    def evaluate(self, closure: Callable[[], Any]) -> Tensor:
        """The closure's loss as a 0-d float64 tensor; a clear error if it is not a scalar."""
        loss = closure()
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            return torch.tensor(float(loss), dtype=torch.float64)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            what = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise TypeError(
                f"{type(self).__name__}: the closure must return a scalar loss (got {what})"
            )
        return loss.detach().reshape(()).to(torch.float64)

    def _zo_step(self, closure: Callable[[], Any]) -> Any:
        raise NotImplementedError
