"""MeZO and ZO-Adam as harness submissions: they train a workload from loss values only."""

from __future__ import annotations

import pytest
import torch

from optforge.bench import get_submission, list_submissions
from optforge.bench.workloads.illcond import IllCondRegression


@pytest.mark.parametrize("name", ["mezo", "zoadam"])
def test_zeroth_order_submissions_train_without_gradients(name) -> None:
    assert name in list_submissions()
    sub = get_submission(name)
    workload = IllCondRegression(width=32)
    model = workload.init_model(seed=0)
    gen = torch.Generator().manual_seed(0)
    hparams = {**sub.default_hparams, "learning_rate": 1e-3 if name == "mezo" else 3e-3}
    state = sub.init_optimizer_state(workload, model, hparams, gen)
    batch = workload.train_batch(step=0, seed=0, batch_size=256)
    with torch.no_grad():
        first = float(workload.loss(model, batch))
    for step in range(60):
        state = sub.update_params(workload, model, hparams, batch, state, step, gen)
    with torch.no_grad():
        assert float(workload.loss(model, batch)) < first
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="grad_clip_norm must be unset"):
        sub.init_optimizer_state(workload, model, {**hparams, "grad_clip_norm": 1.0}, gen)
