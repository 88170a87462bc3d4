"""Regularized evolution: aging, tournament, ask/tell protocol, resume, errors, a real search."""

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optforge.search import run
from optforge.search.evolution import RegularizedEvolution, tournament_select
from optforge.search.programs import Program, ProgramSpace

N_BITS = 24


def bits_init(rng):
    return [int(b) for b in rng.integers(0, 2, size=N_BITS)]


def bits_flip(genotype, rng):
    child = list(genotype)
    i = int(rng.integers(len(child)))
    child[i] = 1 - child[i]
    return child


def onemax(genotype):
    return float(sum(genotype))


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _evo(**kwargs):
    kwargs = {"population_size": 10, "sample_size": 3, "seed": 0, **kwargs}
    return RegularizedEvolution(bits_init, bits_flip, **kwargs)


# -- the algorithm ---------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    fitness=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30),
    sample_size=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    maximize=st.booleans(),
)
def test_tournament_picks_best_of_its_sample(fitness, sample_size, seed, maximize):
    k = tournament_select(fitness, sample_size, np.random.default_rng(seed), maximize)
    draws = np.random.default_rng(seed).integers(len(fitness), size=sample_size)
    sample = [fitness[i] for i in draws]
    assert k in draws
    assert fitness[k] == (max(sample) if maximize else min(sample))


def test_aging_removes_the_oldest_not_the_worst():
    evo = _evo(population_size=3, batch_size=1)
    init = evo.ask()
    assert [c.id for c in init] == [0, 1, 2]
    evo.tell([0, 1, 2], [100.0, 1.0, 2.0])  # id 0 is by far the best
    (child,) = evo.ask()
    assert evo.parent_of(child.id) in (0, 1, 2)
    evo.tell([child.id], [-5.0])  # the worst joins, the oldest (and best) leaves
    assert [c.id for c, _ in evo.population] == [1, 2, child.id]
    assert evo.best[0].id == 0 and evo.best[1] == 100.0  # best ever is remembered
    (c2,) = evo.ask()
    evo.tell([c2.id], [0.0])
    assert [c.id for c, _ in evo.population] == [2, child.id, c2.id]


def test_tell_order_is_age_order():
    evo = _evo(population_size=3)
    evo.ask()
    evo.tell([2, 0], [1.0, 1.0])
    evo.tell([1], [1.0])
    assert [c.id for c, _ in evo.population] == [2, 0, 1]


def test_ask_protocol_initial_population_then_children():
    evo = _evo(population_size=4, batch_size=2)
    first = evo.ask()
    assert len(first) == 4 and all(evo.parent_of(c.id) is None for c in first)
    with pytest.raises(RuntimeError, match=r"no individual has been told yet"):
        evo.ask(1)
    evo.tell([first[0].id], [1.0])
    children = evo.ask()
    assert len(children) == 2 and all(evo.parent_of(c.id) == first[0].id for c in children)
    assert evo.pending == [1, 2, 3, 4, 5]
    more = evo.ask(3)
    assert [c.id for c in more] == [6, 7, 8]


def test_discarded_initial_individuals_are_redrawn():
    evo = _evo(population_size=3)
    first = evo.ask()
    evo.discard([first[1].id])
    evo.tell([first[0].id, first[2].id], [1.0, 2.0])
    (again,) = evo.ask()
    assert evo.parent_of(again.id) is None and again.id == 3
    assert evo.n_discarded == 1


def test_maximize_false_selects_lowest():
    evo = _evo(population_size=5, sample_size=100, maximize=False)
    ids = [c.id for c in evo.ask()]
    evo.tell(ids, [5.0, 3.0, -7.0, 4.0, 9.0])
    for _ in range(5):
        (c,) = evo.ask()
        assert evo.parent_of(c.id) == 2  # S = 100 draws from 5: the minimum is drawn
        evo.discard([c.id])
    assert evo.best[1] == -7.0


def test_solves_onemax():
    evo = _evo(population_size=30, sample_size=5, seed=1)
    for _ in range(600):
        cands = evo.ask()
        evo.tell([c.id for c in cands], [onemax(c.value) for c in cands])
    assert evo.best[1] == N_BITS


def test_aging_beats_random_search_on_onemax():
    # The same number of evaluations of random genotypes: evolution must be clearly better.
    rng = np.random.default_rng(0)
    random_best = max(onemax(bits_init(rng)) for _ in range(400))
    evo = _evo(population_size=20, sample_size=5, seed=0)
    run(evo, onemax, budget=400, executor="inline")
    assert evo.best[1] >= random_best + 3


def test_run_is_deterministic_and_counts_budget():
    histories = []
    for _ in range(2):
        evo = _evo(population_size=8, batch_size=4, seed=3)
        h = run(evo, onemax, budget=40, executor="inline")
        histories.append([(e.id, tuple(e.value), e.result) for e in h.evaluations])
        assert evo.n_told == 40
    assert histories[0] == histories[1]


# -- resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_pending", [False, True])
def test_resume_gives_the_same_next_asks(with_pending):
    def drive(evo, steps):
        for _ in range(steps):
            cands = evo.ask()
            evo.tell([c.id for c in cands], [onemax(c.value) for c in cands])

    a = _evo(population_size=6, batch_size=2, seed=11)
    drive(a, 10)
    held = a.ask() if with_pending else []
    state = _roundtrip(a.state_dict())
    b = _evo(population_size=6, batch_size=2, seed=999)  # seed comes from the state
    b.load_state_dict(state)
    assert b.pending == a.pending and b.seed == 11
    for evo in (a, b):
        if held:
            evo.tell([c.id for c in held], [onemax(c.value) for c in held])
    for _ in range(5):
        ca, cb = a.ask(), b.ask()
        assert [(c.id, c.value) for c in ca] == [(c.id, c.value) for c in cb]
        a.tell([c.id for c in ca], [onemax(c.value) for c in ca])
        b.tell([c.id for c in cb], [onemax(c.value) for c in cb])
    assert a.best[1] == b.best[1] and a.n_told == b.n_told


def test_resume_with_program_genotypes():
    space = ProgramSpace(("g", "m"), n_registers=2, max_length=5)
    x = np.linspace(-2, 2, 9)

    def fit(p):
        return -float(np.mean((p(g=x, m=x**2) - np.sign(x)) ** 2))

    def make():
        return RegularizedEvolution(
            space.init,
            space.mutate,
            population_size=5,
            sample_size=2,
            seed=4,
            to_state=Program.to_state,
            from_state=Program.from_state,
        )

    a = make()
    run(a, fit, budget=30, executor="inline")
    b = make()
    b.load_state_dict(_roundtrip(a.state_dict()))
    assert [c.value for c in a.ask(3)] == [c.value for c in b.ask(3)]


def test_state_needs_plain_genotypes_or_converters():
    space = ProgramSpace(("g",), n_registers=1, max_length=3)
    evo = RegularizedEvolution(space.init, space.mutate, population_size=2)
    evo.ask()
    with pytest.raises(TypeError, match=r"genotype of type Program is not plain data; pass "):
        evo.state_dict()


def test_load_rejects_mismatched_hyperparameters():
    state = _evo(population_size=4).state_dict()
    with pytest.raises(ValueError, match=r"state has population_size=4 but this instance has "):
        _evo(population_size=5).load_state_dict(state)
    with pytest.raises(ValueError, match=r"RegularizedEvolution state_dict of version 1"):
        _evo().load_state_dict({"version": 7})


# -- errors ----------------------------------------------------------------------------------


def test_tell_errors_leave_state_untouched():
    evo = _evo(population_size=3)
    ids = [c.id for c in evo.ask()]
    before = evo.state_dict()
    with pytest.raises(ValueError, match=r"id 7 is not pending"):
        evo.tell([0, 7], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"results\[1\] must be finite \(got nan\)"):
        evo.tell([0, 1], [1.0, float("nan")])
    with pytest.raises(TypeError, match=r"results\[0\] must be a real number \(got str"):
        evo.tell([0], ["high"])
    with pytest.raises(ValueError, match=r"one entry per id"):
        evo.tell([0, 1], [1.0])
    assert evo.state_dict() == before
    evo.tell(ids, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"id 0 is not pending: .* already told"):
        evo.tell([0], [1.0])
    with pytest.raises(ValueError, match=r"fitness must be finite"):
        evo.check_result(float("inf"))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"population_size": 0}, ValueError, r"population_size must be >= 1 \(got 0\)"),
        ({"sample_size": 0}, ValueError, r"sample_size must be >= 1 \(got 0\)"),
        ({"batch_size": 1.5}, TypeError, r"batch_size must be an int"),
        ({"seed": -1}, ValueError, r"seed must be >= 0 \(got -1\)"),
        ({"maximize": 1}, TypeError, r"maximize must be a bool"),
        ({"to_state": list}, ValueError, r"to_state and from_state must be given together"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _evo(**kwargs)


def test_callables_are_checked():
    with pytest.raises(TypeError, match=r"init must be callable init\(rng\)"):
        RegularizedEvolution(None, bits_flip)
    with pytest.raises(TypeError, match=r"mutate must be callable mutate\(genotype, rng\)"):
        RegularizedEvolution(bits_init, 3)
    with pytest.raises(ValueError, match=r"n must be >= 1 \(got 0\)"):
        _evo().ask(0)
