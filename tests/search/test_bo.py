"""BayesianOptimization: ask/tell contract, Sobol start, pending points, resume, errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from optforge.search import Candidate, SearchAlgorithm, run
from optforge.search.bo import (
    BayesianOptimization,
    Categorical,
    DeepEnsemble,
    Integer,
    Real,
    SearchSpace,
)

BRANIN_MIN = 0.397887357729738


def branin(c: dict) -> float:
    x1, x2 = c["x1"], c["x2"]
    b, k, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + k * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


BRANIN = SearchSpace({"x1": Real(-5.0, 10.0), "x2": Real(0.0, 15.0)})
MIXED = SearchSpace(
    {
        "x": Real(-2.0, 2.0),
        "lr": Real(1e-4, 1.0, log=True),
        "k": Integer(0, 5),
        "act": Categorical(["relu", "tanh", "gelu"]),
    }
)


def mixed_objective(c: dict) -> float:
    bonus = {"relu": 0.0, "tanh": 0.5, "gelu": -0.3}[c["act"]]
    return (c["x"] - 0.7) ** 2 + (math.log10(c["lr"]) + 2.0) ** 2 + 0.1 * (c["k"] - 3) ** 2 + bonus


def _drive(bo: BayesianOptimization, objective, n: int) -> None:
    for _ in range(n):
        (c,) = bo.ask(1)
        bo.tell([c.id], [objective(c.value)])


def _values(cands: list[Candidate]) -> list[dict]:
    return [c.value for c in cands]


def test_is_a_search_algorithm_and_starts_with_the_sobol_design() -> None:
    bo = BayesianOptimization(MIXED, seed=7, n_initial=5)
    assert isinstance(bo, SearchAlgorithm) and bo.maximize is False
    cands = bo.ask(5)
    assert [c.id for c in cands] == [0, 1, 2, 3, 4] and bo.pending == [0, 1, 2, 3, 4]
    expected = [MIXED.decode(u) for u in MIXED.sobol(5, seed=7)]
    assert _values(cands) == expected


def test_gp_bo_beats_random_search_on_branin() -> None:
    bo = BayesianOptimization(BRANIN, seed=0)
    _drive(bo, branin, 25)
    rng = np.random.default_rng(0)
    rand = min(branin({"x1": -5 + 15 * a, "x2": 15 * b}) for a, b in rng.random((25, 2)))
    regret = bo.best[1] - BRANIN_MIN
    assert regret < 0.2 and regret < (rand - BRANIN_MIN) / 10  # Optuna GP at 25: 0.099


def test_mixed_space_suggestions_are_valid_and_improve() -> None:
    bo = BayesianOptimization(MIXED, seed=1, n_initial=6, acquisition="ucb")
    _drive(bo, mixed_objective, 16)
    for config, _ in bo.observations:
        MIXED.encode(config)  # raises if invalid
    initial_best = min(v for _, v in bo.observations[:6])
    assert bo.best[1] < initial_best


def test_maximize_flips_the_direction() -> None:
    bo = BayesianOptimization(BRANIN, seed=0, maximize=True, n_initial=5)
    _drive(bo, lambda c: -branin(c), 12)
    assert bo.best[1] == max(v for _, v in bo.observations)
    assert -bo.best[1] - BRANIN_MIN < 5.0


def _told(seed: int = 3, n: int = 8) -> BayesianOptimization:
    bo = BayesianOptimization(BRANIN, seed=seed, n_initial=6)
    _drive(bo, branin, n)
    return bo


def test_pending_points_change_the_next_suggestion() -> None:
    state = _told().state_dict()
    with_pending = BayesianOptimization(BRANIN, seed=3, n_initial=6)
    with_pending.load_state_dict(state)
    (first,) = with_pending.ask(1)
    (second,) = with_pending.ask(1)  # `first` is pending, believed at its posterior mean
    without = BayesianOptimization(BRANIN, seed=3, n_initial=6)
    without.load_state_dict(state)
    (again,) = without.ask(1)
    assert again.value == first.value  # same state, same suggestion
    without.discard([again.id])
    (alone,) = without.ask(1)  # same rng stream as `second`, but nothing pending
    u = BRANIN.encode
    assert np.abs(u(alone.value) - u(first.value)).max() < 1e-3  # the optimum stays put
    assert np.abs(u(second.value) - u(first.value)).max() > 1e-2  # pending pushes it away


def test_batch_ask_gives_distinct_points_and_partial_tells_work() -> None:
    bo = _told()
    cands = bo.ask(3)
    enc = np.stack([BRANIN.encode(c.value) for c in cands])
    assert min(np.abs(enc[i] - enc[j]).max() for i in range(3) for j in range(i)) > 1e-3
    bo.tell([cands[2].id], [branin(cands[2].value)])  # any order, any subset
    assert bo.pending == [cands[0].id, cands[1].id]
    bo.discard([cands[0].id])
    assert bo.pending == [cands[1].id]
    assert bo.n_observations == 9


@pytest.mark.parametrize("surrogate", ["gp", "gp-hamming", "ensemble"])
def test_resume_gives_the_same_next_asks(surrogate: str) -> None:
    def make() -> BayesianOptimization:
        s = (
            "gp"
            if surrogate.startswith("gp")
            else DeepEnsemble(n_members=3, hidden=(16,), steps=40, condition_steps=10)
        )
        kernel = "hamming" if surrogate == "gp-hamming" else "onehot"
        return BayesianOptimization(
            MIXED, seed=11, n_initial=4, surrogate=s, n_raw_samples=256, categorical_kernel=kernel
        )

    reference = make()
    _drive(reference, mixed_objective, 6)
    pending = reference.ask(2)  # resume with pending points in flight
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.pending == [c.id for c in pending]
    for bo in (reference, resumed):
        bo.tell([pending[1].id], [mixed_objective(pending[1].value)])
    a, b = reference.ask(2), resumed.ask(2)
    assert [c.id for c in a] == [c.id for c in b]
    assert _values(a) == _values(b)
    for bo in (reference, resumed):
        bo.tell([c.id for c in a], [mixed_objective(c.value) for c in a])
    assert _values(reference.ask(1)) == _values(resumed.ask(1))


def test_tell_rejects_bad_input_and_leaves_state_untouched() -> None:
    bo = BayesianOptimization(BRANIN, seed=0, n_initial=3)
    cands = bo.ask(2)
    ids = [c.id for c in cands]
    before = bo.state_dict()
    with pytest.raises(ValueError, match=r"results\[1\] must be finite \(got nan\)"):
        bo.tell(ids, [1.0, float("nan")])
    with pytest.raises(ValueError, match=r"must be finite \(got inf\)"):
        bo.tell(ids[:1], [math.inf])
    with pytest.raises(ValueError, match="id 99 is not pending"):
        bo.tell([99], [1.0])
    with pytest.raises(ValueError, match="one entry per id"):
        bo.tell(ids, [1.0])
    with pytest.raises(TypeError, match="must be a real number"):
        bo.tell(ids[:1], ["1.0"])
    after = bo.state_dict()
    assert after["pending_ids"].tolist() == before["pending_ids"].tolist() == ids
    assert after["observed_y"].numel() == 0
    bo.tell(ids[:1], [2.0])
    with pytest.raises(ValueError, match=f"id {ids[0]} is not pending"):
        bo.tell(ids[:1], [2.0])  # told twice
    with pytest.raises(ValueError, match="id 42 is not pending"):
        bo.discard([42])
    with pytest.raises(ValueError, match="must be finite"):
        bo.check_result(float("nan"))


def test_constructor_and_state_errors() -> None:
    with pytest.raises(ValueError, match=r"surrogate must be one of \['gp', 'ensemble'\]"):
        BayesianOptimization(BRANIN, surrogate="rf")
    with pytest.raises(ValueError, match=r"acquisition must be one of \['logei', 'ucb'\]"):
        BayesianOptimization(BRANIN, acquisition="ei")
    with pytest.raises(ValueError, match=r"n_initial must be >= 1 \(got 0\)"):
        BayesianOptimization(BRANIN, n_initial=0)
    with pytest.raises(ValueError, match=r"n must be >= 1 \(got 0\)"):
        BayesianOptimization(BRANIN).ask(0)
    with pytest.raises(TypeError, match="space must be a SearchSpace"):
        BayesianOptimization({"x": Real(0.0, 1.0)})
    state = BayesianOptimization(BRANIN, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"different space .*, seed \(saved 0, here 1\)"):
        BayesianOptimization(MIXED, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="version 1"):
        BayesianOptimization(BRANIN).load_state_dict({"version": 0})


def test_observe_adds_external_data_and_advances_the_design() -> None:
    bo = BayesianOptimization(BRANIN, seed=2, n_initial=4)
    design = [BRANIN.decode(u) for u in BRANIN.sobol(4, seed=2)]
    bo.observe(design[:2], [branin(c) for c in design[:2]])
    assert _values(bo.ask(2)) == design[2:]  # continues the sequence, no repeats
    with pytest.raises(ValueError, match=r"values\[0\] must be finite"):
        bo.observe(design[:1], [float("nan")])
    with pytest.raises(ValueError, match=r"dimension 'x1': value must be in"):
        bo.observe([{"x1": 99.0, "x2": 1.0}], [1.0])


def test_run_drives_bo_inline() -> None:
    bo = BayesianOptimization(BRANIN, seed=0, n_initial=4, batch_size=2)
    history = run(bo, branin, budget=10, executor="inline")
    assert history.n_evaluations == 10 and bo.n_observations == 10
    assert history.best.result == pytest.approx(bo.best[1])


def test_deep_ensemble_surrogate() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((24, 1)) * 0.5  # data only on the left half
    y = np.sin(6 * X[:, 0])
    ens = DeepEnsemble(n_members=5, hidden=(32, 32), steps=300, lr=1e-2)
    ens.fit(X, (y - y.mean()) / y.std(), rng=np.random.default_rng(1))
    grid = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None]
    mean, var = ens.posterior(grid)
    assert mean.shape == var.shape == (11,) and (var >= 0).all()
    assert var[8:].mean() > 3 * var[:5].mean()  # more uncertain away from the data
    again = DeepEnsemble(n_members=5, hidden=(32, 32), steps=300, lr=1e-2)
    again.fit(X, (y - y.mean()) / y.std(), rng=np.random.default_rng(1))
    torch.testing.assert_close(again.posterior(grid)[0], mean, rtol=0, atol=0)
    believed = ens.condition_on(np.array([[0.9]]), np.array([0.0]))
    assert believed.posterior(grid[9:10])[1] < var[9]
    with pytest.raises(ValueError, match=r"n_members must be >= 2 \(got 1\)"):
        DeepEnsemble(n_members=1)
    with pytest.raises(ValueError, match=r"train_fraction must be in \(0, 1\] \(got 1.5\)"):
        DeepEnsemble(train_fraction=1.5)


def test_discrete_only_space() -> None:
    space = SearchSpace({"c": Categorical(["a", "b", "c", "d"]), "k": Integer(1, 40, log=True)})
    bo = BayesianOptimization(space, seed=0, n_initial=4)

    def objective(c: dict) -> float:
        return "abcd".index(c["c"]) + abs(math.log(c["k"] / 7))

    _drive(bo, objective, 12)
    assert bo.best[0]["c"] == "a"
    assert all(1 <= config["k"] <= 40 for config, _ in bo.observations)


def test_suggestions_run_single_threaded_and_restore_the_thread_counts() -> None:
    # OpenBLAS threads (scipy's L-BFGS-B) spun against torch's on a busy machine: 10 tiny
    # batched runs took up to 5 s instead of 1 ms. ask() now holds BLAS and torch to one thread
    # and restores both afterwards.
    from threadpoolctl import threadpool_info

    from optforge.search.bo import GaussianProcess

    seen = []

    class Recording(GaussianProcess):
        def fit(self, X, y, rng):
            blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            seen.append((torch.get_num_threads(), blas))
            return super().fit(X, y, rng)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bo = BayesianOptimization(BRANIN, surrogate=Recording(), n_initial=3, seed=0)
        _drive(bo, branin, 4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and all(t == 1 and set(b) <= {1} for t, b in seen)


def test_hamming_kernel_fits_and_asks_on_a_mixed_space() -> None:
    bo = BayesianOptimization(MIXED, seed=1, n_initial=6, categorical_kernel="hamming")
    _drive(bo, mixed_objective, 14)
    for config, _ in bo.observations:
        MIXED.encode(config)  # raises if invalid
    assert bo.best[1] < min(v for _, v in bo.observations[:6])
    # x, lr, k and one lengthscale for the 3-way categorical (one-hot: 3)
    assert bo._surrogate.hyperparameters.lengthscales.shape == (4,)
    assert BayesianOptimization(MIXED, seed=1)._surrogate.categorical_blocks == ()


def test_categorical_kernel_is_part_of_the_checkpointed_configuration() -> None:
    bo = BayesianOptimization(MIXED, seed=1, n_initial=3, categorical_kernel="hamming")
    _drive(bo, mixed_objective, 4)
    state = bo.state_dict()
    with pytest.raises(ValueError, match=r"categorical_kernel \(saved 'hamming', here 'onehot'\)"):
        BayesianOptimization(MIXED, seed=1, n_initial=3).load_state_dict(state)
    # states written before the option existed were one-hot
    old = BayesianOptimization(MIXED, seed=1, n_initial=3)
    _drive(old, mixed_objective, 4)
    state = old.state_dict()
    del state["config"]["categorical_kernel"]
    BayesianOptimization(MIXED, seed=1, n_initial=3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"categorical_kernel \(saved 'onehot', here 'hamming'"):
        BayesianOptimization(
            MIXED, seed=1, n_initial=3, categorical_kernel="hamming"
        ).load_state_dict(state)
    with pytest.raises(
        ValueError, match=r"categorical_kernel must be one of \['onehot', 'hamming'\]"
    ):
        BayesianOptimization(MIXED, categorical_kernel="index")


def test_hamming_kernel_leaves_a_space_without_categoricals_bit_identical() -> None:
    a = BayesianOptimization(BRANIN, seed=4, n_initial=5)
    b = BayesianOptimization(BRANIN, seed=4, n_initial=5, categorical_kernel="hamming")
    _drive(a, branin, 9)
    _drive(b, branin, 9)
    np.testing.assert_array_equal(a._X, b._X)
