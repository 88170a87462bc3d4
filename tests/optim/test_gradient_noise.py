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
    """The noise GradientNoise adds at 0-based ``step`` to a zero gradient (SGD with lr=0)."""
    p = torch.nn.Parameter(torch.zeros(N, dtype=torch.float64))
    opt = GradientNoise(torch.optim.SGD([p], lr=0.0), eta=eta, gamma=gamma, seed=seed)
    opt.steps_done = step
    p.grad = torch.zeros_like(p)
    opt.step()
    return p.grad


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
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p.detach(), -p.grad)
    assert p.detach().std().item() == pytest.approx(1.0, rel=0.1)


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
