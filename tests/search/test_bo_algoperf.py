"""BO as a tuning strategy for AlgoPerf-format search spaces."""

from __future__ import annotations

import math

import pytest

from optforge.search.bo import (
    Categorical,
    Real,
    SearchSpace,
    search_space_from_algoperf,
    suggest_hyperparameters,
)

ALGOPERF = {
    "learning_rate": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    "one_minus_beta1": {"min": 0.01, "max": 0.5, "scaling": "log"},
    "weight_decay": {"min": 0.0, "max": 0.5, "scaling": "linear"},
    "warmup_factor": {"feasible_points": [0.05]},
    "label_smoothing": {"feasible_points": [0.0, 0.1, 0.2]},
}


def loss(c: dict) -> float:
    return (
        (math.log10(c["learning_rate"]) + 2.5) ** 2
        + (c["weight_decay"] - 0.1) ** 2
        + 0.3 * math.log10(c["one_minus_beta1"]) ** 2
        + abs(c["label_smoothing"] - 0.1)
    )


def test_space_conversion() -> None:
    space = search_space_from_algoperf(ALGOPERF)
    assert isinstance(space, SearchSpace) and space.names == list(ALGOPERF)
    assert space.dimensions["learning_rate"] == Real(1e-4, 1e-1, log=True)
    assert space.dimensions["weight_decay"] == Real(0.0, 0.5, log=False)
    assert space.dimensions["label_smoothing"] == Categorical((0.0, 0.1, 0.2))
    assert space.encoded_dim == 3 + 1 + 3


def test_suggestions_are_deterministic_continue_the_design_and_then_improve() -> None:
    history: list[tuple[dict, float]] = []
    first = suggest_hyperparameters(ALGOPERF, history, n=3, seed=0, n_initial=6)
    assert first == suggest_hyperparameters(ALGOPERF, history, n=3, seed=0, n_initial=6)
    history += [(c, loss(c)) for c in first]
    nxt = suggest_hyperparameters(ALGOPERF, history, n=3, seed=0, n_initial=6)
    # the stateless call continues the Sobol design instead of repeating it
    assert nxt == suggest_hyperparameters(ALGOPERF, [], n=6, seed=0, n_initial=6)[3:]
    history += [(c, loss(c)) for c in nxt]
    for _ in range(4):  # model-based from here
        history += [(c, loss(c)) for c in suggest_hyperparameters(ALGOPERF, history, 2, seed=0)]
    for c, _ in history:
        assert c["warmup_factor"] == 0.05 and c["label_smoothing"] in (0.0, 0.1, 0.2)
        assert 1e-4 <= c["learning_rate"] <= 1e-1
    assert min(v for _, v in history[6:]) < min(v for _, v in history[:6])


def test_bad_search_spaces_name_the_hyperparameter() -> None:
    with pytest.raises(ValueError, match="fixed-list format"):
        search_space_from_algoperf([{"learning_rate": 1e-3}])
    with pytest.raises(ValueError, match=r"hyperparameter 'lr': scaling must be one of"):
        search_space_from_algoperf({"lr": {"min": 1e-3, "max": 1e-1, "scaling": "exp"}})
    with pytest.raises(ValueError, match=r"hyperparameter 'lr' must have min and max"):
        search_space_from_algoperf({"lr": {"min": 1e-3}})
    with pytest.raises(ValueError, match=r"dimension 'lr': log=True needs low > 0"):
        search_space_from_algoperf({"lr": {"min": 0.0, "max": 1e-1, "scaling": "log"}})
    with pytest.raises(ValueError, match=r"dimension 'ls': Categorical needs at least one"):
        search_space_from_algoperf({"ls": {"feasible_points": []}})
    with pytest.raises(ValueError, match=r"values\[0\] must be finite"):
        suggest_hyperparameters(ALGOPERF, [({**_a_config()}, float("nan"))], n=1, seed=0)


def _a_config() -> dict:
    return {
        "learning_rate": 1e-3,
        "one_minus_beta1": 0.1,
        "weight_decay": 0.1,
        "warmup_factor": 0.05,
        "label_smoothing": 0.1,
    }
