"""DeepZero: CGE against autograd and against itself batched; masks; ZO-GraSP; the optimizer
against torch's SGD fed the estimate (reference/zo.md §3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optforge.zo import DeepZero, cge, cge_sequential, zo_grasp_keep_ratios
from optforge.zo.deepzero import random_mask


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.Tanh(),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).double()


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(6, 1, 6, 6, generator=gen, dtype=torch.float64), torch.arange(6) % 5


def test_cge_is_the_forward_difference_on_a_quadratic() -> None:
    # (L(θ+μe_k) − L(θ))/μ = g_k + (μ/2)H_kk exactly on a quadratic.
    h = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    mu = 1e-2
    base, (g,) = cge(lambda: 0.5 * (h * x * x).sum(), [x], mu)
    torch.testing.assert_close(g, h * x + mu / 2 * h, rtol=1e-8, atol=1e-10)
    assert base == pytest.approx(float(0.5 * (h * x * x).sum()))


def test_sequential_fast_path_equals_the_closure_loop_and_autograd() -> None:
    net = _net()
    x, y = _batch()
    masks = [random_mask(p, 0.5, 3, 0, i) for i, p in enumerate(net.parameters())]
    params = list(net.parameters())
    slow_base, slow = cge(lambda: nn.functional.cross_entropy(net(x), y), params, 1e-6, masks)
    fast_base, fast = cge_sequential(net, x, lambda out: nn.functional.cross_entropy(out, y),
                                     1e-6, masks, chunk=7)
    assert fast_base == pytest.approx(slow_base, rel=1e-12)
    nn.functional.cross_entropy(net(x), y).backward()
    for a, b, m, p in zip(slow, fast, masks, params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
        assert not a[~m].any()  # masked coordinates get no estimate
        torch.testing.assert_close(a[m], p.grad[m], rtol=1e-3, atol=1e-5)


def test_mask_density_is_the_requested_ratio() -> None:
    # ZO-Bench's Φ(s) bug: masked fraction must equal the request, >= 1e5 elements.
    like = torch.empty(400, 300)
    for ratio in (0.1, 0.5, 0.8, 0.9):
        m = random_mask(like, ratio, 0, 1, 2)
        assert abs(float(m.float().mean()) - ratio) < 0.01
    assert torch.equal(random_mask(like, 0.3, 5, 1, 2), random_mask(like, 0.3, 5, 1, 2))
    assert not torch.equal(random_mask(like, 0.3, 5, 1, 2), random_mask(like, 0.3, 5, 2, 2))


def test_zo_grasp_keeps_the_global_fraction_and_restores_params() -> None:
    net = _net()
    x, y = _batch()
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    ratios = zo_grasp_keep_ratios(lambda: nn.functional.cross_entropy(net(x), y), params, 0.8,
                                  q=16)
    sizes = [p.numel() for p in params]
    kept = sum(r * n for r, n in zip(ratios, sizes)) / sum(sizes)
    assert abs(kept - 0.2) < 0.01 and all(0.0 <= r <= 1.0 for r in ratios)
    assert len(set(ratios)) > 1  # per-tensor ratios, not a uniform split
    for p, b in zip(params, before):
        torch.testing.assert_close(p.detach(), b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0.0, 1.0\)"):
        zo_grasp_keep_ratios(lambda: x.sum(), params, 1.0)


def test_optimizer_equals_torch_sgd_fed_the_estimate() -> None:
    net, ref = _net(), _net()
    x, y = _batch()

    def loss_of(model):
        return nn.functional.cross_entropy(model(x), y)

    opt = DeepZero(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, mu=1e-4,
                   keep_ratio=0.1, mask_interval=2, seed=4)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for step in range(4):
        masks = [random_mask(p, 0.1, 4, step // 2, i) for i, p in enumerate(ref.parameters())]
        _, est = cge(lambda: loss_of(ref), list(ref.parameters()), 1e-4, masks)
        for p, g in zip(ref.parameters(), est):
            p.grad = g
        sgd.step()
        if step % 2:
            opt.step(lambda: loss_of(net))
        else:
            opt.step_sequential(net, x, lambda out: nn.functional.cross_entropy(out, y))
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)


def test_misuse_is_refused() -> None:
    net = _net()
    opt = DeepZero(list(net.parameters())[:2])
    with pytest.raises(ValueError, match="must be this optimizer's"):
        opt.step_sequential(net, _batch()[0], lambda out: out.sum())
    with pytest.raises(ValueError, match="masks has 1 entries"):
        cge_sequential(net, _batch()[0], lambda out: out.sum(), masks=[None])
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()
