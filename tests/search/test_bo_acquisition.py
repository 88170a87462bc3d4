"""LogEI against plain and high-precision formulas, UCB, and the acquisition maximizer."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import norm

from optforge.search.bo import (
    UCB,
    Categorical,
    Integer,
    LogEI,
    Real,
    SearchSpace,
    Surrogate,
    log_expected_improvement,
    optimize_acquisition,
    upper_confidence_bound,
)
from optforge.search.bo.acquisition import log_h


def _log_h_mp(u: float) -> float:
    # phi(u) + u Phi(u) cancels to ~u^-2 relative: carry enough digits
    with mpmath.workdps(40 + int(4 * math.log10(1 + abs(u)))):
        u = mpmath.mpf(u)
        return float(mpmath.log(mpmath.npdf(u) + u * mpmath.ncdf(u)))


def test_log_ei_matches_plain_log_of_ei_where_ei_is_not_tiny() -> None:
    rng = np.random.default_rng(0)
    var = rng.uniform(0.01, 4.0, size=200)
    best = 0.7
    sigma = np.sqrt(var)
    mean = best + sigma * rng.uniform(-8.0, 8.0, size=200)  # EI >= sigma * 1e-16
    u = (mean - best) / sigma
    plain = np.log(sigma * (u * norm.cdf(u) + norm.pdf(u)))
    ours = log_expected_improvement(torch.from_numpy(mean), torch.from_numpy(var), best)
    np.testing.assert_allclose(ours.numpy(), plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "u", [2.0, -0.999, -1.0, -1.001, -3.0, -10.0, -38.0, -40.0, -999.0, -1001.0, -9e5, -2e6, -1e30]
)
def test_log_h_matches_high_precision_where_naive_ei_underflows(u: float) -> None:
    x = torch.tensor([u], dtype=torch.float64, requires_grad=True)
    value = log_h(x)
    assert value.item() == pytest.approx(_log_h_mp(u), rel=1e-10)
    (grad,) = torch.autograd.grad(value.sum(), x)
    # d/du log h(u) = Phi(u) / h(u)
    with mpmath.workdps(40 + int(4 * math.log10(1 + abs(u)))):
        uu = mpmath.mpf(u)
        ref = float(mpmath.ncdf(uu) / (mpmath.npdf(uu) + uu * mpmath.ncdf(uu)))
    assert grad.item() == pytest.approx(ref, rel=1e-9)


def test_log_ei_is_finite_with_gradients_where_ei_underflows() -> None:
    u = torch.tensor([-40.0, -1e10, -1e50, -1e100], dtype=torch.float64, requires_grad=True)
    naive = torch.log(
        torch.exp(-0.5 * u.detach() ** 2) / math.sqrt(2 * math.pi)
        + u.detach() * 0.5 * torch.special.erfc(-u.detach() / math.sqrt(2))
    )
    assert torch.isneginf(naive[0]) or not torch.isfinite(naive[0])  # plain EI underflows
    value = log_h(u)
    (grad,) = torch.autograd.grad(value.sum(), u)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all() and (grad > 0).all()
    # asymptote: log h(u) ~ -u^2/2 - log(sqrt(2 pi)) - 2 log|u|
    asym = -0.5 * u.detach() ** 2 - 0.5 * math.log(2 * math.pi) - 2 * torch.log(-u.detach())
    torch.testing.assert_close(value[1:].detach(), asym[1:], rtol=1e-12, atol=0)
    assert (torch.diff(value.detach()) < 0).all()  # monotone in u


class _Mock(Surrogate):
    """A fixed posterior (BoTorch-style mock): no fitting involved."""

    def __init__(self, mean_fn, var_fn) -> None:
        self.mean_fn, self.var_fn = mean_fn, var_fn

    def fit(self, X, y, rng):  # pragma: no cover - never called
        return self

    def posterior(self, x):
        return self.mean_fn(x), self.var_fn(x)

    def condition_on(self, X, y):  # pragma: no cover - never called
        return self


def test_ucb_and_logei_formulas_on_a_mock_surrogate() -> None:
    mock = _Mock(lambda x: x.sum(-1), lambda x: 0.1 + (x**2).sum(-1))
    x = torch.rand(7, 3, dtype=torch.float64)
    mean, var = x.sum(-1), 0.1 + (x**2).sum(-1)
    torch.testing.assert_close(UCB(mock, beta=2.5)(x), mean + torch.sqrt(2.5 * var))
    torch.testing.assert_close(upper_confidence_bound(mean, var, 2.5), mean + (2.5 * var).sqrt())
    sigma = var.sqrt()
    u = (mean - 1.0) / sigma
    ei = sigma * (u * torch.special.ndtr(u) + torch.exp(-0.5 * u**2) / math.sqrt(2 * math.pi))
    torch.testing.assert_close(LogEI(mock, best=1.0, var_floor=0.0)(x), torch.log(ei))
    with pytest.raises(ValueError, match=r"beta must be > 0 \(got -1.0\)"):
        UCB(mock, beta=-1.0)


def test_maximizer_finds_a_continuous_optimum() -> None:
    space = SearchSpace({"a": Real(0.0, 1.0), "b": Real(0.0, 1.0), "c": Real(0.0, 1.0)})
    target = torch.tensor([0.31, 0.77, 0.05], dtype=torch.float64)
    mock = _Mock(lambda x: -((x - target) ** 2).sum(-1), lambda x: torch.full(x.shape[:-1], 1e-4))
    x, value = optimize_acquisition(UCB(mock), space, np.random.default_rng(0), n_raw_samples=64)
    np.testing.assert_allclose(x, target.numpy(), atol=1e-5)
    assert value == pytest.approx(math.sqrt(1.96**2 * 1e-4), abs=1e-8)


def test_maximizer_enumerates_categoricals_and_snaps_integers() -> None:
    space = SearchSpace(
        {
            "x": Real(0.0, 1.0),
            "c": Categorical(["a", "b", "c"]),
            "k": Integer(0, 9),
            "big": Integer(0, 999),
        }
    )
    good_c = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    k_target = space.encode({"x": 0.0, "c": "a", "k": 7, "big": 0})[4]
    big_target = space.encode({"x": 0.0, "c": "a", "k": 0, "big": 612})[5]

    def mean(x: torch.Tensor) -> torch.Tensor:
        return (
            -((x[..., 0] - 0.4) ** 2)
            - ((x[..., 1:4] - good_c) ** 2).sum(-1)
            - (x[..., 4] - k_target) ** 2
            - (x[..., 5] - big_target) ** 2
        )

    mock = _Mock(mean, lambda x: torch.full(x.shape[:-1], 1e-6))
    # the raw samples are few on purpose: the local search must do the work
    x, _ = optimize_acquisition(UCB(mock), space, np.random.default_rng(1), n_raw_samples=8)
    config = space.decode(x)
    assert config["c"] == "c" and config["k"] == 7 and config["big"] == 612
    assert config["x"] == pytest.approx(0.4, abs=1e-5)
    np.testing.assert_array_equal(space.project(x[None])[0], x)  # a valid encoding


@pytest.mark.parametrize("maxiter", [200, 2])
def test_batched_lbfgsb_equals_independent_runs(maxiter: int) -> None:
    from scipy.optimize import minimize

    from optforge.search.bo.batched_lbfgsb import batched_lbfgsb

    rng = np.random.default_rng(0)
    centres = rng.uniform(-0.5, 1.5, size=(6, 3))  # some optima outside the box
    batch_sizes = []

    def f(X: np.ndarray, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch_sizes.append(len(X))
        d = X - centres[runs]
        return (d**2).sum(1) + (d**4).sum(1), 2 * d + 4 * d**3

    x0 = rng.random((6, 3))
    X, fx = batched_lbfgsb(f, x0, [(0.0, 1.0)] * 3, maxiter=maxiter)
    for i in range(6):
        ref = minimize(
            lambda x, c=centres[i]: (
                ((x - c) ** 2).sum() + ((x - c) ** 4).sum(),
                2 * (x - c) + 4 * (x - c) ** 3,
            ),
            x0[i],
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, 1.0)] * 3,
            options={"maxiter": maxiter},
        )
        np.testing.assert_array_equal(X[i], ref.x)  # the same run, bit for bit
        assert fx[i] == ref.fun
    assert batch_sizes[0] == 6 and len(batch_sizes) < 6 * 10  # evaluations were batched
    if maxiter == 200:
        np.testing.assert_allclose(X, np.clip(centres, 0, 1), atol=1e-5)


def test_batched_lbfgsb_propagates_errors() -> None:
    from optforge.search.bo.batched_lbfgsb import batched_lbfgsb

    def f(X: np.ndarray, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise FloatingPointError("boom")

    with pytest.raises(FloatingPointError, match="boom"):
        batched_lbfgsb(f, np.zeros((3, 2)), [(0.0, 1.0)] * 2)


def test_start_selection() -> None:
    from optforge.search.bo.acquisition import _select_starts

    vals = np.array([0.0, -1.0, 5.0, -np.inf, 4.0, 3.0])
    np.testing.assert_array_equal(
        _select_starts(vals, 3, np.random.default_rng(0), "top"), [2, 4, 5]
    )
    picked = _select_starts(vals, 4, np.random.default_rng(0), "roulette")
    assert picked[0] == 2 and len(set(picked)) == 4 and 3 not in picked  # never a -inf
    assert len(_select_starts(vals, 10, np.random.default_rng(0), "roulette")) == 5


def test_batched_lbfgsb_starts_no_threads(monkeypatch) -> None:
    # Each suggestion started 10-30 OS threads, and on a busy machine "can't start new thread"
    # crashed ask(); then a pool of parked threads cost half the acquisition time in hand-offs.
    # The runs are now driven by reverse communication in the caller's thread.
    import threading

    from optforge.search.bo.batched_lbfgsb import batched_lbfgsb

    def fg(X: np.ndarray, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ((X - 0.3) ** 2).sum(1), 2.0 * (X - 0.3)

    started = []
    original = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda t: (started.append(t), original(t)))
    many = np.random.default_rng(1).random((40, 3))  # more runs than the old pool's 32
    X, f = batched_lbfgsb(fg, many, [(0.0, 1.0)] * 3)
    assert X.shape == many.shape and np.allclose(X, 0.3, atol=1e-4)
    assert started == []
