"""Training algorithms as AlgoPerf submissions (PyTorch flavour of the five-function API).

A submission decides only how parameters are updated; the workload fixes everything else
(AlgoPerf ``submissions/template/submission.py``). The runner calls, per trial:
``get_batch_size`` once, ``init_optimizer_state`` once (off the clock), then per step
``data_selection`` and ``update_params`` (on the clock), and ``prepare_for_eval`` before each
evaluation (on the clock). Randomness comes in as a ``torch.Generator`` keyed by
``(seed, step, purpose)``, so a run is a pure function of its seed.

``RegistrySubmission`` turns any optimizer in ``optforge.create_optimizer``'s registry into a
submission with AlgoPerf's baseline recipe: linear warm-up then cosine decay over the
workload's step hint, decoupled weight decay and optional gradient clipping.

Example:
    >>> sub = get_submission("nadamw")
    >>> sub.search_space["learning_rate"]
    {'min': 0.0002, 'max': 0.02, 'scaling': 'log'}
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from optforge._validation import check_in_range, check_non_negative, check_positive
from optforge.bench.workload import Workload

__all__ = [
    "WORKLOAD_HPARAMS", "RegistrySubmission", "Submission", "TrainingComplete",
    "cosine_warmup_factor",
    "get_submission", "list_submissions", "register_submission",
]


class TrainingComplete(Exception):
    """Raised by ``update_params`` to end the run: the runner evaluates once more and stops
    (AlgoPerf's ``spec.TrainingCompleteError``)."""


class Submission:
    """Base class of a training algorithm under test.

    Subclasses implement ``init_optimizer_state`` and ``update_params``; the other three
    functions have AlgoPerf's defaults (the workload's batch size, the workload's own batch
    order, no preparation before evaluation).

    Attributes:
        name: registry name.
        search_space: AlgoPerf ``tuning_search_space.json`` format, a dict mapping each
            hyperparameter to ``{"min", "max", "scaling": "linear" | "log"}`` or
            ``{"feasible_points": [...]}``.
        default_hparams: the configuration used by the self-tuning ruleset and quick runs.
        self_tuning: True if the submission tunes itself (no search space is used).
        batch_sizes: per-workload batch sizes; workloads not listed use their default.
    """

    name: str = ""
    search_space: dict[str, dict[str, Any]] = {}
    default_hparams: dict[str, Any] = {}
    self_tuning: bool = False
    batch_sizes: Mapping[str, int] = {}

    def get_batch_size(self, workload_name: str) -> int:
        """Training batch size for ``workload_name`` (the workload's default unless listed)."""
        if workload_name in self.batch_sizes:
            return int(self.batch_sizes[workload_name])
        from optforge.bench.workloads import get_workload

        return get_workload(workload_name).default_batch_size

    def init_optimizer_state(self, workload: Workload, model: nn.Module,
                             hparams: Mapping[str, Any], rng: torch.Generator) -> dict[str, Any]:
        """Build the optimizer state (off the clock). Model initialization is not part of it."""
        raise NotImplementedError

    def update_params(self, workload: Workload, model: nn.Module, hparams: Mapping[str, Any],
                      batch: Any, optimizer_state: dict[str, Any], global_step: int,
                      rng: torch.Generator) -> dict[str, Any]:
        """One training step on ``batch``; returns the optimizer state.

        Setting ``optimizer_state["loss"]`` to the step's loss (a 0-dim tensor or a float) lets
        the runner stop a diverged run at once instead of at the next evaluation.
        """
        raise NotImplementedError

    def prepare_for_eval(self, workload: Workload, model: nn.Module,
                         hparams: Mapping[str, Any], optimizer_state: dict[str, Any],
                         global_step: int) -> dict[str, Any]:
        """Called (and timed) before each evaluation, e.g. to swap in averaged weights."""
        return optimizer_state

    def data_selection(self, workload: Workload, hparams: Mapping[str, Any],
                       optimizer_state: dict[str, Any], global_step: int, seed: int) -> Any:
        """The batch for ``global_step``; the default is the workload's fixed order."""
        # on the clock: look the batch size up once per workload, not once per step
        cache = self.__dict__.setdefault("_batch_size_cache", {})
        if workload.name not in cache:
            cache[workload.name] = self.get_batch_size(workload.name)
        return workload.train_batch(global_step, seed, cache[workload.name])

    def model_for_eval(self, model: nn.Module, optimizer_state: Any) -> nn.Module:
        """The model to evaluate: ``model`` unless the submission swapped in another (an
        AlgoPerf file returns its parameter container from each call)."""
        return model

    def observe(self, optimizer_state: Any, *, step: int, train_time_s: float,
                evaluation: Mapping[str, float] | None = None) -> None:
        """Told after each step (and each evaluation) how far the run is; nothing by default
        (AlgoPerf files read it as ``train_state`` and ``eval_results``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def cosine_warmup_factor(step: int, step_hint: float, warmup_factor: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 0 at ``step_hint``.

    ``warmup_steps = warmup_factor * step_hint``; the factor is ``(step + 1) / warmup_steps``
    during warm-up, ``0.5 * (1 + cos(pi * t))`` with ``t`` the fraction of the decay phase done,
    and 0 past ``step_hint`` (AlgoPerf's ``pytorch_cosine_warmup``, without its restarts past
    the horizon).
    """
    warmup = warmup_factor * step_hint
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(step_hint - warmup, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


#: AlgoPerf's workload-side hyperparameters: the runner gives the dropout rates to the model
#: and the submission gives ``label_smoothing`` to the loss; never to an optimizer.
WORKLOAD_HPARAMS = ("dropout_rate", "aux_dropout_rate", "label_smoothing")
#: Hyperparameters the recipe itself consumes; every other key goes to the optimizer.
_RECIPE_KEYS = ("learning_rate", "weight_decay", "warmup_factor", "grad_clip_norm",
                "step_hint_factor", "one_minus_beta1", "beta1", "beta2", *WORKLOAD_HPARAMS)


class RegistrySubmission(Submission):
    """Any registered optimizer + warm-up/cosine schedule + optional clipping, as a submission.

    Hyperparameters (AlgoPerf's baseline names):
        learning_rate: peak learning rate.
        weight_decay: passed to ``create_optimizer`` (biases and norms are not decayed).
        warmup_factor: warm-up length as a fraction of the step hint (default 0.05).
        step_hint_factor: schedule horizon as a fraction of ``workload.step_budget`` (1.0).
        one_minus_beta1 or beta1, and beta2: momentum coefficients; with
            ``momentum_style="momentum"`` beta1 becomes SGD's ``momentum`` (beta2 is refused).
        grad_clip_norm: clip the global gradient norm to this value; absent, None or 0: off.
        label_smoothing: passed to the workload's loss (AlgoPerf's workload-side
            hyperparameter; ``dropout_rate`` and ``aux_dropout_rate`` go to the model, set by
            the runner).
        anything else: passed to the optimizer's constructor as is (e.g. ``eps``).

    Args:
        name: submission name.
        optimizer: a name from ``optforge.list_optimizers()``.
        search_space, default_hparams: see ``Submission``.
        momentum_style: ``"betas"`` (Adam family, Lion, LAMB) or ``"momentum"`` (SGD).
        fixed_kwargs: constructor arguments that are not tuned (e.g. ``nesterov=True``).
        batch_sizes: per-workload batch sizes.

    Example:
        >>> sub = RegistrySubmission("my_adamw", "adamw",
        ...     search_space={"learning_rate": {"min": 1e-4, "max": 1e-2, "scaling": "log"}},
        ...     default_hparams={"learning_rate": 1e-3, "weight_decay": 0.1})
    """

    def __init__(self, name: str, optimizer: str, *, search_space: dict[str, dict[str, Any]],
                 default_hparams: dict[str, Any], momentum_style: str = "betas",
                 fixed_kwargs: Mapping[str, Any] | None = None,
                 batch_sizes: Mapping[str, int] | None = None, description: str = "") -> None:
        if momentum_style not in ("betas", "momentum"):
            raise ValueError(
                f"momentum_style must be 'betas' or 'momentum' (got {momentum_style!r})"
            )
        self.name, self.optimizer = name, optimizer
        self.search_space = copy.deepcopy(search_space)
        self.default_hparams = dict(default_hparams)
        self.momentum_style = momentum_style
        self.fixed_kwargs = dict(fixed_kwargs or {})
        self.batch_sizes = dict(batch_sizes or {})
        self.description = description
        self.self_tuning = False

    def optimizer_kwargs(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments of the optimizer for ``hparams`` (schedule keys removed)."""
        kwargs = dict(self.fixed_kwargs)
        kwargs.update({k: v for k, v in hparams.items() if k not in _RECIPE_KEYS})
        beta1: float | None = None
        if "one_minus_beta1" in hparams:
            beta1 = 1.0 - check_in_range("one_minus_beta1", hparams["one_minus_beta1"],
                                         0.0, 1.0, high_inclusive=True)
        elif "beta1" in hparams:
            beta1 = check_in_range("beta1", hparams["beta1"], 0.0, 1.0)
        if self.momentum_style == "momentum":
            if "beta2" in hparams:
                raise ValueError(
                    f"beta2 is not a hyperparameter of {self.name!r} (momentum_style='momentum')"
                )
            if beta1 is not None:
                kwargs["momentum"] = beta1
        elif beta1 is not None or "beta2" in hparams:
            if beta1 is None or "beta2" not in hparams:
                raise ValueError(
                    f"{self.name!r} needs both beta1 (or one_minus_beta1) and beta2 "
                    f"(got {sorted(hparams)})"
                )
            kwargs["betas"] = (beta1, check_in_range("beta2", hparams["beta2"], 0.0, 1.0))
        return kwargs

    def init_optimizer_state(self, workload: Workload, model: nn.Module,
                             hparams: Mapping[str, Any], rng: torch.Generator) -> dict[str, Any]:
        from optforge.registry import create_optimizer

        lr = check_positive("learning_rate", hparams["learning_rate"])
        wd = check_non_negative("weight_decay", hparams.get("weight_decay", 0.0))
        warmup = check_in_range("warmup_factor", hparams.get("warmup_factor", 0.05), 0.0, 1.0)
        hint_factor = check_positive("step_hint_factor", hparams.get("step_hint_factor", 1.0))
        clip = hparams.get("grad_clip_norm")
        if clip is not None:
            clip = check_non_negative("grad_clip_norm", clip) or None
        opt = create_optimizer(self.optimizer, model, lr=lr, weight_decay=wd,
                               **self.optimizer_kwargs(hparams))
        step_hint = hint_factor * workload.step_budget
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: cosine_warmup_factor(step, step_hint, warmup)
        )
        return {"optimizer": opt, "scheduler": sched, "grad_clip_norm": clip}

    def update_params(self, workload: Workload, model: nn.Module, hparams: Mapping[str, Any],
                      batch: Any, optimizer_state: dict[str, Any], global_step: int,
                      rng: torch.Generator) -> dict[str, Any]:
        opt: torch.optim.Optimizer = optimizer_state["optimizer"]
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = workload.loss(model, batch, hparams.get("label_smoothing", 0.0))
        loss.backward()
        if optimizer_state["grad_clip_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optimizer_state["grad_clip_norm"])
        opt.step()
        optimizer_state["scheduler"].step()
        optimizer_state["loss"] = loss.detach()
        return optimizer_state


# ------------------------------------------------------------------------------- baselines
_ADAM_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"min": 2e-4, "max": 2e-2, "scaling": "log"},
    "one_minus_beta1": {"min": 0.02, "max": 0.2, "scaling": "log"},
    "beta2": {"feasible_points": [0.99, 0.999]},
    "weight_decay": {"min": 1e-3, "max": 0.5, "scaling": "log"},
    "warmup_factor": {"feasible_points": [0.02, 0.05, 0.1]},
}
# AlgoPerf's NAdamW baseline point 3 (point 1 without label smoothing), tuning_search_space.json
# of algorithms/baselines/external_tuning, rounded to 4 significant digits (bench card §10).
_ALGOPERF_POINT = {"learning_rate": 1.308e-3, "one_minus_beta1": 0.02687, "beta2": 0.9981,
                   "weight_decay": 0.1638, "warmup_factor": 0.1}


def _baselines() -> dict[str, Callable[[], Submission]]:
    return {
        "adamw": lambda: RegistrySubmission(
            "adamw", "adamw", search_space=_ADAM_SPACE, default_hparams=_ALGOPERF_POINT,
            description="AdamW (Loshchilov & Hutter, 2019), warm-up + cosine"),
        "nadamw": lambda: RegistrySubmission(
            "nadamw", "nadamw", search_space=_ADAM_SPACE, default_hparams=_ALGOPERF_POINT,
            description="NAdamW, AlgoPerf's baseline (Dozat, 2016 + decoupled decay)"),
        "sgd_momentum": lambda: RegistrySubmission(
            "sgd_momentum", "sgd", momentum_style="momentum", fixed_kwargs={"nesterov": True},
            search_space={
                "learning_rate": {"min": 1e-3, "max": 1.0, "scaling": "log"},
                "one_minus_beta1": {"min": 0.01, "max": 0.2, "scaling": "log"},
                "weight_decay": {"min": 1e-6, "max": 1e-3, "scaling": "log"},
                "warmup_factor": {"feasible_points": [0.02, 0.05, 0.1]},
            },
            # lr/momentum of AlgoPerf's Nesterov target-setting runs are per workload; these
            # are the usual small-net defaults (lr 0.05, momentum 0.9, L2 5e-4).
            default_hparams={"learning_rate": 0.05, "one_minus_beta1": 0.1,
                             "weight_decay": 5e-4, "warmup_factor": 0.05},
            description="SGD with Nesterov momentum (Sutskever et al., 2013), coupled L2"),
        "lion": lambda: RegistrySubmission(
            "lion", "lion",
            search_space={
                "learning_rate": {"min": 2e-5, "max": 2e-3, "scaling": "log"},
                "beta1": {"feasible_points": [0.9, 0.95]},
                "beta2": {"feasible_points": [0.98, 0.99]},
                "weight_decay": {"min": 1e-2, "max": 3.0, "scaling": "log"},
                "warmup_factor": {"feasible_points": [0.02, 0.05, 0.1]},
            },
            # Chen et al. (2023) §5: lr 3-10x smaller and weight decay 3-10x larger than AdamW
            default_hparams={"learning_rate": 3e-4, "beta1": 0.9, "beta2": 0.99,
                             "weight_decay": 0.5, "warmup_factor": 0.1},
            description="Lion (Chen et al., 2023), warm-up + cosine"),
        "lamb": lambda: RegistrySubmission(
            "lamb", "lamb",
            search_space={
                "learning_rate": {"min": 1e-3, "max": 5e-2, "scaling": "log"},
                "one_minus_beta1": {"min": 0.02, "max": 0.2, "scaling": "log"},
                "beta2": {"feasible_points": [0.99, 0.999]},
                "weight_decay": {"min": 1e-3, "max": 0.1, "scaling": "log"},
                "warmup_factor": {"feasible_points": [0.02, 0.05, 0.1]},
            },
            default_hparams={"learning_rate": 5e-3, "one_minus_beta1": 0.1, "beta2": 0.999,
                             "weight_decay": 0.01, "warmup_factor": 0.1},
            description="LAMB (You et al., 2020), warm-up + cosine"),
    }


def _zo(name: str) -> Submission:
    from optforge.bench.zo_submissions import zo_submission  # imports this module

    return zo_submission(name)


def _lowrank(name: str) -> Submission:
    from optforge.bench.lowrank_submissions import lowrank_submission  # imports this module

    return lowrank_submission(name)


# The zeroth-order and low-rank submissions are lazy entries: their modules import this one, and
# a harness user who never asks for them does not import optforge.zo or optforge.lowrank.
_REGISTRY: dict[str, Callable[[], Submission]] = {
    **_baselines(),
    **{name: lambda n=name: _zo(n) for name in ("mezo", "zoadam")},
    **{name: lambda n=name: _lowrank(n) for name in ("galore_adamw", "fira_adamw", "frugal")},
}


def register_submission(name: str, factory: Callable[[], Submission], *,
                        overwrite: bool = False) -> None:
    """Make ``factory()`` available as ``get_submission(name)``.

    For process pools, register at import time of a module the workers import too.
    """
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a submission named {name!r} is already registered "
                         "(pass overwrite=True)")
    _REGISTRY[name] = factory


def list_submissions() -> list[str]:
    """Registered submission names, sorted."""
    return sorted(_REGISTRY)


def get_submission(name: str) -> Submission:
    """A fresh instance of the submission called ``name``.

    A path to an AlgoPerf submission file (``*.py``) or ``module:attribute`` loads that
    submission (:class:`optforge.bench.algoperf.submission.AlgoPerfSubmission`).

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or a submission file
            that cannot be loaded.
    """
    from optforge.bench.algoperf.loader import is_submission_ref

    if name not in _REGISTRY and is_submission_ref(name):
        from optforge.bench.algoperf.submission import AlgoPerfSubmission

        return AlgoPerfSubmission(name)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown submission {name!r}{hint}; known submissions: "
                         f"{', '.join(list_submissions())}")
    return _REGISTRY[name]()
