"""AlgoPerf search spaces: parsing, validation messages, mapping of Halton points, studies."""

from __future__ import annotations

import json
import math

import pytest

from optforge.bench.halton import generate_sequence
from optforge.bench.search_space import (
    SearchSpaceError,
    load_search_space,
    parse_search_space,
)

SPACE = {
    "learning_rate": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    "warmup": {"min": 0.0, "max": 0.2, "scaling": "linear"},
    "batch": {"feasible_points": [16, 32, 64]},
}


def test_sample_maps_halton_points_like_the_reference():
    space = parse_search_space(SPACE)
    got = space.sample(6, seed=3)
    u = generate_sequence(6, 3, seed=3)
    for cfg, (a, b, c) in zip(got, u):
        assert cfg["learning_rate"] == pytest.approx(1e-4 * math.exp(a * math.log(1e-1 / 1e-4)))
        assert cfg["warmup"] == pytest.approx(b * 0.2)
        assert cfg["batch"] == [16, 32, 64][int(math.floor(c * 3))]
    assert all(1e-4 <= c["learning_rate"] <= 1e-1 for c in got)
    json.dumps(got)  # plain Python types only


def test_assign_studies_deals_out_one_shuffled_draw():
    space = parse_search_space(SPACE)
    studies = space.assign_studies(5, 3, seed=7)
    assert [len(s) for s in studies] == [5, 5, 5]
    flat = [c for s in studies for c in s]
    assert flat == space.sample(15, seed=7)
    assert len({json.dumps(c, sort_keys=True) for c in flat}) == 15
    other = [c for s in space.assign_studies(5, 3, seed=8) for c in s]
    key = lambda c: json.dumps(c, sort_keys=True)  # noqa: E731
    assert sorted(map(key, other)) == sorted(map(key, flat))  # same set of points...
    assert other != flat  # ...in another order, i.e. other studies


def test_list_form_samples_without_replacement_per_study():
    points = [{"lr": 0.1 * i, "wd": i} for i in range(5)]
    space = parse_search_space(points)
    assert space.sample(3) == points[:3]  # the reference takes the first N
    assert space.sample(9) == points
    studies = space.assign_studies(3, 4, seed=0)
    for s in studies:
        assert len(s) == 3
        assert len({c["wd"] for c in s}) == 3
        assert all(c in points for c in s)
    assert studies == space.assign_studies(3, 4, seed=0)


def test_builtin_spaces_of_every_submission_parse():
    from optforge.bench.submission import get_submission, list_submissions

    for name in list_submissions():
        sub = get_submission(name)
        if sub.search_space:
            space = parse_search_space(sub.search_space)
            assert len(space.sample(4)) == 4


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ("lr", r"must be a JSON object .* \(got str\)"),
        ([], r"list of configurations must not be empty"),
        ({"lr": 3}, r"'lr' must be an object .* \(got int\)"),
        ({"lr": {"min": 1, "max": 2}},
         r"'lr' needs min, max and scaling, or feasible_points \(missing scaling\)"),
        ({"lr": {"min": 1, "max": 2, "scaling": "exp"}},
         r"'lr'.scaling must be 'linear' or 'log' \(got 'exp'\)"),
        ({"lr": {"min": 2, "max": 1, "scaling": "linear"}},
         r"'lr' needs min <= max \(got min=2, max=1\)"),
        ({"lr": {"min": 0, "max": 1, "scaling": "log"}},
         r"'lr' with log scaling needs min > 0 \(got 0\)"),
        ({"lr": {"min": "a", "max": 1, "scaling": "log"}},
         r"'lr'.min must be a finite number \(got 'a'\)"),
        ({"lr": {"min": 1, "max": 2, "scaling": "log", "step": 1}}, r"unknown keys \['step'\]"),
        ({"lr": {"feasible_points": []}}, r"feasible_points must be a non-empty list"),
        ({"lr": {"feasible_points": [1], "min": 0}}, r"mixes feasible_points with \['min'\]"),
        ([{"a": 1}, {"b": 2}], r"configuration 1 has names \['b'\], configuration 0 has"),
        ([{"a": 1}, 3], r"configuration 1 must be an object \(got int\)"),
    ],
)
def test_malformed_spaces_name_the_problem(obj, match):
    with pytest.raises(SearchSpaceError, match=match):
        parse_search_space(obj)


def test_load_search_space_file_errors(tmp_path):
    good = tmp_path / "space.json"
    good.write_text(json.dumps(SPACE))
    assert load_search_space(good).names == ["learning_rate", "warmup", "batch"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": {"min": 1,\n "max": }}')
    with pytest.raises(SearchSpaceError, match=r"bad.json: not valid JSON .* line 2, column"):
        load_search_space(bad)
    with pytest.raises(SearchSpaceError, match=r"cannot read search space .*missing.json"):
        load_search_space(tmp_path / "missing.json")
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    with pytest.raises(SearchSpaceError, match=r"scalar.json: must be a JSON object"):
        load_search_space(scalar)


def test_bad_counts():
    space = parse_search_space(SPACE)
    with pytest.raises(ValueError, match=r"num_trials must be >= 1 \(got 0\)"):
        space.assign_studies(0, 3)
    with pytest.raises(ValueError, match=r"num_studies must be >= 1 \(got 0\)"):
        space.assign_studies(2, 0)
