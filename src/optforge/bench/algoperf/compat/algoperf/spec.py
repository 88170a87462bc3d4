"""``algoperf.spec`` for submission files: the enums, type names, ``Workload`` base class and
``TrainingCompleteError`` of AlgoPerf's API (mlcommons/algorithmic-efficiency v0.6), PyTorch
flavour. Enum members and values are AlgoPerf's, so ``spec.LossType.SOFTMAX_CROSS_ENTROPY``
and friends mean the same thing in a submission file here as there."""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "ForwardPassMode", "Hyperparameters", "LossType", "ModelAuxiliaryState", "OptimizerState",
    "ParameterContainer", "ParameterKey", "ParameterShapeTree", "ParameterType",
    "ParameterTypeTree", "RandomState", "Shape", "ShapeTuple", "Tensor", "TrainingCompleteError",
    "UpdateReturn", "Workload",
]


class LossType(enum.Enum):
    SOFTMAX_CROSS_ENTROPY = 0
    SIGMOID_CROSS_ENTROPY = 1
    MEAN_SQUARED_ERROR = 2
    CTC_LOSS = 3
    MEAN_ABSOLUTE_ERROR = 4


class ForwardPassMode(enum.Enum):
    TRAIN = 0
    EVAL = 1


class ParameterType(enum.Enum):
    WEIGHT = 0
    BIAS = 1
    CONV_WEIGHT = 2
    BATCH_NORM_SCALE = 3
    BATCH_NORM_BIAS = 4
    LAYER_NORM_SCALE = 5
    LAYER_NORM_BIAS = 6
    EMBEDDING = 7
    ATTENTION_Q = 8
    ATTENTION_K = 9
    ATTENTION_V = 10
    ATTENTION_OUT = 11
    ATTENTION_QKV = 12
    ATTENTION_KV = 13
    ATTENTION_BIAS = 14


class ShapeTuple:
    """A parameter's shape, wrapped so tree utilities treat it as a leaf."""

    def __init__(self, shape_tuple: tuple[int, ...]) -> None:
        self.shape_tuple = tuple(shape_tuple)

    def __repr__(self) -> str:
        return f"ShapeTuple({self.shape_tuple})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShapeTuple) and self.shape_tuple == other.shape_tuple

    def __hash__(self) -> int:
        return hash(self.shape_tuple)


Tensor = Any
Shape = Any
ParameterKey = str
ParameterContainer = Any  # in PyTorch: the nn.Module itself
ParameterShapeTree = dict[str, Any]
ParameterTypeTree = dict[str, Any]
RandomState = Any  # PyTorch runs: a numpy int32 array of 2 seeds
OptimizerState = Any
Hyperparameters = Any  # a namedtuple, or None under self-tuning
ModelAuxiliaryState = Any
ModelInitState = tuple[Any, Any]
UpdateReturn = tuple[Any, Any, Any]
Timing = int
Steps = int
InitOptimizerFn = Callable[..., Any]
UpdateParamsFn = Callable[..., UpdateReturn]
PrepareForEvalFn = Callable[..., UpdateReturn]
DataSelectionFn = Callable[..., Any]


class TrainingCompleteError(Exception):
    """Raised by ``update_params`` to end the run; a final evaluation follows."""


class Workload(metaclass=abc.ABCMeta):
    """What a submission sees of a workload (``algoperf.spec.Workload``).

    optforge's adapter (:class:`optforge.bench.algoperf.workload.AlgoPerfWorkload`) implements
    it for the CPU workloads; ``param_shapes`` and ``model_params_types`` are set once the
    model exists, as in AlgoPerf.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs
        self._param_shapes: ParameterShapeTree | None = None
        self._param_types: ParameterTypeTree | None = None
        self._eval_iters: dict[str, Iterator] = {}
        self.metrics_logger = None

    def attach_metrics_logger(self, metrics_logger: Any) -> None:
        self.metrics_logger = metrics_logger

    @property
    def param_shapes(self) -> ParameterShapeTree:
        if self._param_shapes is None:
            raise ValueError("init_model_fn() must run before param_shapes is read")
        return self._param_shapes

    @property
    def model_params_types(self) -> ParameterTypeTree:
        if self._param_types is None:
            raise ValueError("init_model_fn() must run before model_params_types is read")
        return self._param_types

    @abc.abstractmethod
    def init_model_fn(self, rng: RandomState, dropout_rate: float | None = None,
                      aux_dropout_rate: float | None = None) -> ModelInitState:
        """``(initial model, initial model state)``."""

    @abc.abstractmethod
    def model_fn(self, params: ParameterContainer,
                 augmented_and_preprocessed_input_batch: dict[str, Tensor],
                 model_state: ModelAuxiliaryState, mode: ForwardPassMode, rng: RandomState,
                 update_batch_norm: bool, dropout_rate: float | None = None,
                 ) -> tuple[Tensor, ModelAuxiliaryState]:
        """``(logits, new model state)``."""

    @abc.abstractmethod
    def loss_fn(self, label_batch: Tensor, logits_batch: Tensor,
                mask_batch: Tensor | None = None,
                label_smoothing: float = 0.0) -> dict[str, Tensor]:
        """``{"summed", "n_valid_examples", "per_example"}``, without regularization."""
