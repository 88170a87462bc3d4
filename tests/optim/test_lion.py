"""Lion against the paper's update written plainly, and against lion-pytorch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optforge.optim import Lion

SHAPES = [(9, 4), (4, 9), (6, 6)]


def reference_lion(theta, grads, lr, beta1, beta2, wd):
    """Chen et al. (2023), Program 1, in float64: returns the parameter after each step."""
    theta, m = theta.clone(), torch.zeros_like(theta)
    out = []
    for g in grads:
        theta = theta * (1 - lr * wd)
        c = beta1 * m + (1 - beta1) * g
        theta = theta - lr * torch.sign(c)
        m = beta2 * m + (1 - beta2) * g
        out.append(theta.clone())
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fused", [False, True])
def test_matches_paper_formula_fp64(shape: tuple[int, int], fused: bool) -> None:
    theta0 = torch.randn(shape, dtype=torch.float64)
    grads = [torch.randn(shape, dtype=torch.float64) for _ in range(5)]
    expected = reference_lion(theta0, grads, 1e-2, 0.9, 0.99, 0.1)
    p = torch.nn.Parameter(theta0.clone())
    opt = Lion([p], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, fused=fused)
    for g, want in zip(grads, expected):
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-12)


def test_sign_of_zero_is_zero() -> None:
    p = torch.nn.Parameter(torch.randn(5, 3))
    before = p.detach().clone()
    opt = Lion([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p.detach(), before * (1 - 0.1 * 0.5))


def test_stored_ema_uses_beta2() -> None:
    p = torch.nn.Parameter(torch.randn(5, 3))
    g = torch.randn(5, 3)
    opt = Lion([p], betas=(0.5, 0.99))
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(opt.state[p]["exp_avg"], (1 - 0.99) * g, rtol=1e-7, atol=0)


def test_decay_is_applied_before_the_sign_step() -> None:
    lr, wd = 0.1, 1.0  # "before" and "after" differ by lr^2 * wd = 0.01 per coordinate
    p = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = Lion([p], lr=lr, weight_decay=wd)
    p.grad = torch.ones(4)
    opt.step()
    torch.testing.assert_close(
        p.detach(), torch.full((4,), 2.0 * (1 - lr * wd) - lr), rtol=1e-6, atol=0
    )


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    lr=st.floats(1e-4, 1e-1),
    beta1=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_every_coordinate_moves_by_exactly_lr(rows, cols, lr, beta1, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(rows, cols, dtype=torch.float64, generator=gen))
    before = p.detach().clone()
    grad = torch.randn(rows, cols, dtype=torch.float64, generator=gen)
    grad[grad.abs() < 1e-3] = 1e-3  # no zero of c: every coordinate moves
    opt = Lion([p], lr=lr, betas=(beta1, 0.99))
    p.grad = grad
    opt.step()
    step = (p.detach() - before).abs()
    torch.testing.assert_close(step, torch.full_like(step, lr), rtol=1e-9, atol=0)
    assert torch.linalg.vector_norm(p.detach() - before) == pytest.approx(
        lr * (rows * cols) ** 0.5, rel=1e-9
    )


@pytest.mark.parametrize("fused", [False, True])
def test_strided_views_match_contiguous_copies(fused: bool) -> None:
    base = torch.randn(6, 8)
    views = [torch.nn.Parameter(base.t()), torch.nn.Parameter(torch.randn(8, 6)[:, ::2])]
    copies = [torch.nn.Parameter(v.detach().contiguous()) for v in views]
    grads = [torch.randn_like(v) for v in views]
    for params in (views, copies):
        opt = Lion(params, lr=1e-2, weight_decay=0.1, fused=fused)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for v, c in zip(views, copies):
        assert torch.equal(v.detach(), c.detach())


def test_matches_lion_pytorch() -> None:
    lion_pytorch = pytest.importorskip("lion_pytorch", reason="lion-pytorch is not installed")
    torch.manual_seed(1)
    ours = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_a = Lion(ours, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.2)
    opt_b = lion_pytorch.Lion(theirs, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.2)
    for _ in range(8):
        for a, b in zip(ours, theirs):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(ours, theirs):
        # lion-pytorch updates the EMA with lerp_: same value up to rounding, which can flip
        # sign(c) only where |c| ~ 1e-7 (none here with Gaussian gradients).
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
