"""optforge's AdamW (adam_direction + apply_update) against torch.optim.AdamW."""

from __future__ import annotations

import pytest
import torch

from optforge.optim import AdamW


@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize("hyper", [{}, {"weight_decay": 0.1, "betas": (0.8, 0.99), "eps": 1e-6}])
def test_matches_torch_adamw(backend: str, hyper: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (1,), (1025,)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_a = AdamW(ours, lr=1e-2, backend=backend, **hyper)
    opt_b = torch.optim.AdamW(theirs, lr=1e-2, foreach=False, **hyper)
    for _ in range(20):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(opt_a.state[a]["exp_avg_sq"], opt_b.state[b]["exp_avg_sq"])


def test_bf16_parameters_keep_fp32_moments() -> None:
    p = torch.nn.Parameter(torch.randn(5).to(torch.bfloat16))
    opt = AdamW([p])
    p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32
