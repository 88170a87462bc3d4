"""Annealed gradient noise: the schedule (a variance, not a std), determinism, resume, ranks."""

from __future__ import annotations

import io
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from optforge.optim import GradientNoise

N = 1_000_000


def noise_at(step: int, eta: float = 0.3, gamma: float = 0.55, seed: int = 0) -> torch.Tensor:
    """The noise GradientNoise adds at 0-based ``step`` to a zero gradient (SGD, lr=1, θ=0)."""
    p = torch.nn.Parameter(torch.zeros(N, dtype=torch.float64))
    opt = GradientNoise(torch.optim.SGD([p], lr=1.0), eta=eta, gamma=gamma, seed=seed)
    opt.steps_done = step
    p.grad = torch.zeros_like(p)
    opt.step()
    return -p.detach()


@pytest.mark.parametrize("k", [1, 10, 1000])
def test_variance_follows_eta_over_k_to_the_gamma(k: int) -> None:
    noise = noise_at(k - 1)
    expected = 0.3 / k**0.55
    assert noise.var().item() == pytest.approx(expected, rel=0.01)
    assert abs(noise.mean().item()) < 5 * math.sqrt(expected / N)


def test_eta_is_a_variance_not_a_std() -> None:
    assert noise_at(0, eta=0.3).std().item() == pytest.approx(math.sqrt(0.3), rel=0.01)


def test_same_seed_same_noise_other_seed_other_noise() -> None:
    assert torch.equal(noise_at(3, seed=5), noise_at(3, seed=5))
    assert not torch.equal(noise_at(3, seed=5), noise_at(3, seed=6))
    assert not torch.equal(noise_at(3), noise_at(4))


def test_noise_reaches_the_inner_optimizer() -> None:
    p = torch.nn.Parameter(torch.zeros(1000))
    opt = GradientNoise(torch.optim.SGD([p], lr=1.0), eta=1.0, gamma=0.0)
    grad = p.grad = torch.zeros_like(p)
    opt.step()
    assert p.detach().std().item() == pytest.approx(1.0, rel=0.1)
    assert p.grad is grad and not grad.any()  # the caller's gradient is left clean


def test_failed_inner_step_leaves_gradient_and_counter_untouched() -> None:
    from optforge.optim import Lion

    p = torch.nn.Parameter(torch.zeros(8))
    opt = GradientNoise(Lion([p], lr=0.1), eta=1.0, seed=2)
    grad = torch.ones(8)
    grad[3] = float("nan")
    p.grad = grad.clone()
    with pytest.raises(FloatingPointError):
        opt.step()
    assert opt.steps_done == 0
    assert torch.allclose(p.grad, grad, equal_nan=True)  # no noise left on the gradient
    assert p.grad is not None and not p.detach().any()


def test_seed_out_of_range_is_refused() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    for seed in (2**64, -1):
        with pytest.raises(ValueError, match="seed must be"):
            GradientNoise(torch.optim.SGD([p], lr=0.1), seed=seed)
    assert not torch.equal(noise_at(0, seed=2**64 - 1), noise_at(0, seed=0))


def test_load_validates_the_noise_settings() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    opt = GradientNoise(torch.optim.SGD([p], lr=0.1), eta=0.3)
    bad_values = [
        ("eta", float("nan"), ValueError, "eta must be finite"),
        ("steps_done", torch.tensor(-5), ValueError, "steps_done must be >= 0"),
        ("seed", 2**64, ValueError, "seed must be < 2\\*\\*64"),
    ]
    for key, value, error, message in bad_values:
        state = opt.state_dict()
        state["wrappers"][-1]["state"][key] = value
        with pytest.raises(error, match=message):
            opt.load_state_dict(state)
    assert opt.eta == 0.3 and opt.steps_done == 0


def test_two_noise_wrappers_nest_and_resume() -> None:
    def build() -> tuple[torch.nn.Parameter, GradientNoise]:
        p = torch.nn.Parameter(torch.ones(20))
        inner = GradientNoise(torch.optim.SGD([p], lr=0.1), eta=0.1, seed=1)
        return p, GradientNoise(inner, eta=0.2, seed=2)

    p, opt = build()
    for _ in range(3):
        p.grad = p.detach().clone()
        opt.step()
    state = opt.state_dict()
    assert [r["class"] for r in state["wrappers"]] == ["GradientNoise", "GradientNoise"]
    p2, opt2 = build()
    with torch.no_grad():
        p2.copy_(p)
    opt2.load_state_dict(state)
    assert opt2.seed == 2 and opt2.optimizer.seed == 1
    assert opt2.steps_done == opt2.optimizer.steps_done == 3


def test_resume_mid_run_reproduces_the_noise_bitwise() -> None:
    def fresh() -> tuple[torch.nn.Parameter, GradientNoise]:
        p = torch.nn.Parameter(torch.ones(50))
        return p, GradientNoise(torch.optim.Adam([p], lr=0.1), eta=0.3, seed=11)

    def steps(p: torch.nn.Parameter, opt: GradientNoise, n: int) -> None:
        for _ in range(n):
            p.grad = p.detach() * 0.5
            opt.step()

    p_ref, ref = fresh()
    steps(p_ref, ref, 10)
    p, opt = fresh()
    steps(p, opt, 5)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    p2 = torch.nn.Parameter(p.detach().clone())
    opt2 = GradientNoise(torch.optim.Adam([p2], lr=0.1), eta=0.3, seed=0)  # seed comes back too
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt2.steps_done == 5 and opt2.seed == 11
    steps(p2, opt2, 5)
    assert torch.equal(p2, p_ref)


def test_foreign_state_dict_is_rejected() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    plain = torch.optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="not saved from a GradientNoise"):
        GradientNoise(torch.optim.SGD([p], lr=0.1)).load_state_dict(plain.state_dict())


def test_wraps_only_optimizers() -> None:
    with pytest.raises(TypeError, match="wraps a torch.optim.Optimizer"):
        GradientNoise([torch.nn.Parameter(torch.ones(3))])  # type: ignore[arg-type]


def _rank_noise(rank: int, world: int, port: int, out: dict) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(rank)  # the global RNG differs per rank; the noise must not
        p = torch.nn.Parameter(torch.zeros(64))
        opt = GradientNoise(torch.optim.SGD([p], lr=1.0), eta=0.3, seed=3)
        for _ in range(3):
            p.grad = torch.full_like(p, float(rank))
            dist.all_reduce(p.grad)  # post-reduce placement: gradients agree before the step
            p.grad /= world
            opt.step()
        out[rank] = p.detach().clone()
    finally:
        dist.destroy_process_group()


def test_ranks_add_identical_noise_after_all_reduce() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_noise, args=(2, port, out), nprocs=2, join=True)
        assert torch.equal(out[0], out[1])
        assert out[0].abs().sum() > 0
