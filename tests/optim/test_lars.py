"""LARS against Algorithm 1 of You, Gitman and Ginsburg (2017), written plainly."""

from __future__ import annotations

import pytest
import torch

from optforge.optim import LARS


def reference_lars(theta, grads, lr, momentum, wd, tc, eps, adapt=True):
    theta, v = theta.clone(), torch.zeros_like(theta)
    out = []
    for g in grads:
        w_norm, g_norm = theta.norm(), g.norm()
        local = (
            tc * w_norm / (g_norm + wd * w_norm + eps)
            if adapt and w_norm > 0 and g_norm > 0
            else torch.tensor(1.0, dtype=theta.dtype)
        )
        v = momentum * v + lr * local * (g + wd * theta)
        theta = theta - v
        out.append(theta.clone())
    return out


@pytest.mark.parametrize("shape", [(9, 4), (4, 9), (6, 6), (7,)])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(("wd", "eps"), [(0.0, 0.0), (5e-4, 1e-9), (0.1, 0.0)])
def test_matches_algorithm_1(shape, fused, wd, eps) -> None:
    theta0 = torch.randn(shape, dtype=torch.float64)
    grads = [torch.randn(shape, dtype=torch.float64) for _ in range(5)]
    expected = reference_lars(theta0, grads, 2.0, 0.9, wd, 1e-3, eps)
    p = torch.nn.Parameter(theta0.clone())
    opt = LARS([p], lr=2.0, momentum=0.9, weight_decay=wd, eps=eps, fused=fused)
    for g, want in zip(grads, expected):
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-12)


def test_zero_norm_parameter_uses_ratio_one() -> None:
    p = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    g = torch.randn(5, dtype=torch.float64)
    opt = LARS([p], lr=0.1, momentum=0.9)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * g, rtol=1e-12, atol=0)


def test_no_decay_groups_skip_adaptation_when_asked() -> None:
    theta0 = torch.randn(6, dtype=torch.float64)
    g = torch.randn(6, dtype=torch.float64)
    p = torch.nn.Parameter(theta0.clone())
    opt = LARS([p], lr=0.1, weight_decay=0.0, adapt_no_decay=False)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), theta0 - 0.1 * g, rtol=1e-12, atol=0)


def test_lr_is_required() -> None:
    with pytest.raises(TypeError, match="lr"):
        LARS([torch.nn.Parameter(torch.zeros(2))])
