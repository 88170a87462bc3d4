"""AdamW8bit and Lion8bit: trajectories against bitsandbytes 0.50's CPU optimizers, state bytes,
invariants, and the compiled backend against the loop (conformance: test_conformance.py)."""

from __future__ import annotations

import pytest
import torch

from optforge.kernels.quant import dequantize_blockwise, dynamic_map
from optforge.optim import AdamW8bit, Lion8bit

SHAPES = [(64, 257), (4096,), (5000,), (300,)]  # 8-bit with and without a partial block; fp32


def _params(dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(1)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]


def _bnb():
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (the 'bnb' extra) is the reference")
    import bitsandbytes

    return bitsandbytes


def _trajectories(ours_cls, theirs_cls, dtype, steps, **hyper):
    ours, theirs, start = _params(dtype), _params(dtype), _params(dtype)
    # keywords only: bitsandbytes 0.50 moved positional constructor arguments
    opt_a, opt_b = ours_cls(ours, **hyper), theirs_cls(theirs, **hyper)
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        for a, b in zip(ours, theirs):
            g = torch.randn(a.shape, generator=gen).to(dtype)
            a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    return ours, theirs, start, opt_a, opt_b


# Free-running trajectories (no re-sync, unlike bitsandbytes' own 8-bit tests), 20 steps of
# N(0, 1) gradients. Measured mean |Δθ| ours vs theirs: AdamW8bit fp32 3.4e-6 for a mean step
# of 4.3e-3 (lr 1e-3), Lion8bit 2.9e-7; the bound is ~3x the measurement and well below a step.
# bf16: a one-ulp difference in a rounding (2**-8 near 1) is ~100 steps of lr 1e-3 /
# 4e-5; Lion: a sign flip near zero moves an element by 2·lr.
TOLERANCES = {
    ("AdamW8bit", torch.float32): (1e-5, 1e-3),
    ("AdamW8bit", torch.bfloat16): (2e-4, 2e-2),
    ("Lion8bit", torch.float32): (1e-5, 1e-2),
    ("Lion8bit", torch.bfloat16): (2e-4, 2e-2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["AdamW8bit", "Lion8bit"])
def test_trajectory_stays_close_to_bitsandbytes(name: str, dtype: torch.dtype) -> None:
    bnb = _bnb()
    ours_cls, theirs_cls = {
        "AdamW8bit": (AdamW8bit, bnb.optim.AdamW8bit),
        "Lion8bit": (Lion8bit, bnb.optim.Lion8bit),
    }[name]
    hyper = {"lr": 1e-3, "weight_decay": 0.1}
    ours, theirs, start, opt_a, opt_b = _trajectories(ours_cls, theirs_cls, dtype, 20, **hyper)
    mean_tol, max_tol = TOLERANCES[name, dtype]
    for a, b, s in zip(ours, theirs, start):
        moved = (b.float() - s.float()).abs().mean()
        assert moved > 2e-4  # both trained (a positional-argument slip would freeze bnb)
        diff = (a.float() - b.float()).abs()
        assert diff.mean() < mean_tol, (a.shape, diff.mean().item())
        assert diff.max() < max_tol, (a.shape, diff.max().item())
    # dequantized first moments agree (bitsandbytes names them state1/absmax1)
    a, b = ours[0], theirs[0]
    sa, sb = opt_a.state[a], opt_b.state[b]
    code = dynamic_map(True)[0]
    ma = dequantize_blockwise(sa["exp_avg"], sa["exp_avg_absmax"], code)
    mb = dequantize_blockwise(sb["state1"], sb["absmax1"], code)
    assert (ma - mb).norm() / mb.norm() < 2e-2


def test_state_is_about_four_times_smaller_than_adamw() -> None:
    params = [torch.nn.Parameter(torch.randn(256, 256)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p)
    eight, full = AdamW8bit(params), torch.optim.AdamW(params)
    eight.step()
    full.step()

    def moment_bytes(opt):
        return sum(
            t.numel() * t.element_size()
            for st in opt.state.values()
            for k, t in st.items()
            if k != "step"
        )

    ratio = moment_bytes(full) / moment_bytes(eight)
    assert 3.9 < ratio <= 4.0, ratio  # 8 bytes vs 2 + 8/256
    st = eight.state[params[0]]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg_sq"].dtype == torch.uint8
    assert st["exp_avg_absmax"].shape == (256,) and st["exp_avg_absmax"].dtype == torch.float32


@pytest.mark.parametrize("cls", [AdamW8bit, Lion8bit])
def test_zero_gradient_and_state_without_decay_changes_nothing(cls) -> None:
    params = _params()
    opt = cls(params, lr=1e-2, weight_decay=0.0)
    for p in params:
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in params]
    opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    for st in opt.state.values():
        for key, value in st.items():
            if key.endswith("absmax"):
                assert not value.any(), key  # the moments dequantize to exact zeros
            elif key != "step" and value.dtype != torch.uint8:
                assert not value.any(), key


def test_lion8bit_steps_are_lr_sized_and_weight_decay_only_shrinks() -> None:
    params = _params()
    opt = Lion8bit(params, lr=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    opt.step()
    for p, b in zip(params, before):
        step = (p - b).abs()
        torch.testing.assert_close(step[step > 0], torch.full_like(step[step > 0], 1e-2))
    decayed = _params()
    opt = Lion8bit(decayed, lr=1e-2, weight_decay=1.0)
    for p in decayed:
        p.grad = torch.zeros_like(p)
    norms = [p.norm().item() for p in decayed]
    opt.step()
    assert all(p.norm().item() < n for p, n in zip(decayed, norms))


def test_new_lr_takes_effect_and_one_step_changes_state_once() -> None:
    params = _params()
    opt = AdamW8bit(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert [float(opt.state[p]["step"]) for p in params] == [1.0] * len(params)
    m = dequantize_blockwise(
        opt.state[params[0]]["exp_avg"],
        opt.state[params[0]]["exp_avg_absmax"],
        dynamic_map(True)[0],
    )
    torch.testing.assert_close(m, torch.full_like(m, 0.1))  # (1 - β1)·g, once
    before = params[0].detach().clone()
    opt.param_groups[0]["lr"] = 0.0
    opt.param_groups[0]["weight_decay"] = 0.0
    opt.step()
    assert torch.equal(params[0], before)


def test_complex_parameters_are_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match="view_as_real"):
        AdamW8bit([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])


@pytest.mark.parametrize("cls", [AdamW8bit, Lion8bit])
def test_tiles_change_no_result(cls, monkeypatch) -> None:
    from optforge.optim import eightbit

    whole, tiled = _params(), _params()
    opt_whole = cls(whole, lr=1e-2, min_8bit_size=1)
    opt_tiled = cls(tiled, lr=1e-2, min_8bit_size=1)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        for a, b in zip(whole, tiled):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt_whole.step()
        monkeypatch.setattr(eightbit, "TILE", 2 * 256)  # (64, 257) and (5000,): several tiles
        opt_tiled.step()
        monkeypatch.setattr(eightbit, "TILE", 1 << 16)
    for a, b in zip(whole, tiled):
        assert torch.equal(a, b)
        for key, value in opt_whole.state[a].items():
            assert torch.equal(opt_tiled.state[b][key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("cls", [AdamW8bit, Lion8bit])
def test_compiled_backend_matches_the_loop(cls) -> None:
    from optforge.optim.eightbit import TILE

    shapes = [(TILE + 300,), (2, 257)]  # a full tile (compiled), a partial one and a small one
    gen = torch.Generator().manual_seed(6)
    ref = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    params = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_ref = cls(ref, lr=1e-2, min_8bit_size=1, backend="loop")
    opt = cls(params, lr=1e-2, min_8bit_size=1, backend="compiled")
    for lr in (1e-2, 3e-3):  # a new lr must take effect (persistent 0-d inputs)
        for group in (*opt_ref.param_groups, *opt.param_groups):
            group["lr"] = lr
        for a, b in zip(ref, params):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt_ref.step()
        opt.step()
    for a, b in zip(ref, params):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        for key, value in opt_ref.state[a].items():
            other = opt.state[b][key]
            if value.dtype == torch.uint8:  # fused arithmetic may flip a near-tie
                assert (other.int() - value.int()).abs().max() <= 1, key
                assert (other != value).float().mean() < 1e-3, key
            else:
                torch.testing.assert_close(other, value, rtol=1e-5, atol=1e-7)
