"""The estimators against facts written plainly here (reference/zo.md §6, tests 1-3, 5, 7)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from optforge.zo import draw, forward_gradient, replay, sphere_scale, spsa
from optforge.zo.estimators import ZORecord

D = 10
H = torch.linspace(0.1, 1.0, D, dtype=torch.float64)  # diagonal Hessian


def quadratic(x):
    return 0.5 * (H * x * x).sum() + x.sum()


def true_grad(x):
    return H * x + 1


def test_fixed_direction_central_is_exact_and_forward_adds_half_eps_zHz(monkeypatch) -> None:
    # Test 1: z = 1. Central difference on a quadratic = zᵀ∇f; forward adds (ε/2)zᵀHz.
    import optforge.zo.directions as directions

    monkeypatch.setattr(directions, "_sample",
                        lambda shape, like, *a: torch.ones(shape, dtype=like.dtype))
    x = torch.linspace(-1, 1, D, dtype=torch.float64)
    eps = 1e-2
    central = spsa(lambda: quadratic(x), [x], eps=eps)
    forward = spsa(lambda: quadratic(x), [x], eps=eps, formula="forward")
    directional = float(true_grad(x).sum())
    assert math.isclose(central.coefficients[0], directional, rel_tol=1e-8)
    assert math.isclose(forward.coefficients[0], directional + eps / 2 * float(H.sum()),
                        rel_tol=1e-8)


@functools.cache
def _directions(dist, n_samples, d, seed=7):
    """n_samples directions of dimension d from ``draw``. Gaussian and Rademacher entries are
    i.i.d., so one draw of an (n_samples, d) tensor gives them; a sphere draw is normalized over
    the whole tensor, so it takes one draw per row (keys: step = row)."""
    if dist != "sphere":
        return draw(torch.zeros(n_samples, d, dtype=torch.float64), dist, seed, 0, 0, 0)
    like = torch.zeros(d, dtype=torch.float64)
    rows = []
    for k in range(n_samples):
        scale = sphere_scale([like], [0], seed, k, 0) if dist == "sphere" else 1.0
        rows.append(draw(like, dist, seed, k, 0, 0, scale))
    return torch.stack(rows)


def _estimates(fn, x, z, eps):
    """Central SPSA written plainly, batched over the rows of z: ((f(x+εz) − f(x−εz))/2ε)·z."""
    coeff = (fn(x + eps * z) - fn(x - eps * z)) / (2 * eps)
    return coeff[:, None] * z


def batched_quadratic(v):
    return 0.5 * (H * v * v).sum(-1) + v.sum(-1)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher", "sphere"])
def test_unbiased_on_a_quadratic(dist) -> None:
    # Test 2: E[ĝ] = ∇f; Monte-Carlo relative error ≈ √((d+1)/N) = 0.023 at N = 20k.
    x = torch.linspace(-1, 1, D, dtype=torch.float64)
    g = true_grad(x)
    mean = _estimates(batched_quadratic, x, _directions(dist, 20000, D), 1e-3).mean(0)
    rel = float((mean - g).norm() / g.norm())
    cos = float(mean @ g / (mean.norm() * g.norm()))
    assert rel < 0.05 and cos > 0.99, (rel, cos)


def test_cubic_estimate_is_the_gradient_of_the_smoothed_function() -> None:
    # E[SPSA] = ∇f_ε = 3x² + 3ε² on f = Σx³, not the raw 3x² (distinguishable at ε = 0.3).
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    eps = 0.3
    z = _directions("gaussian", 40000, 3)
    mean = _estimates(lambda v: (v**3).sum(-1), x, z, eps).mean(0)
    smoothed = 3 * x**2 + 3 * eps**2
    err = float((mean - smoothed).norm() / smoothed.norm())
    assert err < 0.05
    assert float((mean - 3 * x**2).norm() / smoothed.norm()) > err


@pytest.mark.parametrize(("dist", "n", "theory"), [
    ("gaussian", 1, D + 2), ("gaussian", 4, (D + 2 + 3) / 4),
    ("rademacher", 1, D), ("rademacher", 4, (D + 3) / 4),
    ("sphere", 1, D), ("sphere", 4, (D + 3) / 4),
])
def test_second_moment_law(dist, n, theory) -> None:
    # Test 3: E‖ĝ‖²/‖g‖² (MeZO Lemma 2), within 5%; n directions averaged per estimate.
    x = torch.linspace(-1, 1, D, dtype=torch.float64)
    g = true_grad(x)
    est = _estimates(batched_quadratic, x, _directions(dist, 20000, D), 1e-3)
    est = est.reshape(-1, n, D).mean(1)
    ratio = float(est.square().sum(1).mean() / g.square().sum())
    assert abs(ratio / theory - 1) < 0.05, (ratio, theory)


@pytest.mark.slow
def test_second_moment_law_through_spsa() -> None:
    # The same law through the estimator itself (Gaussian, n = 4), 6000 estimates.
    x = torch.linspace(-1, 1, D, dtype=torch.float64)
    g = true_grad(x)
    out = torch.stack([replay(spsa(lambda: quadratic(x), [x], n=4, seed=7, step=k), [x])[0]
                       for k in range(6000)])
    ratio = float(out.square().sum(1).mean() / g.square().sum())
    assert abs(ratio / ((D + 2 + 3) / 4) - 1) < 0.05


def test_spsa_coefficient_is_the_plain_formula_for_every_distribution() -> None:
    # Ties the batched statistics above to ``spsa``: same draws, same scalar.
    x = torch.linspace(-1, 1, D, dtype=torch.float64)
    for dist in ("gaussian", "rademacher", "sphere"):
        rec = spsa(lambda: quadratic(x), [x], eps=1e-3, seed=7, step=3, dist=dist)
        scale = sphere_scale([x], [0], 7, 3, 0) if dist == "sphere" else 1.0
        z = draw(x, dist, 7, 3, 0, 0, scale)[None]
        plain = _estimates(batched_quadratic, x, z, 1e-3)[0]
        torch.testing.assert_close(replay(rec, [x])[0], plain, rtol=1e-6, atol=1e-9)


def test_variance_grows_with_dimension() -> None:
    for d in (4, 16, 64):
        x = torch.ones(d, dtype=torch.float64)
        est = _estimates(lambda v: 0.5 * (v * v).sum(-1), x, _directions("gaussian", 8000, d),
                         1e-3)
        ratio = float(est.square().sum(1).mean() / d)
        assert abs(ratio / (d + 2) - 1) < 0.06, (d, ratio)


def test_replay_reproduces_the_update_and_n_directions_average() -> None:
    # Test 5: same seed, same estimate; replaying (seed, c, η) reproduces weights bitwise; the
    # mean of n single-direction estimates equals the n-direction estimate.
    x = torch.linspace(-1, 1, D, dtype=torch.float64)
    eps = 1e-3
    rec = spsa(lambda: quadratic(x), [x], eps=eps, n=3, seed=5, step=2)
    x = torch.linspace(-1, 1, D, dtype=torch.float64)  # the restore is exact to rounding only
    again = spsa(lambda: quadratic(x), [x], eps=eps, n=3, seed=5, step=2)
    assert rec == again
    est = replay(rec, [x])[0]
    singles = [ZORecord(5, 2, rec.indices, "gaussian", (1.0,), (c,), ()) for c in
               rec.coefficients]
    manual = sum(c * draw(x, "gaussian", 5, 2, j, 0) for j, c in enumerate(rec.coefficients)) / 3
    torch.testing.assert_close(est, manual, rtol=1e-12, atol=1e-12)
    assert torch.equal(replay(singles[0], [x])[0], rec.coefficients[0] * draw(x, "gaussian",
                                                                                5, 2, 0, 0))
    w = x.clone()
    for _ in range(3):
        w -= 0.1 * replay(rec, [w])[0]
    w2 = x.clone()
    for _ in range(3):
        w2 -= 0.1 * replay(ZORecord(**vars(rec)), [w2])[0]
    assert torch.equal(w, w2)


def test_directions_do_not_depend_on_order_or_other_tensors_and_spare_the_global_rng() -> None:
    a, b = torch.zeros(5), torch.zeros(3, 2)
    state = torch.get_rng_state()
    za = draw(a, "gaussian", 1, 2, 3, index=0)
    zb = draw(b, "gaussian", 1, 2, 3, index=1)
    assert torch.equal(draw(a, "gaussian", 1, 2, 3, index=0), za)
    assert not torch.equal(draw(a, "gaussian", 1, 2, 3, index=1)[:5], za)
    assert torch.equal(torch.get_rng_state(), state)
    rec = spsa(lambda: (a.sum() + b.sum()), [b, a], indices=[1, 0], seed=1, step=2)
    assert rec.indices == (1, 0) and zb.shape == b.shape


def test_restore_after_an_estimate_is_exact_to_rounding() -> None:
    # Test 4 (functional layer): +ε, −2ε, +ε in place: exact to rounding (the optimizers keep
    # fp32 masters for half dtypes; see test_mezo).
    for dtype, tol in ((torch.float64, 1e-15), (torch.float32, 1e-6)):
        x = torch.randn(1000, dtype=dtype)
        before = x.clone()
        spsa(lambda x=x: (x**2).sum(), [x], eps=1e-3, n=4)
        assert float((x - before).norm() / before.norm()) < tol


def test_non_default_knobs_change_the_estimate_as_they_should() -> None:
    # Test 7: ε ≠ 1e-3 and n > 1 (torchopt-style bugs): central c_j on a quadratic is exactly
    # zᵀ∇f whatever ε; a linear function's forward difference too.
    x = torch.linspace(-1, 1, D, dtype=torch.float64)
    for eps in (0.5, 1e-5):
        rec = spsa(lambda: quadratic(x), [x], eps=eps, n=3, seed=2)
        for j, c in enumerate(rec.coefficients):
            z = draw(x, "gaussian", 2, 0, j, 0)
            assert math.isclose(c, float(z @ true_grad(x)), rel_tol=1e-6)


def test_forward_gradient_agrees_with_autograd() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 4, dtype=torch.float64)
    xs = torch.randn(32, 4, dtype=torch.float64)
    ys = torch.randn(32, 6, dtype=torch.float64)

    def loss(weight):
        return torch.tanh(xs @ weight.T - ys).square().mean()

    wg = w.clone().requires_grad_()
    loss(wg).backward()
    value, (est,), rec = forward_gradient(loss, [w], n=1, seed=3)
    v = draw(w, "gaussian", 3, 0, 0, 0)
    assert math.isclose(rec.coefficients[0], float((wg.grad * v).sum()), rel_tol=1e-10)
    torch.testing.assert_close(est, rec.coefficients[0] * v)
    # Averaged over many directions it approaches the gradient (cosine).
    _, (avg,), _ = forward_gradient(loss, [w], n=300, seed=4)
    assert float((avg * wg.grad).sum() / (avg.norm() * wg.grad.norm())) > 0.9
    assert math.isclose(float(value), float(loss(w)), rel_tol=1e-12)


def test_spsa_agrees_with_autograd_on_a_smooth_problem() -> None:
    # A small MLP in float64: the mean of many estimates points along the true gradient.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net.double()
    xs, ys = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    params = list(net.parameters())
    torch.nn.functional.mse_loss(net(xs), ys).backward()
    g = torch.cat([p.grad.flatten() for p in params])
    rec = spsa(lambda: torch.nn.functional.mse_loss(net(xs), ys), params, eps=1e-4, n=600)
    est = torch.cat([e.flatten() for e in replay(rec, params)])
    assert float(est @ g / (est.norm() * g.norm())) > 0.9


def test_bad_input_is_refused() -> None:
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="dist must be one of"):
        spsa(lambda: x.sum(), [x], dist="uniform")
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        spsa(lambda: x.sum(), [x], n=0)
    with pytest.raises(ValueError, match=r"eps must be > 0 \(got 0.0\)"):
        spsa(lambda: x.sum(), [x], eps=0.0)
    with pytest.raises(ValueError, match="formula must be one of"):
        spsa(lambda: x.sum(), [x], formula="backward")
    with pytest.raises(TypeError, match=r"scalar loss \(got \(3,\)\)"):
        spsa(lambda: x * 2, [x])
