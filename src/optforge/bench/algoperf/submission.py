"""An AlgoPerf submission file as an optforge submission, called exactly as AlgoPerf calls it.

The trial runner (:func:`optforge.bench.trial.run_trial`) drives every submission through
:class:`~optforge.bench.submission.Submission`; this class forwards each call to the file's
functions with AlgoPerf's PyTorch signatures (``submission_runner.train_once``):

- ``init_optimizer_state(workload, model_params, model_state, hyperparameters, rng)``;
- ``data_selection(workload, input_queue, optimizer_state, current_param_container,
  model_state, hyperparameters, global_step, rng)`` with an endless pre-shuffled queue of dict
  batches;
- ``update_params(workload, current_param_container, current_params_types, model_state,
  hyperparameters, batch, loss_type, optimizer_state, eval_results, global_step, rng[,
  train_state])`` returning ``(optimizer_state, model_params, model_state)``; ``train_state``
  (a read-only mapping) only where the signature has it; ``spec.TrainingCompleteError`` ends
  the run after one more evaluation;
- ``prepare_for_eval(...)`` (optional) before each evaluation, timed;
- ``get_batch_size(workload_name)`` with the AlgoPerf workload name, then the base name if it
  raises ``ValueError``.

``hyperparameters`` is a namedtuple (attribute access) of the sampled configuration under
external tuning and ``None`` under self-tuning, where a file uses its own defaults. ``rng``
values are numpy int32 pairs (AlgoPerf's PyTorch keys), derived from the trial seed, the step
and the purpose. The model the runner evaluates is the parameter container the file returned
last.

**Batch sizes.** A CPU workload runs at most ``max_batch_size`` examples per step (8x its
default, and no more than its training set); a larger request (e.g. 262,144 for
``criteo1tb``) is clamped to it, and :meth:`AlgoPerfSubmission.batch_size_notice` says so in
one line.
"""

from __future__ import annotations

import collections
import inspect
import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from optforge._seeding import derive_seed
from optforge.bench.algoperf.loader import LoadedSubmission, load_submission
from optforge.bench.algoperf.workload import (
    MAX_BATCH_FACTOR,
    AlgoPerfWorkload,
    algoperf_name,
    max_batch_size,
    seed_from_rng,
)
from optforge.bench.submission import Submission, TrainingComplete
from optforge.bench.workload import Workload

__all__ = ["SEARCH_SPACE_FILE", "AlgoPerfSubmission", "hyperparameters_tuple"]

#: The search space next to a submission file that external tuning uses by default.
SEARCH_SPACE_FILE = "tuning_search_space.json"
# Purposes folded into the per-step keys, as AlgoPerf splits each step's key four ways.
_KEY_DATA, _KEY_PREP = 0xDA7A, 0x9E9A


def hyperparameters_tuple(hparams: Mapping[str, Any] | None) -> Any:
    """AlgoPerf's ``Hyperparameters`` namedtuple of ``hparams``; None for none (self-tuning)."""
    if not hparams:
        return None
    return collections.namedtuple("Hyperparameters", list(hparams))(**hparams)


def _key(*parts: int) -> np.ndarray:
    """An AlgoPerf PyTorch key (two int32 seeds) derived from ``parts``."""
    x = derive_seed(*parts)
    return np.array([x % (2**31 - 1), (x >> 31) % (2**31 - 1)], dtype=np.int32)


class AlgoPerfSubmission(Submission):
    """The submission file (or ``module:attribute``) ``ref``, run unmodified.

    Attributes:
        search_space: the ``tuning_search_space.json`` next to the file, if any (external
            tuning uses it unless ``--search-space`` is given); otherwise empty.
        self_tuning: True when there is no such file.
    """

    def __init__(self, ref: str) -> None:
        self.name = ref
        self.loaded: LoadedSubmission = load_submission(ref)
        self.search_space: dict[str, Any] = {}
        self.default_hparams: dict[str, Any] = {}
        path = self.loaded.path
        if path is not None and (path.parent / SEARCH_SPACE_FILE).is_file():
            space_path = path.parent / SEARCH_SPACE_FILE
            try:
                self.search_space = json.loads(space_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"cannot read {space_path}: {e}") from None
        self.self_tuning = not self.search_space
        self._needs_train_state = (
            "train_state" in inspect.signature(self.loaded.functions["update_params"]).parameters
        )

    @property
    def search_space_path(self) -> Path | None:
        path = self.loaded.path
        return path.parent / SEARCH_SPACE_FILE if path and self.search_space else None

    # ------------------------------------------------------------------ batch sizes
    def asked_batch_size(self, workload_name: str) -> int:
        """What the file's ``get_batch_size`` returns for the workload's AlgoPerf name (the
        base name if the variant's raises ``ValueError``, as AlgoPerf's runner does)."""
        from optforge.bench.workloads import get_workload

        w = get_workload(workload_name)
        fn = self.loaded.functions["get_batch_size"]
        name = algoperf_name(w)
        try:
            size = fn(name)
        except ValueError:
            adapter = AlgoPerfWorkload(w)
            if name == adapter.base_name:
                raise
            size = fn(adapter.base_name)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"get_batch_size({name!r}) of {self.name!r} must return an "
                             f"integer >= 1 (got {size!r})")
        return int(size)

    def get_batch_size(self, workload_name: str) -> int:
        from optforge.bench.workloads import get_workload

        return min(self.asked_batch_size(workload_name),
                   max_batch_size(get_workload(workload_name)))

    def batch_size_notice(self, workload_name: str) -> str | None:
        """One line when the CPU workload cannot run the batch size the file asks for."""
        from optforge.bench.workloads import get_workload

        w = get_workload(workload_name)
        asked, cap = self.asked_batch_size(workload_name), max_batch_size(w)
        if asked <= cap:
            return None
        return (f"{self.name}: batch size {asked:,} for {algoperf_name(w)} is more than "
                f"{workload_name} runs; using {cap:,} (at most {MAX_BATCH_FACTOR}x its default "
                f"{w.default_batch_size:,} and its {w.num_train_examples:,} training examples)")

    # ------------------------------------------------------------------ the five functions
    def init_optimizer_state(self, workload: Workload, model: nn.Module,
                             hparams: Mapping[str, Any], rng: torch.Generator) -> dict[str, Any]:
        adapter = AlgoPerfWorkload(workload, self.loaded.spec)
        adapter.attach_model(model)
        hyper = hyperparameters_tuple(hparams)
        key = _key(seed_from_rng(rng))
        state = self.loaded.functions["init_optimizer_state"](adapter, model, None, hyper, key)
        return {
            "algoperf_state": state, "params": model, "model_state": None, "workload": adapter,
            "hyperparameters": hyper, "eval_results": [], "queue": None, "seed": None,
            "train_state": {
                "validation_goal_reached": False, "test_goal_reached": False,
                "is_time_remaining": True, "last_eval_time": 0.0, "training_complete": False,
                "accumulated_submission_time": 0.0, "accumulated_eval_time": 0.0,
                "accumulated_logging_time": 0.0, "last_step_end_time": 0.0,
            },
        }

    def data_selection(self, workload: Workload, hparams: Mapping[str, Any],
                       optimizer_state: dict[str, Any], global_step: int, seed: int) -> Any:
        s = optimizer_state
        if s["queue"] is None:
            s["seed"] = seed
            s["queue"] = s["workload"].input_queue(seed, self.get_batch_size(workload.name))
        return self.loaded.functions["data_selection"](
            s["workload"], s["queue"], s["algoperf_state"], s["params"], s["model_state"],
            s["hyperparameters"], global_step, _key(seed, global_step, _KEY_DATA))

    def update_params(self, workload: Workload, model: nn.Module, hparams: Mapping[str, Any],
                      batch: Any, optimizer_state: dict[str, Any], global_step: int,
                      rng: torch.Generator) -> dict[str, Any]:
        s = optimizer_state
        kwargs = dict(
            workload=s["workload"], current_param_container=s["params"],
            current_params_types=s["workload"].model_params_types, model_state=s["model_state"],
            hyperparameters=s["hyperparameters"], batch=batch, loss_type=s["workload"].loss_type,
            optimizer_state=s["algoperf_state"], eval_results=s["eval_results"],
            global_step=global_step, rng=_key(seed_from_rng(rng)),
        )
        if self._needs_train_state:
            kwargs["train_state"] = MappingProxyType(s["train_state"])
        try:
            out = self.loaded.functions["update_params"](**kwargs)
        except self.loaded.spec.TrainingCompleteError:
            s["train_state"]["training_complete"] = True
            raise TrainingComplete from None
        s["algoperf_state"], s["params"], s["model_state"] = out
        return s

    def prepare_for_eval(self, workload: Workload, model: nn.Module,
                         hparams: Mapping[str, Any], optimizer_state: dict[str, Any],
                         global_step: int) -> dict[str, Any]:
        s = optimizer_state
        fn = self.loaded.functions.get("prepare_for_eval")
        if fn is None:  # optional, as in AlgoPerf
            return s
        s["algoperf_state"], s["params"], s["model_state"] = fn(
            workload=s["workload"], current_param_container=s["params"],
            current_params_types=s["workload"].model_params_types, model_state=s["model_state"],
            hyperparameters=s["hyperparameters"], loss_type=s["workload"].loss_type,
            optimizer_state=s["algoperf_state"], eval_results=s["eval_results"],
            global_step=global_step, rng=_key(s["seed"] or 0, global_step, _KEY_PREP))
        return s

    # ------------------------------------------------------------------ runner hooks
    def model_for_eval(self, model: nn.Module, optimizer_state: Any) -> nn.Module:
        return optimizer_state["params"]

    def observe(self, optimizer_state: Any, *, step: int, train_time_s: float,
                evaluation: Mapping[str, float] | None = None) -> None:
        ts = optimizer_state["train_state"]
        ts["accumulated_submission_time"] = train_time_s
        ts["last_step_end_time"] = train_time_s
        if evaluation is None:
            return
        adapter: AlgoPerfWorkload = optimizer_state["workload"]
        metric = evaluation.get("metric")
        result = {f"validation/{adapter.target_metric_name}":
                  math.nan if metric is None else metric,
                  "train/loss": evaluation.get("train_loss"), "score": train_time_s,
                  "accumulated_submission_time": train_time_s}
        ts["validation_goal_reached"] = ts["validation_goal_reached"] or (
            metric is not None and adapter.cpu_workload.reached(metric))
        ts["last_eval_time"] = train_time_s
        optimizer_state["eval_results"].append((step, result))
