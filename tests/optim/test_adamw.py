"""optforge's AdamW (adam_direction + apply_update) against torch.optim.AdamW."""

from __future__ import annotations

import pytest
import torch

from optforge.optim import AdamW
from optforge.testing.conformance import round_trip

# Not bit-exact: torch divides by √v/√(1−β2^t) + ε, the rule by √(v/(1−β2^t)) + ε (one rounding
# apart per step), and torch updates the moments with lerp_/addcmul_, whose CPU kernels round
# unlike the plain expression (FMA). Measured over 100 steps on these shapes: fp32 max |Δθ|
# 3.6e-7 (assert_close's fp32 default, rtol 1.3e-6 / atol 1e-5, holds); fp64 max |Δθ| 8.9e-16,
# so fp64 is held to rtol 1e-12 / atol 1e-14: the same algorithm.
_TOL = {torch.float32: {}, torch.float64: {"rtol": 1e-12, "atol": 1e-14}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize(
    "hyper",
    [{}, {"weight_decay": 0.1, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True}],
    ids=["defaults", "decay-betas-eps-maximize"],
)
def test_matches_torch_adamw(backend: str, hyper: dict, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (1,), (1025,)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_a = AdamW(ours, lr=1e-2, backend=backend, **hyper)
    opt_b = torch.optim.AdamW(theirs, lr=1e-2, foreach=False, **hyper)
    for _ in range(20):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=gen, dtype=dtype)
            b.grad = a.grad.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **_TOL[dtype])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_a.state[a][key], opt_b.state[b][key], **_TOL[dtype])
        assert opt_a.state[a]["step"].item() == opt_b.state[b]["step"].item() == 20


def test_defaults_are_torch_adamw_defaults() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    ours, theirs = AdamW(p).defaults, torch.optim.AdamW(p).defaults
    for key in ("lr", "betas", "eps", "weight_decay", "maximize"):
        assert ours[key] == theirs[key], key


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


@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize(
    "options",
    [
        {"master_weights": True},
        {"stochastic_rounding": True},
        {"master_weights": True, "stochastic_rounding": True},
    ],
    ids=["master", "sr", "master-sr"],
)
def test_bf16_options_resume_bit_for_bit_with_state_dtypes_kept(
    backend: str, options: dict
) -> None:
    """6 steps straight against 3 + a weights-only checkpoint round trip + 3, on bf16 parameters
    (with an fp32 one beside them, which keeps no master and no rounding stream)."""
    gen = torch.Generator().manual_seed(2)
    w = [torch.randn(s, generator=gen) for s in ((300,), (17, 5), (4,))]
    dtypes = (torch.bfloat16, torch.bfloat16, torch.float32)
    grads = [
        [torch.randn(t.shape, generator=gen).to(d) for t, d in zip(w, dtypes)] for _ in range(6)
    ]

    def fresh() -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(t.to(d, copy=True)) for t, d in zip(w, dtypes)]

    def build(params: list[torch.nn.Parameter]) -> AdamW:
        return AdamW(params, lr=1e-3, weight_decay=0.1, backend=backend, seed=7, **options)

    def steps(opt: AdamW, params: list[torch.nn.Parameter], gs: list) -> None:
        for g in gs:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()

    straight = fresh()
    opt = build(straight)
    steps(opt, straight, grads)

    first = fresh()
    opt_a = build(first)
    steps(opt_a, first, grads[:3])
    saved = round_trip({"opt": opt_a.state_dict(), "params": [p.detach() for p in first]})
    resumed = [torch.nn.Parameter(t) for t in saved["params"]]
    opt_b = build(resumed)
    opt_b.load_state_dict(saved["opt"])
    steps(opt_b, resumed, grads[3:])

    master = options.get("master_weights", False)
    rounds = options.get("stochastic_rounding", False)
    for i, (p, q) in enumerate(zip(resumed, straight)):
        assert p.dtype == q.dtype and torch.equal(p, q), i
        st, ref = opt_b.state[p], opt.state[q]
        assert set(st) == set(ref)
        for key in ref:
            assert st[key].dtype == ref[key].dtype and torch.equal(st[key], ref[key]), (i, key)
        assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.float32
        assert st["step"].dtype == torch.float32 and st["step"].device.type == "cpu"
        low = p.dtype == torch.bfloat16
        assert ("master" in st) == (master and low), (i, sorted(st))
        assert ("rounding_step" in st) == (rounds and low), (i, sorted(st))
        if "master" in st:
            assert st["master"].dtype == torch.float32
            if not rounds:  # to-nearest: the parameter is exactly its master's rounding
                assert torch.equal(p.detach(), st["master"].bfloat16())


# Regression: the eager rule squared the fp16 gradient in fp16 (g²·(1 − β2) underflowed to 0,
# v stayed 0 and the first step was m̂/ε, hundreds instead of ~lr).
def test_fp16_parameters_take_steps_of_about_lr() -> None:
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = AdamW([p], lr=1e-3, weight_decay=0.0, backend="loop")
    p.grad = torch.full_like(p, 4e-3)  # g² = 1.6e-5 (fine in fp16); g²·(1 − β2) = 1.6e-8 is not
    opt.step()
    assert (1 - p.detach().float()).abs().max().item() < 2e-3  # Adam's first step is ~lr
