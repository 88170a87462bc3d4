"""Programs: ops against plain formulas, liveness, canonical text, mutations, state, errors."""

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optforge.search.programs import OPS, Instruction, Program, ProgramSpace

G = np.array([1.5, -2.0, 0.0, 3e-3, -40.0])
M = np.array([-0.5, 0.25, 2.0, -1e-9, 12.0])

# Each op written plainly, independently of the op table.
REFERENCE = {
    "add": lambda a, b, c: a + b,
    "sub": lambda a, b, c: a - b,
    "mul": lambda a, b, c: a * b,
    "div": lambda a, b, c: np.array(
        [x / y if abs(y) > 1e-4 else x * y / (y * y + 1e-16) for x, y in zip(a, b)]
    ),
    "max": lambda a, b, c: np.array([max(x, y) for x, y in zip(a, b)]),
    "min": lambda a, b, c: np.array([min(x, y) for x, y in zip(a, b)]),
    "lerp": lambda a, b, c: (1 - c) * a + c * b,
    "neg": lambda a, b, c: -a,
    "abs": lambda a, b, c: np.array([abs(x) for x in a]),
    "sign": lambda a, b, c: np.array([int(x > 0) - int(x < 0) for x in a], dtype=float),
    "square": lambda a, b, c: a**2,
    "sqrt_abs": lambda a, b, c: np.array([abs(x) ** 0.5 for x in a]),
    "exp": lambda a, b, c: np.array([np.e ** min(max(x, -10.0), 10.0) for x in a]),
    "tanh": lambda a, b, c: np.tanh(a),
    "scale": lambda a, b, c: c * a,
}


def _single(op: str, c: float = 0.7) -> Program:
    # u = op(g, m, c) with inputs (g, m): registers g=0, m=1, u=2.
    return Program((Instruction(op, 2, 0, 1, c),), inputs=("g", "m"), n_registers=2)


def test_reference_covers_every_op():
    assert set(REFERENCE) == set(OPS)


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_matches_plain_formula(op):
    c = 0.7 if OPS[op].has_const else 0.0
    got = _single(op, c)(g=G, m=M)
    np.testing.assert_allclose(got, REFERENCE[op](G, M, c), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("op", sorted(OPS))
def test_torch_matches_numpy(op):
    p = _single(op)
    got = p(g=torch.tensor(G), m=torch.tensor(M))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), p(g=G, m=M), rtol=1e-12)


def test_safe_ops_stay_finite():
    zero = np.zeros(3)
    assert np.all(_single("div")(g=np.ones(3), m=zero) == 0.0)
    assert np.all(np.isfinite(_single("exp")(g=np.array([1e300, -1e300, 50.0]), m=zero)))


def test_pretty_print_and_round_trip_through_expression():
    lion = Program.from_expression("sign(lerp(m, g, 0.9))", inputs=("g", "m"))
    assert str(lion) == "u = sign(lerp(m, g, 0.9))"
    np.testing.assert_array_equal(lion(g=G, m=M), np.sign(0.1 * M + 0.9 * G))
    again = Program.from_expression(str(lion), inputs=("g", "m"))
    assert again.structural_key() == lion.structural_key()
    adam = Program.from_expression("div(m, add(sqrt_abs(v), scale(g, 0)))")
    assert adam.expression() == "div(m, add(sqrt_abs(v), scale(g, 0)))"
    assert str(Program((), inputs=("g",))) == "u = 0"


def test_bare_input_and_broadcast_shape():
    p = Program.from_expression("g", inputs=("g", "m"))
    out = p(g=np.ones(3), m=np.ones((2, 1)))
    assert out.shape == (2, 3)
    assert Program((), inputs=("g", "m"))(np.ones(4), 2.0).shape == (4,)


def test_dead_code_elimination():
    # r1 = square(g) is overwritten before use; r2 = exp(m) is never read.
    p = Program(
        (
            Instruction("square", 4, 0, 0),
            Instruction("exp", 5, 1, 0),
            Instruction("neg", 4, 1, 0),
            Instruction("mul", 3, 0, 4),
        ),
        inputs=("g", "m", "v"),
        n_registers=3,
    )
    assert p.live == (2, 3)
    s = p.simplified()
    assert len(s.instructions) == 2
    np.testing.assert_array_equal(s(g=G, m=M, v=M), p(g=G, m=M, v=M))
    assert s.structural_key() == p.structural_key()
    assert s.raw_key() != p.raw_key()
    assert "# dead" in p.listing() and "# dead" not in s.listing()


def test_structural_key_ignores_register_names_not_algebra():
    a = Program((Instruction("add", 4, 0, 1), Instruction("sign", 3, 4, 0)), ("g", "m", "v"), 3)
    b = Program((Instruction("add", 5, 0, 1), Instruction("sign", 3, 5, 0)), ("g", "m", "v"), 3)
    c = Program((Instruction("add", 5, 1, 0), Instruction("sign", 3, 5, 0)), ("g", "m", "v"), 3)
    assert a != b and a.structural_key() == b.structural_key()
    assert a.structural_hash() == b.structural_hash() and len(a.structural_hash()) == 32
    assert c.structural_key() != a.structural_key()  # add(m, g): a functional hash's job


def test_expression_falls_back_to_listing_when_huge():
    # u = u*u + ... doubling: the nested expression grows as 2^k.
    code = [Instruction("add", 2, 0, 1)] + [Instruction("mul", 2, 2, 2)] * 12
    p = Program(tuple(code), inputs=("g", "m"), n_registers=1)
    text = str(p)
    assert "\n" in text and len(text) < 1000


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_mutations=st.integers(0, 30))
def test_random_programs_invariants(seed, n_mutations):
    space = ProgramSpace(("g", "m", "v"), n_registers=3, max_length=8)
    rng = np.random.default_rng(seed)
    p = space.init(rng)
    for _ in range(n_mutations):
        child = space.mutate(p, rng)
        assert 1 <= len(child.instructions) <= 8
        assert all(ins.op in space.ops for ins in child.instructions)
        p = child
    x = {k: np.random.default_rng(seed + i).standard_normal(7) for i, k in enumerate("gmv")}
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(p.simplified()(**x), p(**x))
    assert p.simplified().structural_key() == p.structural_key()
    restored = Program.from_state(_roundtrip(p.to_state()))
    assert restored == p and restored.structural_key() == p.structural_key()


def test_mutate_is_pure_and_seeded():
    space = ProgramSpace(("g", "m"), n_registers=2, max_length=6)
    parent = space.init(np.random.default_rng(0))
    before = parent.to_state()
    a = [space.mutate(parent, np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    assert parent.to_state() == before
    children = {space.mutate(parent, np.random.default_rng(s)) for s in range(50)}
    assert len(children) > 20  # mutations vary


def test_op_and_operand_mutations_always_change_the_program():
    space = ProgramSpace(
        ("g", "m"),
        n_registers=2,
        max_length=4,
        mutation_weights={
            "op": 1,
            "operand": 1,
            "constant": 0,
            "insert": 0,
            "delete": 0,
            "randomize": 0,
        },
    )
    rng = np.random.default_rng(1)
    p = space.init(rng)
    for _ in range(200):
        child = space.mutate(p, rng)
        assert child != p
        p = child


def test_mutation_kinds_respect_length_limits():
    only_insert = ProgramSpace(
        ("g",),
        n_registers=1,
        max_length=3,
        init_length=(3, 3),
        mutation_weights={
            "insert": 1,
            "delete": 0,
            "op": 0,
            "operand": 0,
            "constant": 0,
            "randomize": 0,
        },
    )
    p = only_insert.init(np.random.default_rng(0))
    with pytest.raises(ValueError, match="no mutation applies"):
        only_insert.mutate(p, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"instructions": (("nope", 2, 0, 0, 0.0),)}, ValueError, r"op must be one of"),
        ({"instructions": (("neg", 0, 0, 0, 0.0),)}, ValueError, r"out must be a scratch"),
        ({"instructions": (("add", 2, 0, 9, 0.0),)}, ValueError, r"b must be a register in"),
        ({"instructions": (("lerp", 2, 0, 1, float("nan")),)}, ValueError, r"const must be"),
        ({"instructions": (), "n_registers": 0}, ValueError, r"n_registers must be >= 1"),
        ({"instructions": (), "inputs": ("g", "g")}, ValueError, r"inputs must be distinct"),
        ({"instructions": (), "inputs": ("g", "u")}, ValueError, r"must not reuse scratch"),
        ({"instructions": (), "inputs": ("add",)}, ValueError, r"not op names"),
    ],
)
def test_program_errors(kwargs, exc, match):
    kwargs.setdefault("inputs", ("g", "m"))
    with pytest.raises(exc, match=match):
        Program(**kwargs)


def test_call_errors():
    p = Program.from_expression("add(g, m)", inputs=("g", "m"))
    with pytest.raises(TypeError, match=r"missing \['m'\]"):
        p(g=G)
    with pytest.raises(TypeError, match=r"expected 2 inputs"):
        p(G)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("foo(g)", r"unknown op 'foo'"),
        ("add(g)", r"add takes 2 arguments"),
        ("lerp(g, m, x)", r"expected a numeric constant"),
        ("add(g, 1.0)", r"unknown name or literal"),
        ("add(g,", r"not a valid expression"),
        ("add(mul(g, m), mul(m, m))", r"n_registers=2 is too few"),
    ],
)
def test_from_expression_errors(text, match):
    with pytest.raises(ValueError, match=match):
        Program.from_expression(text, inputs=("g", "m"), n_registers=2)


def test_from_state_error():
    with pytest.raises(ValueError, match=r"not a Program.to_state\(\) dict"):
        Program.from_state({"inputs": ["g"]})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ops": ["add", "nope"]}, r"ops must be a non-empty subset"),
        ({"max_length": 0}, r"max_length must be >= 1"),
        ({"init_length": (2, 20)}, r"init_length\[1\] must be <= max_length=10"),
        ({"mutation_weights": {"swap": 1.0}}, r"mutation_weights keys must be in"),
        ({"mutation_weights": {"op": -1.0}}, r"mutation_weights must be finite, >= 0"),
    ],
)
def test_space_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProgramSpace(**kwargs)


def test_mutate_rejects_non_program():
    with pytest.raises(TypeError, match=r"program must be a Program \(got list\)"):
        ProgramSpace().mutate([1, 2], np.random.default_rng(0))


def test_const_decimals_puts_constants_on_a_grid():
    space = ProgramSpace(
        ("g", "m"), n_registers=2, max_length=6, ops=["lerp", "scale", "add"], const_decimals=2
    )
    rng = np.random.default_rng(0)
    p = space.init(rng)
    consts = []
    for _ in range(300):
        p = space.mutate(p, rng)
        consts += [ins.const for ins in p.instructions if OPS[ins.op].has_const]
    assert consts and all(c == round(c, 2) for c in consts)
    assert all(-2.0 <= c <= 2.0 for c in consts)
    with pytest.raises(ValueError, match=r"const_decimals must be >= 0 \(got -1\)"):
        ProgramSpace(const_decimals=-1)


def test_programs_pickle_for_process_pools():
    import pickle

    p = Program.from_expression("div(m, add(sqrt_abs(v), scale(g, 0.001)))")
    _ = p.live  # the cached liveness travels too
    q = pickle.loads(pickle.dumps(p))
    assert q == p and q.structural_key() == p.structural_key()
