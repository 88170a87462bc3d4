"""A self-tuning AlgoPerf submission: NAdam-style Adam with its own hyperparameters and a
learning-rate schedule over the runtime budget, read from ``train_state``."""

import math

import torch
from algoperf import spec

HPARAMS = {"learning_rate": 2e-3, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.02,
           "warmup_fraction": 0.02}


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
    assert hyperparameters is None  # self-tuning: no hyperparameters are handed over
    opt = torch.optim.AdamW(model_params.parameters(), lr=HPARAMS["learning_rate"],
                            betas=(HPARAMS["beta1"], HPARAMS["beta2"]),
                            weight_decay=HPARAMS["weight_decay"])
    return {"optimizer": opt, "budget": workload.max_allowed_runtime_sec * 1.5,
            "steps": workload.step_hint}


def _lr_factor(state, global_step, elapsed):
    # by steps or by time, whichever is further along (the run may be stopped by either)
    frac = max(global_step / state["steps"], elapsed / state["budget"])
    if frac < HPARAMS["warmup_fraction"]:
        return (global_step + 1) / max(1.0, HPARAMS["warmup_fraction"] * state["steps"])
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def update_params(workload, current_param_container, current_params_types, model_state,
                  hyperparameters, batch, loss_type, optimizer_state, eval_results,
                  global_step, rng, train_state=None):
    elapsed = train_state["accumulated_submission_time"] if train_state is not None else 0.0
    opt = optimizer_state["optimizer"]
    for group in opt.param_groups:
        group["lr"] = HPARAMS["learning_rate"] * _lr_factor(optimizer_state, global_step, elapsed)
    current_param_container.train()
    opt.zero_grad()
    logits, model_state = workload.model_fn(current_param_container, batch, model_state,
                                            spec.ForwardPassMode.TRAIN, rng, True)
    out = workload.loss_fn(batch["targets"], logits, batch.get("weights"), 0.0)
    (out["summed"] / out["n_valid_examples"]).backward()
    opt.step()
    return optimizer_state, current_param_container, model_state


def get_batch_size(workload_name):
    sizes = {"criteo1tb": 1024, "fastmri": 256, "imagenet_resnet": 128, "wmt": 32}
    if workload_name not in sizes:
        raise ValueError(f"Unsupported workload name: {workload_name}.")
    return sizes[workload_name]


def data_selection(workload, input_queue, optimizer_state, current_param_container,
                   model_state, hyperparameters, global_step, rng):
    return next(input_queue)
