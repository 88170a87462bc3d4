"""The shared pieces of every update: direction rules, the apply step, stochastic rounding."""

from __future__ import annotations

import pytest
import torch

from optforge.optim import AdamW, Lion
from optforge.optim.rules import (
    adam_direction,
    random_rounding_bits,
    stochastic_round_bf16,
)
from optforge.testing.conformance import round_trip


def bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just below and above each fp32 value (by truncating the low 16 bits)."""
    low = (x.view(torch.int32) & -65536).view(torch.float32)
    high = ((x.view(torch.int32) & -65536) + 65536).view(torch.float32)
    return low, high


def test_stochastic_rounding_lands_on_a_neighbour_and_is_unbiased() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=gen) * 3
    rounded = stochastic_round_bf16(x, random_rounding_bits(x.shape, gen))
    low, high = bf16_neighbours(x.abs())
    assert torch.equal(rounded.bfloat16().float(), rounded)  # exactly representable in bf16
    mag = rounded.abs()
    assert bool(((mag == low) | (mag == high)).all())
    # P(up) = (|x| - low) / (high - low): the mean error is ~0 relative to the ulp
    ulp = high - low
    bias = ((rounded - x) / ulp).mean().item()
    assert abs(bias) < 0.005


def test_exact_bf16_values_are_kept() -> None:
    x = torch.randn(1000).bfloat16().float()
    bits = random_rounding_bits(x.shape, torch.Generator().manual_seed(1))
    assert torch.equal(stochastic_round_bf16(x, bits), x)


def test_adam_direction_matches_the_paper() -> None:
    m, v, g = torch.randn(5).double(), torch.rand(5).double(), torch.randn(5).double()
    u, m2, v2 = adam_direction(
        m, v, g, beta1=0.9, beta2=0.99, eps=1e-8, bias_correction1=0.1, bias_correction2=0.01
    )
    expected_m = 0.9 * m + 0.1 * g
    expected_v = 0.99 * v + 0.01 * g * g
    torch.testing.assert_close(m2, expected_m)
    torch.testing.assert_close(v2, expected_v)
    torch.testing.assert_close(u, (expected_m / 0.1) / ((expected_v / 0.01).sqrt() + 1e-8))


def lion_bf16(stochastic: bool, steps: int = 20, **kw) -> torch.Tensor:
    p = torch.nn.Parameter(torch.ones(50_000, dtype=torch.bfloat16))
    opt = Lion([p], lr=1e-4, stochastic_rounding=stochastic, seed=3, **kw)
    for _ in range(steps):
        p.grad = torch.ones_like(p)
        opt.step()
    return p.detach().float()


def test_small_steps_survive_only_with_stochastic_rounding() -> None:
    # each step moves θ by 1e-4, under half a bf16 ulp at 1.0 (2**-8): nearest rounding drops it
    assert torch.equal(lion_bf16(False), torch.ones(50_000))
    assert lion_bf16(True).mean().item() == pytest.approx(1 - 20e-4, abs=2e-5)


@pytest.mark.parametrize("backend", ["foreach", "compiled"])
def test_stochastic_rounding_is_the_same_on_every_backend(backend: str) -> None:
    reference = lion_bf16(True, steps=5, backend="loop")
    other = lion_bf16(True, steps=5, backend=backend)
    # same random bits; a compiled fp32 intermediate may differ in its last bit, which moves
    # a rounding decision at most one bf16 ulp
    torch.testing.assert_close(other, reference, rtol=2**-7, atol=0)
    if backend == "foreach":
        assert torch.equal(other, reference)


@pytest.mark.parametrize("cls", [Lion, AdamW])
def test_stochastic_rounding_resumes_exactly_and_refuses_fp16(cls) -> None:
    def fresh() -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
        gen = torch.Generator().manual_seed(0)
        params = [
            torch.nn.Parameter(torch.randn(s, generator=gen).bfloat16()) for s in [(7, 3), (4,)]
        ]
        params.append(torch.nn.Parameter(torch.randn(3, generator=gen)))  # fp32: nearest
        return params, cls(params, lr=1e-3, stochastic_rounding=True, seed=5)

    def steps(params, opt, n):
        for _ in range(n):
            for p in params:
                p.grad = torch.sin(p.detach().float() * 3).to(p.dtype)
            opt.step()

    ref, ref_opt = fresh()
    steps(ref, ref_opt, 6)
    params, opt = fresh()
    steps(params, opt, 3)
    saved = round_trip({"opt": opt.state_dict(), "params": [p.detach() for p in params]})
    assert saved["opt"]["state"][0]["rounding_step"].dtype == torch.int64
    assert "rounding_step" not in saved["opt"]["state"][2]  # fp32 parameter: no stream
    resumed = [torch.nn.Parameter(t) for t in saved["params"]]
    opt2 = cls(resumed, lr=1e-3, stochastic_rounding=True, seed=5)
    opt2.load_state_dict(saved["opt"])
    steps(resumed, opt2, 3)
    for a, b in zip(ref, resumed):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="fp16 parameters are not supported"):
        cls([torch.nn.Parameter(torch.ones(2, dtype=torch.float16))], stochastic_rounding=True)
