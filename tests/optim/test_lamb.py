"""LAMB against the paper's update (tensorflow/addons form) written plainly, each variant flag,
and against pytorch_optimizer's Lamb with matching flags."""

from __future__ import annotations

import itertools

import pytest
import torch

from optforge.optim import LAMB

SHAPES = [(9, 4), (4, 9), (7,)]


def reference_lamb(
    theta,
    grads,
    *,
    lr,
    beta1=0.9,
    beta2=0.999,
    eps=1e-6,
    wd=0.01,
    bias_correction=True,
    max_weight_norm=None,
    max_trust_ratio=None,
    adapt=True,
    grad_scale=1.0,
):
    theta, m, v = theta.clone(), torch.zeros_like(theta), torch.zeros_like(theta)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g * grad_scale
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        bc1, bc2 = (1 - beta1**t, 1 - beta2**t) if bias_correction else (1.0, 1.0)
        u = (m / bc1) / ((v / bc2).sqrt() + eps) + wd * theta
        r = 1.0
        if adapt:
            w_norm = theta.norm()
            if max_weight_norm is not None:
                w_norm = min(w_norm, torch.tensor(max_weight_norm, dtype=theta.dtype))
            u_norm = u.norm()
            r = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            if max_trust_ratio is not None:
                r = min(r, max_trust_ratio)
        theta = theta - lr * r * u
        out.append(theta.clone())
    return out


VARIANTS = [
    dict(bias_correction=bc, max_weight_norm=mwn, max_trust_ratio=mtr)
    for bc, mwn, mtr in itertools.product([True, False], [None, 10.0, 0.5], [None, 1.0])
]


#: ``fused=True`` compiles a graph per variant (15-30 s each, cold, on 2 cores): the default run
#: compiles the variants with every clamp on and with none, ``-m slow`` all twelve.
COMPILED_BY_DEFAULT = [VARIANTS[5], VARIANTS[6]]


@pytest.mark.parametrize(
    ("variant", "fused"),
    [(v, False) for v in VARIANTS]
    + [
        pytest.param(v, True, marks=() if v in COMPILED_BY_DEFAULT else pytest.mark.slow)
        for v in VARIANTS
    ],
    ids=str,
)
def test_variants_match_reference_fp64(variant: dict, fused: bool) -> None:
    thetas = [torch.randn(s, dtype=torch.float64) * 3 for s in SHAPES] + [
        torch.zeros(5, dtype=torch.float64)  # a zero-initialized bias
    ]
    grads = [[torch.randn_like(t) for _ in range(4)] for t in thetas]
    params = [torch.nn.Parameter(t.clone()) for t in thetas]
    opt = LAMB(params, lr=1e-2, weight_decay=0.01, fused=fused, **variant)
    for step in range(4):
        for p, gs in zip(params, grads):
            p.grad = gs[step].clone()
        opt.step()
    for p, t, gs in zip(params, thetas, grads):
        want = reference_lamb(t, gs, lr=1e-2, wd=0.01, **variant)[-1]
        torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=1e-12)


def test_uncapped_step_norm_is_lr_times_param_norm() -> None:
    p = torch.nn.Parameter(torch.randn(8, 5))
    before = p.detach().clone()
    opt = LAMB([p], lr=1e-2, weight_decay=0.0)
    p.grad = torch.randn(8, 5)
    opt.step()
    assert (p.detach() - before).norm().item() == pytest.approx(
        1e-2 * before.norm().item(), rel=1e-6
    )


def test_clamped_weight_norm_caps_the_step() -> None:
    p = torch.nn.Parameter(torch.randn(30, 30) * 2)  # ‖θ‖ ≈ 60 > 10
    before = p.detach().clone()
    opt = LAMB([p], lr=1e-2, weight_decay=0.0, max_weight_norm=10.0)
    p.grad = torch.randn(30, 30)
    opt.step()
    assert (p.detach() - before).norm().item() == pytest.approx(1e-2 * 10.0, rel=1e-6)


def test_max_trust_ratio_only_shrinks_steps() -> None:
    p = torch.nn.Parameter(torch.randn(30, 30) * 5)
    before = p.detach().clone()
    g = torch.randn(30, 30)
    opt = LAMB([p], lr=1e-2, weight_decay=0.0, max_trust_ratio=1.0)
    p.grad = g.clone()
    opt.step()
    u = (0.1 * g / 0.1) / ((0.001 * g * g / 0.001).sqrt() + 1e-6)  # first step: m̂ = g, v̂ = g²
    assert (p.detach() - before).norm().item() <= 1e-2 * u.norm().item() * (1 + 1e-6)


def test_zero_norm_tensor_takes_plain_adam_step() -> None:
    p = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    g = torch.randn(6, dtype=torch.float64)
    opt = LAMB([p], lr=1e-2, weight_decay=0.0)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), -1e-2 * g / (g.abs() + 1e-6), rtol=1e-10, atol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_gradient_is_not_modified(fused: bool) -> None:
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    opt = LAMB(params, max_grad_norm=0.1, fused=fused)
    for p in params:
        p.grad = torch.randn_like(p) * 50
    grads = [p.grad.clone() for p in params]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))


def test_no_hidden_clipping_and_explicit_global_clipping() -> None:
    thetas = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    raw = [torch.randn_like(t) for t in thetas]
    total = torch.sqrt(sum((g**2).sum() for g in raw))
    grads = [g * (100 / total) for g in raw]  # global norm exactly 100
    for max_grad_norm, scale in [(None, 1.0), (1.0, 1 / 100)]:
        params = [torch.nn.Parameter(t.clone()) for t in thetas]
        opt = LAMB(params, lr=1e-2, max_grad_norm=max_grad_norm, eps=1e-3)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for p, t, g in zip(params, thetas, grads):
            want = reference_lamb(t, [g], lr=1e-2, eps=1e-3, grad_scale=scale)[-1]
            torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=1e-12)


def test_adapt_no_decay_false_skips_ratio_for_undecayed_groups() -> None:
    theta = torch.randn(6, dtype=torch.float64) * 4
    g = torch.randn(6, dtype=torch.float64)
    p = torch.nn.Parameter(theta.clone())
    opt = LAMB([p], lr=1e-2, weight_decay=0.0, adapt_no_decay=False)
    p.grad = g.clone()
    opt.step()
    want = reference_lamb(theta, [g], lr=1e-2, wd=0.0, adapt=False)[-1]
    torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=0)


def test_matches_pytorch_optimizer_lamb() -> None:
    po = pytest.importorskip("pytorch_optimizer", reason="pytorch-optimizer is not installed")
    ours = [torch.nn.Parameter(torch.randn(s) * 4) for s in SHAPES]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    # pytorch_optimizer's Lamb: no second-moment debias, first-moment debias off with
    # adam_debias=True, ‖θ‖ clamped at 10, decay inside the ratio with weight_decouple=False.
    opt_a = LAMB(ours, lr=1e-2, weight_decay=0.01, bias_correction=False, max_weight_norm=10.0)
    opt_b = po.Lamb(
        theirs, lr=1e-2, weight_decay=0.01, weight_decouple=False, adam_debias=True, eps=1e-6
    )
    for _ in range(6):
        for a, b in zip(ours, theirs):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(ours, theirs):
        # they divide by ‖u‖ + ε instead of ‖u‖: a 1e-7 relative difference
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
