"""Bad input and foreign state: one objective rule for every algorithm; a state loads only into
the configuration that saved it, and the error says what differs; import cost for a QD user."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch

from optforge.search import run
from optforge.search.bo import BayesianOptimization, Real, SearchSpace
from optforge.search.evolution import RegularizedEvolution
from optforge.search.qd import (
    CVTArchive,
    EvolutionStrategyEmitter,
    GaussianEmitter,
    GridArchive,
    IsoLineEmitter,
    MapElites,
)

D = 4


def grid(ranges=(-1.0, 1.0), **kw) -> GridArchive:
    return GridArchive(solution_dim=D, dims=(5, 5), ranges=[ranges] * 2, **kw)


def map_elites(seed=0):
    a = grid()
    return MapElites(a, [GaussianEmitter(a, sigma=0.1, batch_size=4)], seed=seed)


def cvt_elites():
    a = CVTArchive(solution_dim=D, centroids=10, ranges=[(-1.0, 1.0)] * 2, samples=500, seed=0)
    return MapElites(a, [IsoLineEmitter(a, batch_size=4)], seed=0)


def cma_me(ranges=(-1.0, 1.0)):
    a = grid(ranges)
    return MapElites(a, [EvolutionStrategyEmitter(a, sigma0=0.5, batch_size=4)], seed=0)


def cma_mae():
    a = grid(learning_rate=0.01, threshold_min=0.0)
    emitter = EvolutionStrategyEmitter(a, sigma0=0.5, batch_size=4, ranker="imp")
    return MapElites(a, [emitter], seed=0, result_archive=grid())


def bo():
    return BayesianOptimization(SearchSpace({"x": Real(-1.0, 1.0)}), seed=0, n_initial=3)


def evolution():
    return RegularizedEvolution(
        lambda rng: rng.normal(size=2), lambda g, rng: g + rng.normal(size=2), population_size=4
    )


QD = {"grid": map_elites, "cvt": cvt_elites, "cma_me": cma_me, "cma_mae": cma_mae}


@pytest.mark.parametrize("bad", ["1.0", True, np.bool_(True), b"1"], ids=repr)
@pytest.mark.parametrize("make", [*QD.values(), bo, evolution], ids=[*QD, "bo", "evolution"])
def test_every_algorithm_rejects_non_number_objectives(make, bad):
    search = make()
    c = search.ask(2)
    good_value = 0.5
    result = (bad, np.zeros(2)) if isinstance(search, MapElites) else bad
    good = (good_value, np.zeros(2)) if isinstance(search, MapElites) else good_value
    with pytest.raises(TypeError, match="real number"):
        search.check_result(result)
    with pytest.raises(TypeError, match="real number"):
        search.tell([c[0].id, c[1].id], [good, result])
    search.tell([c[0].id, c[1].id], [good, good])  # nothing was told by the refused call


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def told(search: MapElites) -> MapElites:
    run(search, lambda x: (float(-np.sum(x**2)), x[:2]), budget=8, executor="inline")
    return search


def test_grid_state_with_other_ranges_is_refused_and_names_them():
    saved = roundtrip(told(cma_me(ranges=(-15.0, 15.0))).state_dict())
    other = cma_me(ranges=(-1.0, 1.0))
    before = other.archive.elites()
    with pytest.raises(ValueError, match=r"ranges \(saved \[\[-15.0, 15.0\]"):
        other.load_state_dict(saved)
    assert len(other.archive) == 0 and all(np.array_equal(before[k], v) for k, v in before.items())
    same = cma_me(ranges=(-15.0, 15.0))
    same.load_state_dict(saved)
    assert same.ask()[0].value.tolist() == told(cma_me((-15.0, 15.0))).ask()[0].value.tolist()


def test_archive_learning_rate_and_threshold_are_part_of_its_configuration():
    saved = roundtrip(told(cma_mae()).state_dict())
    a = grid(learning_rate=0.1, threshold_min=0.0)
    other = MapElites(
        a,
        [EvolutionStrategyEmitter(a, sigma0=0.5, batch_size=4, ranker="imp")],
        0,
        result_archive=grid(),
    )
    with pytest.raises(ValueError, match=r"learning_rate \(saved 0.01, here 0.1\)"):
        other.load_state_dict(saved)


def test_cma_me_state_into_other_emitters_is_refused():
    saved = roundtrip(told(cma_me()).state_dict())
    with pytest.raises(ValueError, match=r"emitters\[0\].*kind \(saved 'EvolutionStrategy"):
        map_elites().load_state_dict(saved)
    a = grid()
    imp = MapElites(a, [EvolutionStrategyEmitter(a, sigma0=0.5, batch_size=4, ranker="imp")], 0)
    with pytest.raises(ValueError, match=r"ranker \(saved '2imp', here 'imp'\)"):
        imp.load_state_dict(saved)


@pytest.mark.parametrize(
    "source, target",
    [(bo, evolution), (evolution, bo), (bo, map_elites), (map_elites, evolution)],
    ids=["bo->evolution", "evolution->bo", "bo->map_elites", "map_elites->evolution"],
)
def test_state_of_another_algorithm_is_refused_by_name(source, target):
    saved = roundtrip(source().state_dict())
    with pytest.raises(ValueError, match=f"saved by {type(source()).__name__}, not by"):
        target().load_state_dict(saved)


def test_import_search_and_qd_pulls_neither_scipy_nor_bo():
    code = (
        "import sys\n"
        "import optforge.search\n"
        "from optforge.search import run, MapElites\n"
        "from optforge.search.qd import GridArchive, GaussianEmitter, IsoLineEmitter\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'\n"
        "             or m.startswith('optforge.search.bo'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
