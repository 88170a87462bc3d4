"""optforge's AdamW (adam_direction + apply_update) against torch.optim.AdamW."""

from __future__ import annotations

import pytest
import torch

from optforge.optim import AdamW
from optforge.testing.conformance import round_trip


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


def _adamw_bf16(stochastic: bool, steps: int = 20, **kw) -> torch.Tensor:
    p = torch.nn.Parameter(torch.ones(50_000, dtype=torch.bfloat16))
    opt = AdamW([p], lr=1e-4, weight_decay=0.0, stochastic_rounding=stochastic, seed=3, **kw)
    for _ in range(steps):
        p.grad = torch.ones_like(p)
        opt.step()
    return p.detach().float()


def test_adamw_small_bf16_steps_survive_only_with_stochastic_rounding() -> None:
    # Adam's first steps move θ by ~lr = 1e-4, under half a bf16 ulp at 1.0 (2**-8)
    assert torch.equal(_adamw_bf16(False), torch.ones(50_000))
    assert _adamw_bf16(True).mean().item() == pytest.approx(1 - 20e-4, abs=3e-5)
    assert torch.equal(_adamw_bf16(True, 5, backend="foreach"), _adamw_bf16(True, 5))


def test_adamw_rounding_flags_are_checked() -> None:
    """(Exact resume with stochastic rounding: tests/optim/test_rules.py, for AdamW and Lion.)"""
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(TypeError, match="stochastic_rounding must be True or False"):
        AdamW(p, stochastic_rounding=1)
    with pytest.raises(ValueError, match="seed"):
        AdamW(p, seed=-1)


def test_master_weights_follow_the_fp32_trajectory_and_resume_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3000, generator=gen)
    grads = [torch.randn(3000, generator=gen).bfloat16() for _ in range(6)]
    bf = [torch.nn.Parameter(w.bfloat16()), torch.nn.Parameter(torch.randn(5, generator=gen))]
    fp = torch.nn.Parameter(w.bfloat16().float())
    opt = AdamW(bf, lr=1e-3, master_weights=True)
    ref = AdamW([fp], lr=1e-3)
    for g in grads[:3]:
        bf[0].grad, bf[1].grad, fp.grad = g, torch.ones(5), g.float()
        opt.step()
        ref.step()
    assert "master" not in opt.state[bf[1]]  # fp32 parameters keep none
    saved = round_trip({"opt": opt.state_dict(), "params": [p.detach() for p in bf]})
    assert saved["opt"]["state"][0]["master"].dtype == torch.float32
    resumed = [torch.nn.Parameter(t) for t in saved["params"]]
    opt = AdamW(resumed, lr=1e-3, master_weights=True)
    opt.load_state_dict(saved["opt"])
    for g in grads[3:]:
        resumed[0].grad, resumed[1].grad, fp.grad = g, torch.ones(5), g.float()
        opt.step()
        ref.step()
    # the master is fp32 AdamW on the same values, bit for bit; the parameter its rounding
    assert torch.equal(opt.state[resumed[0]]["master"], fp.detach())
    assert torch.equal(resumed[0].detach(), fp.detach().bfloat16())


def test_master_weights_keep_steps_below_a_bf16_ulp() -> None:
    p = torch.nn.Parameter(torch.ones(1000, dtype=torch.bfloat16))
    opt = AdamW([p], lr=1e-4, weight_decay=0.0, master_weights=True)
    for _ in range(40):  # 40 steps of ~1e-4 each: 0.004 in all, one bf16 ulp at 1.0 is 2**-7
        p.grad = torch.ones_like(p)
        opt.step()
    assert opt.state[p]["master"].mean().item() == pytest.approx(1 - 40e-4, abs=2e-5)
    assert torch.equal(p.detach(), opt.state[p]["master"].bfloat16())
    assert p.detach().float().mean().item() < 1.0  # nearest rounding alone never moves it
    with pytest.raises(TypeError, match="master_weights must be True or False"):
        AdamW([torch.nn.Parameter(torch.zeros(2))], master_weights="yes")


def test_master_weights_with_stochastic_rounding_round_the_master() -> None:
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(20_000, generator=gen).bfloat16())
    opt = AdamW([p], lr=1e-3, master_weights=True, stochastic_rounding=True, seed=4)
    p.grad = torch.randn(p.shape, generator=gen).bfloat16()
    opt.step()
    master = opt.state[p]["master"]
    low = (master.view(torch.int32) & -65536).view(torch.float32)
    high = ((master.view(torch.int32) & -65536) + 65536).view(torch.float32)
    value = p.detach().float().abs()
    assert bool(((value == low.abs()) | (value == high.abs())).all())
    assert not torch.equal(p.detach(), master.bfloat16())  # not simply nearest
