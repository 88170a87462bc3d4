"""A CPU workload presented as the AlgoPerf workload it stands in for (``spec.Workload``).

A submission file sees an :class:`AlgoPerfWorkload`: AlgoPerf's name (so ``get_batch_size``
switches work), dict batches (``inputs``, ``targets``, ``weights``), ``model_fn`` /
``loss_fn`` with AlgoPerf's PyTorch semantics (the parameter container is the ``nn.Module``;
``loss_fn`` returns the summed loss, the number of valid examples and per-example losses) and
the ``spec.Workload`` properties.

=======================================  ======================  ==========================
CPU workload                             AlgoPerf workload       loss type
=======================================  ======================  ==========================
``digits_cnn`` (+ ``_tanh``)             ``imagenet_resnet``     softmax cross-entropy
``stdlib_lm`` (+ ``_post_ln``)           ``wmt``                 softmax cross-entropy
``click_ctr`` (+ ``_embed_init``)        ``criteo1tb``           sigmoid cross-entropy
``illcond_regression`` (+ ``_kappa1e4``) ``fastmri``             mean squared error
=======================================  ======================  ==========================

A held-out variant keeps its suffix (``click_ctr_embed_init`` -> ``criteo1tb_embed_init``); a
submission whose ``get_batch_size`` raises ``ValueError`` for it is asked for the base name,
as AlgoPerf's runner does. ``illcond_regression`` is the regression stand-in: its loss is MSE
(fastMRI's is L1), and its ``loss_type`` says so.

Example::

    >>> from optforge.bench.workloads import get_workload
    >>> w = AlgoPerfWorkload(get_workload("click_ctr"))
    >>> w.name, w.loss_type.name, w.step_hint
    ('criteo1tb', 'SIGMOID_CROSS_ENTROPY', 3000)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optforge.bench.algoperf.compat.algoperf import spec as compat_spec
from optforge.bench.workload import RateDropout, Workload, set_dropout_rates
from optforge.bench.workloads import ClickCTR, DigitsCNN, IllCondRegression, StdlibCharLM

__all__ = ["MAX_BATCH_FACTOR", "AlgoPerfWorkload", "algoperf_name", "eval_period_time_sec",
           "max_batch_size", "seed_from_rng"]


@dataclass(frozen=True)
class _Facts:
    """What a CPU workload family stands in for, and how its batches look to a submission."""

    algoperf: str  # AlgoPerf base workload name
    loss_type: str  # spec.LossType member
    metric: str  # target_metric_name (AlgoPerf's where the meaning is the same)
    # Evaluation period of the AlgoPerf protocol (training seconds): about the steps cadence
    # (eval_every_steps) at the calibration runs' speed on one thread.
    eval_period_time_sec: float


_FACTS: dict[type, _Facts] = {
    DigitsCNN: _Facts("imagenet_resnet", "SOFTMAX_CROSS_ENTROPY", "accuracy", 1.0),
    StdlibCharLM: _Facts("wmt", "SOFTMAX_CROSS_ENTROPY", "ce_loss", 3.0),
    ClickCTR: _Facts("criteo1tb", "SIGMOID_CROSS_ENTROPY", "loss", 0.5),
    IllCondRegression: _Facts("fastmri", "MEAN_SQUARED_ERROR", "mse", 1.0),
}
#: Largest training batch a CPU workload runs, as a multiple of its default batch size.
MAX_BATCH_FACTOR = 8


def _facts(workload: Workload) -> _Facts:
    for cls, facts in _FACTS.items():
        if isinstance(workload, cls):
            return facts
    raise ValueError(f"workload '{workload.name}' has no AlgoPerf counterpart (AlgoPerf "
                     f"submission files run on {', '.join(sorted(_base_names()))} only)")


def _base_names() -> list[str]:
    from optforge.bench.workloads import get_workload, list_workloads

    return [n for n in list_workloads(include_held_out=False)
            if type(get_workload(n)) in _FACTS]


def algoperf_name(workload: Workload) -> str:
    """The AlgoPerf workload name ``workload`` presents (a variant keeps its suffix)."""
    base = _facts(workload).algoperf
    if workload.held_out and workload.base and workload.name.startswith(workload.base):
        return base + workload.name[len(workload.base):]
    return base


def eval_period_time_sec(workload_name: str) -> float:
    """The AlgoPerf protocol's evaluation period (training seconds) of a CPU workload."""
    from optforge.bench.workloads import get_workload

    return _facts(get_workload(workload_name)).eval_period_time_sec


def max_batch_size(workload: Workload) -> int:
    """The largest training batch the CPU workload runs: ``MAX_BATCH_FACTOR`` x its default,
    at most the training-set size (larger requests are clamped to it, with a notice)."""
    return min(MAX_BATCH_FACTOR * workload.default_batch_size, workload.num_train_examples)


def seed_from_rng(rng: Any) -> int:
    """An integer seed from an AlgoPerf PyTorch key (numpy ints), an int, or a Generator."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(0, 2**31 - 1, (), generator=rng))
    arr = np.asarray(rng, dtype=np.int64).ravel()
    return int(np.uint64(arr.sum()) % np.uint64(2**31 - 1)) if arr.size else 0


def _param_type(spec: ModuleType, module: nn.Module, pname: str, full: str) -> Any:
    t = spec.ParameterType
    if isinstance(module, nn.LayerNorm):
        return t.LAYER_NORM_SCALE if pname == "weight" else t.LAYER_NORM_BIAS
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return t.BATCH_NORM_SCALE if pname == "weight" else t.BATCH_NORM_BIAS
    if isinstance(module, nn.Embedding) or full.endswith(("pos", "tok.weight")):
        return t.EMBEDDING
    if "qkv" in full:
        return t.ATTENTION_QKV if pname == "weight" else t.ATTENTION_BIAS
    if pname == "bias":
        return t.BIAS
    return t.CONV_WEIGHT if isinstance(module, nn.Conv2d) else t.WEIGHT


class AlgoPerfWorkload(compat_spec.Workload):
    """``spec.Workload`` view of a CPU workload (PyTorch semantics, one CPU process).

    Args:
        workload: the CPU workload.
        spec: the ``algoperf.spec`` module the submission imported (optforge's stand-in by
            default; the real one where ``algoperf`` is installed), whose enums this adapter
            returns.
    """

    def __init__(self, workload: Workload, spec: ModuleType = compat_spec) -> None:
        super().__init__()
        self.cpu_workload, self.spec = workload, spec
        self._facts = _facts(workload)
        self.name = algoperf_name(workload)
        self.base_name = self._facts.algoperf

    # ---------------------------------------------------------------- properties
    @property
    def target_metric_name(self) -> str:
        return self._facts.metric

    @property
    def validation_target_value(self) -> float:
        return self.cpu_workload.target

    @property
    def test_target_value(self) -> float | None:
        return None  # the CPU workloads have no test split

    @property
    def loss_type(self) -> Any:
        return self.spec.LossType[self._facts.loss_type]

    @property
    def num_train_examples(self) -> int:
        return self.cpu_workload.num_train_examples

    @property
    def num_eval_train_examples(self) -> int:
        return self.cpu_workload.train_eval_batches * self.cpu_workload.eval_batch_size

    @property
    def num_validation_examples(self) -> int | None:
        return None  # each workload evaluates its whole validation split

    @property
    def num_test_examples(self) -> int | None:
        return None

    @property
    def eval_batch_size(self) -> int:
        return self.cpu_workload.eval_batch_size

    @property
    def train_mean(self) -> Any:
        return None

    @property
    def train_stddev(self) -> Any:
        return None

    @property
    def max_allowed_runtime_sec(self) -> float:
        return self.cpu_workload.time_budget_s

    @property
    def eval_period_time_sec(self) -> float:
        return self._facts.eval_period_time_sec

    @property
    def step_hint(self) -> int:
        return self.cpu_workload.step_budget

    def has_reached_validation_target(self, eval_result: dict[str, float]) -> bool:
        return self.cpu_workload.reached(eval_result[f"validation/{self.target_metric_name}"])

    def has_reached_test_target(self, eval_result: dict[str, float]) -> bool:
        del eval_result
        return False

    def is_output_params(self, param_key: str) -> bool:
        return param_key in self._output_keys

    # ---------------------------------------------------------------- model
    def attach_model(self, model: nn.Module) -> None:
        """Record ``param_shapes`` and ``model_params_types`` of ``model`` (what AlgoPerf's
        ``init_model_fn`` does); the runner calls it for the model it built."""
        shapes, types, last_linear = {}, {}, None
        for mname, module in model.named_modules():
            if isinstance(module, nn.Linear):
                last_linear = mname
            for pname, p in module.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                shapes[full] = self.spec.ShapeTuple(tuple(p.shape))
                types[full] = _param_type(self.spec, module, pname, full)
        self._param_shapes, self._param_types = shapes, types
        self._output_keys = {k for k in shapes if last_linear and k.startswith(f"{last_linear}.")}

    def init_model_fn(self, rng: Any, dropout_rate: float | None = None,
                      aux_dropout_rate: float | None = None) -> tuple[nn.Module, None]:
        model = self.cpu_workload.init_model(seed_from_rng(rng), dropout_rate=dropout_rate,
                                             aux_dropout_rate=aux_dropout_rate)
        self.attach_model(model)
        return model, None  # PyTorch workloads keep no separate model state

    def model_fn(self, params: nn.Module, augmented_and_preprocessed_input_batch: dict[str, Any],
                 model_state: Any, mode: Any, rng: Any, update_batch_norm: bool,
                 dropout_rate: float | None = None) -> tuple[torch.Tensor, Any]:
        del rng, update_batch_norm  # no batch norm in the CPU models
        train = getattr(mode, "name", mode) == "TRAIN"
        params.train(train)
        inputs = augmented_and_preprocessed_input_batch["inputs"]
        with contextlib.ExitStack() as stack:
            if not train:
                stack.enter_context(torch.no_grad())
            if dropout_rate is not None:
                stack.enter_context(_dropout(params, dropout_rate))
            return self._forward(params, inputs), model_state

    def _forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        if isinstance(self.cpu_workload, ClickCTR):
            from optforge.bench.workloads.click_ctr import N_DENSE

            return model(inputs[:, N_DENSE:].long(), inputs[:, :N_DENSE])
        return model(inputs)

    def loss_fn(self, label_batch: torch.Tensor, logits_batch: torch.Tensor,
                mask_batch: torch.Tensor | None = None,
                label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
        kind = self._facts.loss_type
        if kind == "SOFTMAX_CROSS_ENTROPY":
            per = F.cross_entropy(logits_batch.reshape(-1, logits_batch.shape[-1]),
                                  label_batch.reshape(-1), reduction="none",
                                  label_smoothing=label_smoothing).reshape(label_batch.shape)
        elif kind == "SIGMOID_CROSS_ENTROPY":
            smoothed = label_batch * (1.0 - label_smoothing) + 0.5 * label_smoothing
            per = F.binary_cross_entropy_with_logits(logits_batch, smoothed, reduction="none")
        else:  # mean squared error per example (mean over outputs); no label smoothing
            per = (logits_batch - label_batch).pow(2).mean(-1)
        if mask_batch is not None:
            per = per * mask_batch
            n_valid = mask_batch.sum()
        else:
            n_valid = torch.tensor(float(per.numel()))
        return {"summed": per.sum(), "n_valid_examples": n_valid, "per_example": per}

    def output_activation_fn(self, logits_batch: torch.Tensor, framework: str) -> torch.Tensor:
        if framework != "pytorch":
            raise ValueError(f"framework must be 'pytorch' here (got {framework!r})")
        kind = self._facts.loss_type
        if kind == "SOFTMAX_CROSS_ENTROPY":
            return F.softmax(logits_batch, dim=-1)
        if kind == "SIGMOID_CROSS_ENTROPY":
            return torch.sigmoid(logits_batch)
        return logits_batch

    # ---------------------------------------------------------------- data
    def batch(self, raw: Any) -> dict[str, torch.Tensor]:
        """A CPU workload's training batch as AlgoPerf's dict batch."""
        w = self.cpu_workload
        if isinstance(w, ClickCTR):
            cat, dense, y = raw  # Criteo-style inputs: dense features, then categorical ids
            return {"inputs": torch.cat([dense, cat.float()], 1), "targets": y}
        if isinstance(w, StdlibCharLM):
            return {"inputs": raw[:, :-1], "targets": raw[:, 1:],
                    "weights": torch.ones(raw[:, 1:].shape)}
        x, y = raw
        return {"inputs": x, "targets": y}

    def input_queue(self, seed: int, global_batch_size: int,
                    start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The endless, pre-shuffled training batches of the run seeded ``seed``."""
        step = start_step
        while True:
            yield self.batch(self.cpu_workload.train_batch(step, seed, global_batch_size))
            step += 1

    def _build_input_queue(self, data_rng: Any, split: str, data_dir: str | None,
                           global_batch_size: int, cache: bool | None = None,
                           repeat_final_dataset: bool | None = None,
                           num_batches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        del data_dir, cache, repeat_final_dataset, num_batches
        if split != "train":
            raise ValueError(f"only the 'train' split is served as batches (got {split!r})")
        return self.input_queue(seed_from_rng(data_rng), global_batch_size)

    def eval_model(self, global_batch_size: int, params: nn.Module, model_state: Any, rng: Any,
                   data_dir: str | None = None, imagenet_v2_data_dir: str | None = None,
                   global_step: int = 0) -> dict[str, float]:
        """AlgoPerf's evaluation result: ``train/loss`` and ``validation/<metric>``."""
        del global_batch_size, model_state, rng, data_dir, imagenet_v2_data_dir, global_step
        return {"train/loss": self.cpu_workload.train_eval_loss(params),
                f"validation/{self.target_metric_name}": self.cpu_workload.evaluate(params)}


@contextlib.contextmanager
def _dropout(model: nn.Module, rate: float) -> Iterator[None]:
    """Run the block with the model's (non-auxiliary) dropout at ``rate``, then restore it."""
    layers = [m for m in model.modules() if isinstance(m, RateDropout) and not m.aux]
    saved = [m.p for m in layers]
    aux = next((m.p for m in model.modules() if isinstance(m, RateDropout) and m.aux), None)
    set_dropout_rates(model, rate, aux)
    try:
        yield
    finally:
        for m, p in zip(layers, saved, strict=True):
            m.p = p
