"""The low-rank harness submissions build GaLore's split and train a real workload."""

from __future__ import annotations

import pytest
import torch

from optforge.bench.submission import get_submission
from optforge.bench.workloads.stdlib_lm import StdlibCharLM
from optforge.lowrank import ProjectedOptimizer


@pytest.mark.parametrize("name", ["galore_adamw", "fira_adamw", "frugal"])
def test_submission_projects_the_blocks_and_steps(name) -> None:
    sub = get_submission(name)
    assert set(sub.default_hparams) <= set(sub.search_space) | {"learning_rate"}
    workload = StdlibCharLM()
    model = workload.init_model(0)
    state = sub.init_optimizer_state(workload, model, sub.default_hparams, torch.Generator())
    opt = state["optimizer"]
    assert isinstance(opt, ProjectedOptimizer)
    projected, rest = opt.param_groups
    assert any(p is model.blocks[0].qkv.weight for p in projected["params"])
    assert any(p is model.head.weight for p in rest["params"]) and rest["rank"] is None
    before = model.blocks[0].fc1.weight.detach().clone()
    batch = workload.train_batch(0, 0, 8)
    state = sub.update_params(workload, model, sub.default_hparams, batch, state, 0,
                              torch.Generator())  # fmt: skip
    assert torch.isfinite(state["loss"]) and not torch.equal(before, model.blocks[0].fc1.weight)
    st = opt.state[model.blocks[0].fc1.weight]
    assert st["inner.exp_avg"].numel() < model.blocks[0].fc1.weight.numel()
