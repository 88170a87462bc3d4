"""GaussianProcess against plain numpy/scipy formulas; gradients; fitting; kriging believer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from optforge.search.bo import GaussianProcess, GPHyperparameters
from optforge.search.bo.gp import kernel_input_map, log_marginal_likelihood, matern52


def _matern_np(A: np.ndarray, B: np.ndarray, ls: np.ndarray, s: float) -> np.ndarray:
    r = np.sqrt((((A[:, None, :] - B[None, :, :]) / ls) ** 2).sum(-1))
    return s * (1 + math.sqrt(5) * r + 5 / 3 * r**2) * np.exp(-math.sqrt(5) * r)


def _data(n: int = 25, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((n, d))
    y = 3.0 + 10.0 * np.sin(4 * X[:, 0]) + X[:, 1] ** 2 + 0.01 * rng.standard_normal(n)
    return X, y


HYPER = GPHyperparameters(lengthscales=np.array([0.3, 0.7, 2.0]), signal_var=1.7, noise_var=0.02)


def test_posterior_matches_plain_numpy_formula() -> None:
    X, y = _data()
    gp = GaussianProcess().set_hyperparameters(X, y, HYPER)
    xq = np.random.default_rng(1).random((40, 3))
    mean, var = gp.posterior(torch.from_numpy(xq))

    mu, sd = y.mean(), y.std()
    z = (y - mu) / sd
    C = _matern_np(X, X, HYPER.lengthscales, HYPER.signal_var) + HYPER.noise_var * np.eye(len(X))
    Kq = _matern_np(xq, X, HYPER.lengthscales, HYPER.signal_var)
    ref_mean = mu + sd * Kq @ np.linalg.solve(C, z)
    ref_var = sd**2 * (HYPER.signal_var - np.einsum("ij,ji->i", Kq, np.linalg.solve(C, Kq.T)))
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-8)
    np.testing.assert_allclose(var.numpy(), ref_var, rtol=1e-8)
    # batch shapes are kept
    m2, v2 = gp.posterior(torch.from_numpy(xq.reshape(4, 10, 3)))
    assert m2.shape == v2.shape == (4, 10)
    np.testing.assert_allclose(m2.reshape(-1).numpy(), mean.numpy(), rtol=1e-12)


def test_log_marginal_likelihood_matches_scipy() -> None:
    X, y = _data(n=15)
    z = (y - y.mean()) / y.std()
    rho = torch.tensor(1.0 / HYPER.lengthscales**2)
    lml = log_marginal_likelihood(
        torch.from_numpy(X),
        torch.from_numpy(z),
        rho,
        torch.tensor(1.7, dtype=torch.float64),
        torch.tensor(0.02, dtype=torch.float64),
    )
    C = _matern_np(X, X, HYPER.lengthscales, 1.7) + 0.02 * np.eye(len(X))
    ref = multivariate_normal(mean=np.zeros(len(X)), cov=C).logpdf(z)
    assert float(lml) == pytest.approx(ref, rel=1e-10)


def _assert_gradient_matches_autograd_and_fd(gp: GaussianProcess, theta: np.ndarray) -> None:
    value, grad = gp.objective_and_grad(theta)
    t = torch.from_numpy(theta).requires_grad_(True)
    auto_value = gp.objective(t)
    (auto_grad,) = torch.autograd.grad(auto_value, t)
    assert value == pytest.approx(float(auto_value.detach()), rel=1e-10)
    np.testing.assert_allclose(grad, auto_grad.numpy(), rtol=1e-8, atol=1e-9)
    h = 1e-6
    fd = np.array(
        [
            (gp.objective_and_grad(theta + h * e)[0] - gp.objective_and_grad(theta - h * e)[0])
            / (2 * h)
            for e in np.eye(len(theta))
        ]
    )
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)
    if gp.deterministic_objective:
        assert grad[-1] == 0.0  # the noise is not a free parameter


@pytest.mark.parametrize("deterministic", [False, True])
def test_objective_gradient_matches_finite_differences_and_autograd(deterministic: bool) -> None:
    X, y = _data(n=20)
    gp = GaussianProcess(deterministic_objective=deterministic).set_hyperparameters(X, y, HYPER)
    _assert_gradient_matches_autograd_and_fd(gp, np.array([0.3, -1.2, 0.8, 0.5, -2.0]))


def test_fit_finds_relevant_dimensions_and_improves_the_objective() -> None:
    X, y = _data(n=40)  # y depends strongly on x0, weakly on x1, not at all on x2
    gp = GaussianProcess().fit(X, y, rng=np.random.default_rng(0))
    ls = gp.hyperparameters.lengthscales
    assert ls[0] < ls[1] < ls[2]
    default_value = GaussianProcess()
    default_value._set_data(X, y)
    v_default, _ = default_value.objective_and_grad(default_value._default_theta(3))
    v_fit, g_fit = default_value.objective_and_grad(gp._theta)
    assert v_fit > v_default + 10
    assert np.abs(g_fit).max() < 0.1  # a stationary point (gtol 1e-2 on the scaled problem)
    # the fit interpolates the (nearly noiseless) data
    mean, _ = gp.posterior(torch.from_numpy(X))
    np.testing.assert_allclose(mean.numpy(), y, atol=0.05 * y.std())


def test_fit_is_deterministic_given_rng_and_warm_starts() -> None:
    X, y = _data(n=30)
    a = GaussianProcess().fit(X, y, rng=np.random.default_rng(5))
    b = GaussianProcess().fit(X, y, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a._theta, b._theta)
    state = a.state_dict()
    c = GaussianProcess()
    c.load_state_dict(state)
    np.testing.assert_array_equal(c._theta, a._theta)


def test_posterior_gradient_is_finite_at_training_points() -> None:
    X, y = _data()
    gp = GaussianProcess().set_hyperparameters(X, y, HYPER)
    x = torch.from_numpy(X[:3].copy()).requires_grad_(True)
    mean, var = gp.posterior(x)
    (mean.sum() + var.sum()).backward()
    assert torch.isfinite(x.grad).all()
    r2 = torch.zeros(3, requires_grad=True)
    matern52(r2).sum().backward()
    np.testing.assert_allclose(r2.grad.numpy(), -5 / 6)


def test_condition_on_is_the_kriging_believer() -> None:
    X, y = _data()
    gp = GaussianProcess().set_hyperparameters(X, y, HYPER)
    xp = np.array([[0.5, 0.5, 0.5], [0.1, 0.9, 0.2]])
    with torch.no_grad():
        believed, var_before = gp.posterior(torch.from_numpy(xp))
    new = gp.condition_on(xp, believed.numpy())
    xq = torch.from_numpy(np.random.default_rng(2).random((30, 3)))
    m0, v0 = gp.posterior(xq)
    m1, v1 = new.posterior(xq)
    np.testing.assert_allclose(m1.numpy(), m0.numpy(), rtol=1e-7, atol=1e-7)  # mean unchanged
    assert (v1 <= v0 + 1e-12).all()
    _, v_at = new.posterior(torch.from_numpy(xp))
    # where a value is believed, only about the noise variance is left
    assert (v_at < var_before).all()
    assert (v_at <= HYPER.noise_var * gp.y_std**2).all()
    assert gp.posterior(xq)[1].numpy() == pytest.approx(v0.numpy())  # the original is unchanged


def test_errors() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        GaussianProcess().posterior(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"n_restarts must be >= 1 \(got 0\)"):
        GaussianProcess(n_restarts=0)
    with pytest.raises(ValueError, match=r"X must have shape \(n, d\)"):
        GaussianProcess().fit(np.zeros((3, 2)), np.zeros(2), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="X and y must be finite"):
        GaussianProcess().fit(np.zeros((2, 2)), np.array([0.0, np.nan]), np.random.default_rng())
    with pytest.raises(ValueError, match=r"lengthscales must be positive with shape \(3,\)"):
        bad = GPHyperparameters(np.array([1.0, -1.0, 1.0]), 1.0, 0.1)
        GaussianProcess().set_hyperparameters(*_data(), bad)


def test_fit_is_bounded_where_the_signal_variance_underflows() -> None:
    # Ackley-5D with deterministic_objective=True (seed 4, evaluation 61) drove log s to about
    # -800 in a line search: s underflowed to 0 and math.log(0) raised "math domain error".
    X, y = _data()
    gp = GaussianProcess(deterministic_objective=True).set_hyperparameters(X, y, HYPER)
    theta = np.concatenate([np.zeros(3), [-800.0, 0.0]])
    value, grad = gp.objective_and_grad(theta)  # raised ValueError before
    assert np.isfinite(grad).all() and not math.isnan(value)
    # A fit keeps every raw parameter inside its box, whatever the data.
    flat = np.concatenate([X, X + 1e-9])
    gp.fit(flat, np.concatenate([y, y]), rng=np.random.default_rng(4))
    assert np.all(np.abs(gp._theta[:4]) <= math.log(1e6) + 1e-9)


def test_fit_starts_from_the_previous_fit_and_the_default(monkeypatch) -> None:
    # A third, random start cost a third of the fit time per suggestion and changed no result
    # systematically; the default is now the previous fit and the default parameters.
    import optforge.search.bo.gp as gp_module

    starts = []
    real_minimize = gp_module.minimize

    def recording_minimize(fun, x0, **kwargs):
        starts.append(np.array(x0))
        return real_minimize(fun, x0, **kwargs)

    monkeypatch.setattr(gp_module, "minimize", recording_minimize)
    X, y = _data(n=30)
    gp = GaussianProcess()
    gp.fit(X[:20], y[:20], rng=np.random.default_rng(0))
    assert len(starts) == 1  # nothing to warm-start from: the default alone
    previous = gp._theta.copy()
    starts.clear()
    gp.fit(X, y, rng=np.random.default_rng(0))
    assert len(starts) == 2
    np.testing.assert_array_equal(starts[0], previous)
    np.testing.assert_array_equal(starts[1], gp._default_theta(3))
    starts.clear()
    GaussianProcess(n_restarts=3).fit(X, y, rng=np.random.default_rng(0))
    assert len(starts) == 3  # the default and two random perturbations of it


# ---------------------------------------------------------------- Hamming categorical kernel
# Encoded layout: a real, a 3-way categorical's one-hot block (columns 1-3), a real.
BLOCKS = [[1, 2, 3]]


def _mixed_data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.zeros((n, 5))
    X[:, 0], X[:, 4] = rng.random(n), rng.random(n)
    cat = rng.integers(0, 3, n)
    X[np.arange(n), 1 + cat] = 1.0
    y = np.sin(5 * X[:, 0]) + np.array([0.0, 1.0, -0.5])[cat] + 0.1 * X[:, 4]
    return X, y


def test_hamming_kernel_input_map_and_distance_of_a_known_pair() -> None:
    P = kernel_input_map(5, BLOCKS)
    # inputs: column 0, the block (where its first column is), column 4
    expected = np.array([[1, 0, 0], [0, 0.5, 0], [0, 0.5, 0], [0, 0.5, 0], [0, 0, 1]])
    np.testing.assert_array_equal(P, expected)
    a = np.array([0.2, 1.0, 0.0, 0.0, 0.9])  # choice 0
    b = np.array([0.5, 0.0, 0.0, 1.0, 0.9])  # choice 2
    np.testing.assert_array_equal((a - b) ** 2 @ P, [0.09, 1.0, 0.0])  # Hamming 1, not 2
    np.testing.assert_array_equal((a - a) ** 2 @ P, [0.0, 0.0, 0.0])
    # r2 with lengthscales (0.5, 2, 1): 0.09 / 0.25 + 1 / 4
    gp = GaussianProcess(categorical_blocks=BLOCKS)
    X, y = _mixed_data()
    gp.set_hyperparameters(X, y, GPHyperparameters(np.array([0.5, 2.0, 1.0]), 1.0, 0.1))
    r2 = float(((a - b) ** 2) @ gp._rho_cols.numpy())
    assert r2 == pytest.approx(0.09 / 0.25 + 1 / 4, rel=1e-14)
    assert gp.hyperparameters.lengthscales.shape == (3,)
    # per encoded column, a block's columns carry sqrt(2) l (their weight 1/2)
    np.testing.assert_allclose(gp.lengthscales, [0.5, 2 * 2**0.5, 2 * 2**0.5, 2 * 2**0.5, 1.0])


def test_hamming_posterior_matches_plain_numpy_formula_and_tied_one_hot() -> None:
    X, y = _mixed_data()
    ls, s, noise = np.array([0.3, 0.8, 1.5]), 1.3, 0.05
    gp = GaussianProcess(categorical_blocks=BLOCKS).set_hyperparameters(
        X, y, GPHyperparameters(ls, s, noise)
    )
    Xq, _ = _mixed_data(n=30, seed=1)
    mean, var = gp.posterior(torch.from_numpy(Xq))

    def k(A: np.ndarray, B: np.ndarray) -> np.ndarray:
        d0 = (A[:, None, 0] - B[None, :, 0]) ** 2 / ls[0] ** 2
        dc = (A[:, None, 1:4] != B[None, :, 1:4]).any(-1) / ls[1] ** 2  # Hamming
        d4 = (A[:, None, 4] - B[None, :, 4]) ** 2 / ls[2] ** 2
        r = np.sqrt(d0 + dc + d4)
        return s * (1 + math.sqrt(5) * r + 5 / 3 * r**2) * np.exp(-math.sqrt(5) * r)

    mu, sd = y.mean(), y.std()
    C = k(X, X) + noise * np.eye(len(X))
    Kq = k(Xq, X)
    np.testing.assert_allclose(mean.numpy(), mu + sd * Kq @ np.linalg.solve(C, (y - mu) / sd))
    ref_var = sd**2 * (s - np.einsum("ij,ji->i", Kq, np.linalg.solve(C, Kq.T)))
    np.testing.assert_allclose(var.numpy(), ref_var, rtol=1e-8, atol=1e-12)
    # the one-hot kernel with the block's lengthscales tied at sqrt(2) l is the same model
    tied = np.array([ls[0], *[ls[1] * 2**0.5] * 3, ls[2]])
    onehot = GaussianProcess().set_hyperparameters(X, y, GPHyperparameters(tied, s, noise))
    m1, v1 = onehot.posterior(torch.from_numpy(Xq))
    np.testing.assert_allclose(m1.numpy(), mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(v1.numpy(), var.numpy(), rtol=1e-10, atol=1e-14)


def test_hamming_objective_gradient_and_fit() -> None:
    X, y = _mixed_data(n=30)
    gp = GaussianProcess(categorical_blocks=BLOCKS)
    gp.set_hyperparameters(X, y, GPHyperparameters(np.array([0.3, 0.8, 1.5]), 1.3, 0.05))
    # 3 lengthscales (the block's one among them), s, noise
    _assert_gradient_matches_autograd_and_fd(gp, np.array([0.3, -1.2, 0.8, 0.5, -2.0]))
    gp.fit(X, y, rng=np.random.default_rng(0))
    assert gp._theta.shape == (5,)
    ls = gp.hyperparameters.lengthscales
    assert ls[0] < ls[2]  # y varies fast in column 0, barely in column 4
    mean, _ = gp.posterior(torch.from_numpy(X))
    np.testing.assert_allclose(mean.numpy(), y, atol=0.05 * y.std())  # the category effect fits


def test_hamming_errors() -> None:
    with pytest.raises(ValueError, match="non-empty, disjoint blocks"):
        GaussianProcess(categorical_blocks=[[1, 2], [2, 3]])
    with pytest.raises(ValueError, match="non-empty, disjoint blocks"):
        GaussianProcess(categorical_blocks=[[]])
    with pytest.raises(ValueError, match=r"categorical_blocks column must be >= 0"):
        GaussianProcess(categorical_blocks=[[-1, 0]])
    with pytest.raises(TypeError, match=r"categorical_blocks column must be an int \(got float"):
        GaussianProcess(categorical_blocks=[[1.5, 2]])
    assert GaussianProcess(categorical_blocks=[np.arange(2, 4)]).categorical_blocks == ((2, 3),)
    with pytest.raises(TypeError, match="categorical_blocks must be a sequence"):
        GaussianProcess(categorical_blocks=3)
    X, y = _mixed_data()
    with pytest.raises(ValueError, match="name column 7, but the inputs have 5 columns"):
        GaussianProcess(categorical_blocks=[[6, 7]]).fit(X, y, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"lengthscales must be positive with shape \(3,\)"):
        GaussianProcess(categorical_blocks=BLOCKS).set_hyperparameters(
            X, y, GPHyperparameters(np.ones(5), 1.0, 0.1)
        )
