"""AdamW with linear warm-up and cosine decay, an AlgoPerf external-tuning submission."""

import math
from collections.abc import Iterator
from typing import Any

import torch
from absl import logging
from algoperf import spec
from algoperf.pytorch_utils import pytorch_setup

USE_PYTORCH_DDP, RANK, DEVICE, N_GPUS = pytorch_setup()


def init_optimizer_state(workload: spec.Workload, model_params: spec.ParameterContainer,
                         model_state: spec.ModelAuxiliaryState,
                         hyperparameters: spec.Hyperparameters,
                         rng: spec.RandomState) -> spec.OptimizerState:
    del model_state, rng
    types = workload.model_params_types
    decay = [p for n, p in model_params.named_parameters()
             if types[n] in (spec.ParameterType.WEIGHT, spec.ParameterType.CONV_WEIGHT,
                             spec.ParameterType.ATTENTION_QKV)]
    rest = [p for n, p in model_params.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hyperparameters.weight_decay},
         {"params": rest, "weight_decay": 0.0}],
        lr=hyperparameters.learning_rate,
        betas=(1.0 - hyperparameters.one_minus_beta1, hyperparameters.beta2), eps=1e-8)
    warmup = max(1, int(hyperparameters.warmup_factor * workload.step_hint))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, workload.step_hint - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return {"optimizer": opt, "scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor)}


def update_params(workload: spec.Workload, current_param_container: spec.ParameterContainer,
                  current_params_types: spec.ParameterTypeTree,
                  model_state: spec.ModelAuxiliaryState,
                  hyperparameters: spec.Hyperparameters, batch: dict[str, spec.Tensor],
                  loss_type: spec.LossType, optimizer_state: spec.OptimizerState,
                  eval_results: list[tuple[int, float]], global_step: int,
                  rng: spec.RandomState,
                  train_state: dict[str, Any] | None = None) -> spec.UpdateReturn:
    del current_params_types, eval_results, train_state
    assert loss_type in (spec.LossType.SOFTMAX_CROSS_ENTROPY,
                         spec.LossType.SIGMOID_CROSS_ENTROPY,
                         spec.LossType.MEAN_SQUARED_ERROR)
    model = current_param_container
    model.train()
    optimizer_state["optimizer"].zero_grad()
    logits, new_model_state = workload.model_fn(
        params=model, augmented_and_preprocessed_input_batch=batch, model_state=model_state,
        mode=spec.ForwardPassMode.TRAIN, rng=rng, update_batch_norm=True,
        dropout_rate=getattr(hyperparameters, "dropout_rate", None))
    label_smoothing = (hyperparameters.label_smoothing
                       if hasattr(hyperparameters, "label_smoothing") else 0.0)
    loss_dict = workload.loss_fn(label_batch=batch["targets"], logits_batch=logits,
                                 mask_batch=batch.get("weights"),
                                 label_smoothing=label_smoothing)
    loss = loss_dict["summed"] / loss_dict["n_valid_examples"]
    loss.backward()
    optimizer_state["optimizer"].step()
    optimizer_state["scheduler"].step()
    if global_step % 500 == 0:
        logging.info("%d) loss = %0.3f", global_step, loss.item())
    return optimizer_state, model, new_model_state


def prepare_for_eval(workload, current_param_container, current_params_types, model_state,
                     hyperparameters, loss_type, optimizer_state, eval_results, global_step,
                     rng) -> spec.UpdateReturn:
    return optimizer_state, current_param_container, model_state


def get_batch_size(workload_name: str) -> int:
    if workload_name == "criteo1tb":
        return 262_144
    if workload_name == "fastmri":
        return 256
    if workload_name in ("imagenet_resnet", "imagenet_vit"):
        return 128
    if workload_name == "wmt":
        return 32
    raise ValueError(f"Unsupported workload name: {workload_name}.")


def data_selection(workload: spec.Workload, input_queue: Iterator[dict[str, spec.Tensor]],
                   optimizer_state: spec.OptimizerState,
                   current_param_container: spec.ParameterContainer,
                   model_state: spec.ModelAuxiliaryState,
                   hyperparameters: spec.Hyperparameters, global_step: int,
                   rng: spec.RandomState) -> dict[str, spec.Tensor]:
    return next(input_queue)
