"""SearchSpace: encoding round trips (hypothesis), validity of decoded points, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optforge.search.bo import Categorical, Integer, Real, SearchSpace

SPACE = SearchSpace(
    {
        "lr": Real(1e-5, 1.0, log=True),
        "momentum": Real(-0.5, 0.99),
        "layers": Integer(1, 8),
        "width": Integer(16, 4096, log=True),
        "act": Categorical(["relu", "gelu", "tanh"]),
        "flag": Categorical([True, False]),
        "big": Integer(-100, 100),
    }
)


def _config_strategy(space: SearchSpace) -> st.SearchStrategy:
    parts = {}
    for name, dim, _ in space.items():
        if isinstance(dim, Real):
            parts[name] = st.floats(dim.low, dim.high, allow_nan=False)
        elif isinstance(dim, Integer):
            parts[name] = st.integers(dim.low, dim.high)
        else:
            parts[name] = st.sampled_from(dim.choices)
    return st.fixed_dictionaries(parts)


def _assert_valid(space: SearchSpace, config: dict) -> None:
    assert list(config) == space.names
    for name, dim, _ in space.items():
        v = config[name]
        if isinstance(dim, Real):
            assert isinstance(v, float) and dim.low <= v <= dim.high
        elif isinstance(dim, Integer):
            assert isinstance(v, int) and dim.low <= v <= dim.high
        else:
            assert v in dim.choices


@settings(max_examples=200, deadline=None)
@given(_config_strategy(SPACE))
def test_encode_decode_round_trip(config: dict) -> None:
    u = SPACE.encode(config)
    assert u.shape == (SPACE.encoded_dim,) and ((u >= 0) & (u <= 1)).all()
    back = SPACE.decode(u)
    for name, dim, _ in SPACE.items():
        if isinstance(dim, Real):
            assert math.isclose(back[name], config[name], rel_tol=1e-12, abs_tol=1e-15)
        else:
            assert back[name] == config[name] and type(back[name]) is type(config[name])
    # an encoding is a fixed point of project()
    np.testing.assert_array_equal(SPACE.project(u[None])[0], u)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=SPACE.encoded_dim, max_size=SPACE.encoded_dim))
def test_any_point_of_the_cube_decodes_to_a_valid_config(raw: list[float]) -> None:
    u = np.array(raw)
    config = SPACE.decode(u)
    _assert_valid(SPACE, config)
    p = SPACE.project(u[None])[0]
    assert SPACE.decode(p) == config  # projecting does not change the decoded config
    np.testing.assert_allclose(SPACE.encode(config), p, rtol=0, atol=1e-12)


def test_sobol_design_is_valid_seeded_and_continues() -> None:
    U = SPACE.sobol(16, seed=3)
    np.testing.assert_array_equal(SPACE.project(U), U)
    np.testing.assert_array_equal(SPACE.sobol(16, seed=3), U)
    np.testing.assert_array_equal(SPACE.sobol(6, seed=3, skip=10), U[10:])
    assert not np.array_equal(SPACE.sobol(16, seed=4), U)


def test_integer_values_get_equal_shares() -> None:
    space = SearchSpace({"k": Integer(2, 5)})
    U = space.from_unit((np.arange(4000)[:, None] + 0.5) / 4000)
    values = [space.decode(u)["k"] for u in U]
    np.testing.assert_array_equal(np.bincount(values)[2:], [1000] * 4)


def test_categorical_is_one_hot_and_integer_is_cell_centred() -> None:
    space = SearchSpace({"c": Categorical(["a", "b", "c"]), "k": Integer(0, 3)})
    np.testing.assert_array_equal(space.encode({"c": "b", "k": 2}), [0, 1, 0, 2.5 / 4])
    assert space.encoded_dim == 4
    assert space.decode(np.array([0.2, 0.1, 0.7, 0.99]))["c"] == "c"
    assert space.categorical_blocks() == [[0, 1, 2]]
    two = SearchSpace(
        {
            "x": Real(0, 1),
            "c": Categorical(["a", "b"]),
            "k": Integer(0, 3),
            "d": Categorical([1, 2, 3]),
        }
    )
    assert two.categorical_blocks() == [[1, 2], [4, 5, 6]]


@pytest.mark.parametrize(
    ("dims", "match"),
    [
        ({"lr": Real(1.0, 1.0)}, r"'lr': Real needs low < high \(got low=1.0, high=1.0\)"),
        ({"lr": Real(2.0, 1.0)}, r"dimension 'lr': Real needs low < high"),
        ({"lr": Real(0.0, 1.0, log=True)}, r"dimension 'lr': log=True needs low > 0 \(got low=0.0"),
        ({"n": Integer(5, 4)}, r"dimension 'n': Integer needs low <= high \(got low=5, high=4\)"),
        ({"n": Integer(0, 4, log=True)}, r"dimension 'n': log=True needs low >= 1"),
        ({"act": Categorical([])}, r"dimension 'act': Categorical needs at least one choice"),
        ({"x": Real(0.0, math.inf)}, r"dimension 'x': high must be finite"),
        ({}, r"at least one dimension"),
    ],
)
def test_invalid_dimensions_name_the_dimension(dims: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SearchSpace(dims)


def test_type_errors() -> None:
    with pytest.raises(TypeError, match=r"dimension 'n': Integer low must be an int"):
        SearchSpace({"n": Integer(0.5, 3)})
    with pytest.raises(TypeError, match=r"dimension 'x' must be Real, Integer or Categorical"):
        SearchSpace({"x": (0, 1)})
    with pytest.raises(TypeError, match=r"Categorical choices must be a sequence"):
        Categorical("abc")


def test_encode_rejects_bad_configs() -> None:
    good = {
        "lr": 1e-3,
        "momentum": 0.9,
        "layers": 2,
        "width": 64,
        "act": "relu",
        "flag": True,
        "big": 0,
    }
    with pytest.raises(ValueError, match=r"missing \['big'\]"):
        SPACE.encode({k: v for k, v in good.items() if k != "big"})
    with pytest.raises(ValueError, match=r"dimension 'lr': value must be in \[1e-05, 1.0\]"):
        SPACE.encode({**good, "lr": 2.0})
    with pytest.raises(ValueError, match=r"dimension 'act': value must be one of"):
        SPACE.encode({**good, "act": "swish"})
    with pytest.raises(TypeError, match=r"dimension 'layers': value must be an int"):
        SPACE.encode({**good, "layers": 2.5})
    with pytest.raises(ValueError, match=r"u must have shape"):
        SPACE.decode(np.zeros(3))
