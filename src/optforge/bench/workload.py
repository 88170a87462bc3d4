"""The fixed part of a benchmark task: data, model, loss and evaluation (AlgoPerf's workload).

A submission may only choose how to update the parameters; everything else is fixed here, as
in AlgoPerf (mlcommons/algorithmic-efficiency, ``algoperf/spec.py``): ``init_model`` plays
``init_model_fn``, ``loss`` plays ``model_fn`` + ``loss_fn`` (mean loss, no regularization),
``evaluate`` the validation metric, and ``step_budget`` the ``step_hint``.

Every workload is deterministic: its data is generated from fixed seeds (or read from files that
ship with an installed package) and hashed (``data_hash``), ``init_model(seed)`` and
``train_batch(step, seed, batch_size)`` are pure functions of their arguments, so two runs with
the same seed see the same model and the same batches, in any process.

Example:
    >>> from optforge.bench.workloads import get_workload
    >>> w = get_workload("digits_cnn")
    >>> model = w.init_model(seed=0)
    >>> loss = w.loss(model, w.train_batch(step=0, seed=0, batch_size=w.default_batch_size))
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optforge._seeding import derive_seed, generator_for

__all__ = ["RateDropout", "Workload", "epoch_indices", "reached", "seeded_init",
           "set_dropout_rates"]

# Tags folded into the (seed, step) keys so the streams of one trial never coincide.
_TAG_MODEL_INIT = 0x4D4F44454C  # "MODEL"
_TAG_DATA_ORDER = 0x44415441  # "DATA"
_TRAIN_EVAL_SEED = 0x5452455641  # "TREVA": the fixed train-eval subset, independent of the trial


class Workload(abc.ABC):
    """Abstract base of a benchmark workload; one instance per workload (variants included).

    Subclasses set the class attributes (or assign them in ``__init__``) and implement
    ``_build_data``, ``_make_model``, ``_loss`` and ``_metric``. The public methods add the
    guarantees every workload shares: seeded model construction that leaves the global RNG
    alone, deterministic batches, eval mode and ``no_grad`` during evaluation, a stable hash.

    Attributes:
        name: registry name, e.g. ``"digits_cnn"``; held-out variants add a suffix.
        description: one line for reports.
        metric_name: the validation metric, e.g. ``"accuracy"``, ``"logloss"``.
        higher_is_better: direction of ``metric_name``.
        target: committed validation target (see each workload's calibration comment).
        step_budget: maximum number of steps; also the schedule horizon (AlgoPerf ``step_hint``).
        time_budget_s: maximum submission (training) seconds, evaluation excluded.
        eval_every_steps: evaluation period in steps.
        default_batch_size: the batch size a submission gets unless it asks for another.
        eval_batch_size: fixed evaluation batch size (a submission cannot change it).
        held_out: True for a held-out variant; ``base`` then names its base workload.
    """

    name: str = ""
    description: str = ""
    metric_name: str = ""
    higher_is_better: bool = True
    target: float = float("nan")
    step_budget: int = 0
    time_budget_s: float = 0.0
    eval_every_steps: int = 0
    default_batch_size: int = 0
    eval_batch_size: int = 1024
    held_out: bool = False
    base: str | None = None
    #: number of ``eval_batch_size`` batches of training data in the train-eval loss
    train_eval_batches: int = 2

    def __init__(self) -> None:
        self._data: dict[str, torch.Tensor] | None = None
        self._hash: str | None = None

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _build_data(self) -> dict[str, torch.Tensor]:
        """All train and validation tensors, by name; deterministic (called once, cached)."""

    @abc.abstractmethod
    def _make_model(self) -> nn.Module:
        """A freshly initialized model, drawing from the global RNG (already seeded)."""

    @abc.abstractmethod
    def _batch(self, indices: torch.Tensor) -> Any:
        """The training batch made of the training examples at ``indices``."""

    @abc.abstractmethod
    def _loss(self, model: nn.Module, batch: Any, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean training loss of ``model`` on ``batch``."""

    @abc.abstractmethod
    def _metric(self, model: nn.Module) -> float:
        """Validation metric; called in eval mode under ``torch.no_grad``."""

    @property
    @abc.abstractmethod
    def num_train_examples(self) -> int:
        """Size of the training split."""

    # ------------------------------------------------------------------ public API
    @property
    def data(self) -> dict[str, torch.Tensor]:
        """The workload's tensors (built on first use, then cached on the instance)."""
        if self._data is None:
            self._data = self._build_data()
        return self._data

    def data_hash(self) -> str:
        """SHA-256 (hex) of every train and validation tensor: names, dtypes, shapes, bytes."""
        if self._hash is None:
            h = hashlib.sha256()
            for key in sorted(self.data):
                t = self.data[key].detach().cpu().contiguous()
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._hash = h.hexdigest()
        return self._hash

    def init_model(self, seed: int, *, dropout_rate: float | None = None,
                   aux_dropout_rate: float | None = None) -> nn.Module:
        """The initial model, a pure function of ``seed`` (the global RNG is left untouched).

        ``dropout_rate`` and ``aux_dropout_rate`` are AlgoPerf's workload-side
        hyperparameters (None or 0: no dropout, the calibrated model); see
        :func:`set_dropout_rates` for where each model applies them.
        """
        with seeded_init(seed, _TAG_MODEL_INIT):
            model = self._make_model()
        set_dropout_rates(model, dropout_rate, aux_dropout_rate)
        return model.train()

    def train_batch(self, step: int, seed: int, batch_size: int) -> Any:
        """The ``step``-th training batch of the run seeded ``seed``.

        Examples are drawn without replacement within each epoch, in an order that is a pure
        function of ``(seed, epoch)``; a batch that straddles two epochs takes the end of one
        and the start of the next. So the batch depends on ``(seed, step, batch_size)`` only.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        if step < 0:
            raise ValueError(f"step must be >= 0 (got {step})")
        idx = epoch_indices(self.num_train_examples, seed, step * batch_size, batch_size)
        return self._batch(idx)

    def loss(self, model: nn.Module, batch: Any, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean loss of ``model`` on ``batch``, without regularization (differentiable).

        ``label_smoothing`` is AlgoPerf's workload-side hyperparameter; regression losses
        ignore it, as AlgoPerf's fastMRI ``loss_fn`` does.
        """
        if not label_smoothing:  # workloads written before label smoothing take two arguments
            return self._loss(model, batch)
        return self._loss(model, batch, label_smoothing)

    def evaluate(self, model: nn.Module) -> float:
        """Validation metric, computed in eval mode without gradients; restores the mode."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return float(self._metric(model))
        finally:
            model.train(was_training)

    def train_eval_loss(self, model: nn.Module) -> float:
        """Mean loss on a fixed subset of the training data (AlgoPerf's train-eval split)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                losses = [
                    float(self._loss(model, self.train_batch(i, _TRAIN_EVAL_SEED,
                                                             self.eval_batch_size)))
                    for i in range(self.train_eval_batches)
                ]
        finally:
            model.train(was_training)
        return sum(losses) / len(losses)

    def reached(self, metric: float) -> bool:
        """Whether ``metric`` meets this workload's target."""
        return reached(self, metric)

    def describe(self) -> dict[str, Any]:
        """The workload's fixed settings as a JSON-able dict (for reports)."""
        return {
            "name": self.name, "description": self.description,
            "metric_name": self.metric_name, "higher_is_better": self.higher_is_better,
            "target": self.target, "step_budget": self.step_budget,
            "time_budget_s": self.time_budget_s, "eval_every_steps": self.eval_every_steps,
            "default_batch_size": self.default_batch_size,
            "eval_batch_size": self.eval_batch_size,
            "held_out": self.held_out, "base": self.base,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def reached(workload: Workload, metric: float) -> bool:
    """Whether ``metric`` meets ``workload.target``, respecting ``higher_is_better``.

    A non-finite metric (NaN from a diverged model) never meets a target.
    """
    if metric != metric or metric in (float("inf"), float("-inf")):
        return False
    return metric >= workload.target if workload.higher_is_better else metric <= workload.target


class RateDropout(nn.Module):
    """Dropout whose rate is set after construction (no parameters, so adding one to a model
    leaves its ``state_dict`` and its seeded initialization unchanged); rate 0 is a no-op that
    draws no random numbers.

    ``aux`` marks AlgoPerf's auxiliary dropout (attention dropout in the Transformer).
    """

    def __init__(self, aux: bool = False) -> None:
        super().__init__()
        self.p, self.aux = 0.0, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        return F.dropout(x, self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}, aux={self.aux}"


def set_dropout_rates(model: nn.Module, dropout_rate: float | None,
                      aux_dropout_rate: float | None = None) -> None:
    """Set every :class:`RateDropout` of ``model``: ``aux`` ones to ``aux_dropout_rate``, the
    others to ``dropout_rate`` (None: 0, AlgoPerf's default where a workload has no default).

    Raises:
        ValueError: a rate outside ``[0, 1)``.
    """
    for name, rate in (("dropout_rate", dropout_rate), ("aux_dropout_rate", aux_dropout_rate)):
        if rate is not None and not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"{name} must be in [0, 1) (got {rate!r})")
    for m in model.modules():
        if isinstance(m, RateDropout):
            rate = aux_dropout_rate if m.aux else dropout_rate
            m.p = float(rate or 0.0)


@contextlib.contextmanager
def seeded_init(*keys: int) -> Iterator[None]:
    """Seed the global CPU RNG from ``keys`` for the block, then restore its previous state.

    ``nn.Module`` constructors draw from the global RNG; forking it keeps model construction a
    pure function of the seed without disturbing the caller's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*keys))
        yield


@functools.lru_cache(maxsize=64)
def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator_for("cpu", seed, epoch, _TAG_DATA_ORDER))


def epoch_indices(n: int, seed: int, start: int, count: int) -> torch.Tensor:
    """Positions ``start .. start+count-1`` of the endless epoch-by-epoch shuffled order.

    Position ``p`` is example ``perm(seed, p // n)[p % n]``; each epoch's permutation is drawn
    from a generator keyed by ``(seed, epoch)``, so any slice is computable in isolation.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    parts: list[torch.Tensor] = []
    pos, end = start, start + count
    while pos < end:
        epoch, offset = divmod(pos, n)
        take = min(n - offset, end - pos)
        parts.append(_permutation(n, seed, epoch)[offset:offset + take])
        pos += take
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of length ``size`` (the last may be shorter) covering ``range(n)``."""
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def split_indices(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random train/validation split of ``range(n)``: ``(train_idx, val_idx)``."""
    perm = torch.randperm(n, generator=generator_for("cpu", seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (``relu``, ``gelu``, ``silu``, ``tanh``)."""
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
    }
    if name not in table:
        raise ValueError(f"activation must be one of {sorted(table)} (got {name!r})")
    return table[name]()


class _MLP(nn.Sequential):
    """``nn.Sequential`` of linear layers and activations, with a :class:`RateDropout` after
    each activation (one parameter-free child, ``drop``, so parameter names stay ``0.weight``,
    ``2.weight``, ...)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.drop = RateDropout()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._modules.values():
            if layer is self.drop:
                continue
            x = layer(x)
            if not isinstance(layer, nn.Linear):
                x = self.drop(x)
        return x


def mlp(sizes: Sequence[int], act: str) -> nn.Sequential:
    """Linear layers of the given widths with ``act`` between them (none after the last), and
    a :class:`RateDropout` after each activation."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation(act))
    return _MLP(*layers)
