"""An AlgoPerf submission that uses ``data_selection`` and ``prepare_for_eval``: each batch is
used twice (data echoing) and evaluation sees an exponential moving average of the weights."""

import copy

import torch
from algoperf import spec

HPARAMS = {"learning_rate": 2e-3, "ema": 0.9}


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
    lr = hyperparameters.learning_rate if hyperparameters is not None else HPARAMS["learning_rate"]
    return {"optimizer": torch.optim.Adam(model_params.parameters(), lr=lr),
            "train_model": model_params, "ema_model": copy.deepcopy(model_params),
            "echo": None}


def data_selection(workload, input_queue, optimizer_state, current_param_container,
                   model_state, hyperparameters, global_step, rng):
    if global_step % 2 == 0:
        optimizer_state["echo"] = next(input_queue)
    return optimizer_state["echo"]  # every batch is used for two steps


def update_params(workload, current_param_container, current_params_types, model_state,
                  hyperparameters, batch, loss_type, optimizer_state, eval_results,
                  global_step, rng):
    model = optimizer_state["train_model"]  # the container may be the EMA copy after an eval
    model.train()
    optimizer_state["optimizer"].zero_grad()
    logits, model_state = workload.model_fn(model, batch, model_state,
                                            spec.ForwardPassMode.TRAIN, rng, True)
    out = workload.loss_fn(batch["targets"], logits, batch.get("weights"))
    (out["summed"] / out["n_valid_examples"]).backward()
    optimizer_state["optimizer"].step()
    with torch.no_grad():
        for e, p in zip(optimizer_state["ema_model"].parameters(), model.parameters()):
            e.lerp_(p, 1.0 - HPARAMS["ema"])
    return optimizer_state, model, model_state


def prepare_for_eval(workload, current_param_container, current_params_types, model_state,
                     hyperparameters, loss_type, optimizer_state, eval_results, global_step,
                     rng):
    return optimizer_state, optimizer_state["ema_model"], model_state  # evaluate the average


def get_batch_size(workload_name):
    return {"criteo1tb": 2048, "fastmri": 256, "wmt": 32}.get(workload_name, 128)
