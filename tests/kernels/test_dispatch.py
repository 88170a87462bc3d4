"""The dispatch: every backend matches the loop reference on awkward lists; compiled graphs are
shared, take new hyperparameter values without recompiling, and fall back instead of dying.

Tests of the dispatch logic compile with dynamo's ``"eager"`` backend (its tracing, guards and
recompile limits, without inductor's C++ builds); the parity tests compile with inductor.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from optforge.kernels import Rule, apply_rule_, dispatch, exact_cpu
from optforge.kernels import compiled as compiled_mod
from optforge.optim.lars import lars_rule
from optforge.optim.lion import Lion, lion_rule

LION = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, maximize=False)
LARS = dict(
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    trust_coefficient=1e-3,
    eps=1e-8,
    adapt=True,
    maximize=False,
)
BF16_TOL = {"rtol": 2**-6, "atol": 1e-5}  # a bf16 ulp is 2**-7 relative: a few ulps


def _tensors(dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """0-d, sizes 1, 7, 4231, a 64x300 matrix, a tensor above the eager tile size, a transposed view
    and a channels_last tensor."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(shape, generator=gen).to(dtype)

    return [
        r(),
        r(1),
        r(7),
        r(4231),
        r(64, 300),
        r(1_100_001),
        r(40, 30).t(),
        r(2, 3, 4, 5).to(memory_format=torch.channels_last),
        r(0),
    ]


def _lists(n: int, dtypes: list[torch.dtype]) -> list[list[torch.Tensor]]:
    """n parallel lists; the tensors of entry i share shape and layout across lists."""
    lists = [[] for _ in range(n)]
    for d, dtype in enumerate(dtypes):
        for k in range(n):
            lists[k] += _tensors(dtype, seed=10 * d + k)
    return lists


def _clone(lists):
    return [[t.clone(memory_format=torch.preserve_format) for t in lst] for lst in lists]


def _assert_lists_close(got, want, lr: float) -> None:
    """fp32: assert_close's defaults. bf16: a few ulps, except that a sign step may flip where
    the interpolated momentum rounds to about zero (one rounding against several): at most
    0.1% of elements, by at most 2·lr."""
    for lg, lw in zip(got, want):
        for g, w in zip(lg, lw):
            assert g.stride() == w.stride() or g.numel() <= 1
            if w.dtype != torch.bfloat16:
                torch.testing.assert_close(g, w)
                continue
            g, w = g.float(), w.float()
            far = ~torch.isclose(g, w, **BF16_TOL)
            assert int(far.sum()) <= max(1, w.numel() // 1000)
            assert bool(((g - w).abs()[far] <= 2 * lr * 1.01).all())


@pytest.fixture
def eager_compiler(monkeypatch):
    monkeypatch.setattr(compiled_mod, "COMPILER", "eager")


def _fresh_axpy(exact: bool = False) -> Rule:
    """A new rule object: its own graphs and recompile budget, whatever ran before."""

    def axpy(y, x, *, alpha, negate):
        return (y + alpha * (-x if negate else x),)

    return Rule(axpy, n_out=1, exact=exact)


# -- parity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_foreach_equals_the_loop_bit_for_bit(dtype: torch.dtype) -> None:
    want = _lists(3, [dtype])
    got = _clone(want)
    apply_rule_(lion_rule, want, LION, backend="loop")
    apply_rule_(lion_rule, got, LION, backend="foreach")
    for lg, lw in zip(got, want):
        for g, w in zip(lg, lw):
            assert torch.equal(g, w) and g.stride() == w.stride()


def test_compiled_matches_the_loop_on_a_mixed_dtype_list() -> None:
    want = _lists(3, [torch.float32, torch.bfloat16])
    got = _clone(want)
    apply_rule_(lion_rule, want, LION, backend="loop")
    apply_rule_(lion_rule, got, LION, backend="compiled")
    _assert_lists_close(got, want, LION["lr"])


def test_compiled_norm_rule_matches_the_loop() -> None:
    want = _lists(3, [torch.float32])
    got = _clone(want)
    apply_rule_(lars_rule, want, LARS, backend="loop")
    apply_rule_(lars_rule, got, LARS, backend="compiled")
    _assert_lists_close(got, want, LARS["lr"])


@pytest.mark.parametrize("backend", ["foreach", "compiled", "auto"])
def test_complex_tensors_run_as_their_real_view(backend: str, eager_compiler) -> None:
    gen = torch.Generator().manual_seed(3)
    lists = [[torch.randn(5, 3, dtype=torch.complex64, generator=gen)] for _ in range(3)]
    real = [[torch.view_as_real(t).clone() for t in lst] for lst in lists]
    apply_rule_(lion_rule, lists, LION, backend=backend)
    apply_rule_(lion_rule, real, LION, backend="loop")
    torch.testing.assert_close(torch.view_as_real(lists[0][0]), real[0][0])


# -- hyperparameters as persistent scalars ----------------------------------------------------
def test_new_hyperparameter_values_neither_recompile_nor_reallocate(eager_compiler) -> None:
    rule = _fresh_axpy()
    ys, xs = [torch.zeros(17), torch.zeros(40_000)], [torch.ones(17), torch.ones(40_000)]
    apply_rule_(rule, (ys, xs), {"alpha": 0.1, "negate": False}, backend="compiled")
    before = counters["stats"]["unique_graphs"]
    scalar = compiled_mod._SCALARS[(torch.device("cpu"), torch.float64, "alpha")]
    ptr = scalar.data_ptr()
    for alpha in (0.2, 0.3, 0.4):
        apply_rule_(rule, (ys, xs), {"alpha": alpha, "negate": False}, backend="compiled")
    assert counters["stats"]["unique_graphs"] == before
    assert compiled_mod._SCALARS[(torch.device("cpu"), torch.float64, "alpha")] is scalar
    assert scalar.data_ptr() == ptr
    for y in ys:
        torch.testing.assert_close(y, torch.full_like(y, 1.0))


def test_one_graph_serves_every_list(eager_compiler) -> None:
    """Dynamic, non-duck-shaped sizes: other sizes, lengths and equal sizes reuse the graph."""
    rule = _fresh_axpy()
    hyper = {"alpha": 1.0, "negate": False}
    sizes = [[5000, 7000, 9000], [20_000] * 20, [17_000, 30_000], [100_000, 16_385, 3] * 7]
    graphs = None
    for i, n in enumerate(sizes):
        ys, xs = [torch.zeros(k) for k in n], [torch.ones(k) for k in n]
        if i % 2:  # parameters: requires_grad, which dynamo guards on, must not add a graph
            ys = [torch.nn.Parameter(y) for y in ys]
        with torch.no_grad():
            apply_rule_(rule, (ys, xs), hyper, backend="compiled")
        assert all(torch.equal(y, torch.ones_like(y)) for y in ys)
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs


# -- defect 7: compile failures fall back, training continues ---------------------------------
def test_recompile_limit_falls_back_with_one_warning(eager_compiler, monkeypatch) -> None:
    """Issue 7, defect 7: fused=True died with FailOnRecompileLimitHit in a long-lived process.
    ``cache_size_limit`` is the limit's name across torch>=2.4 (``recompile_limit`` since 2.6)."""
    rule = _fresh_axpy()
    monkeypatch.setattr(compiled_mod, "_FAILED", set())
    caught = []
    cases = [
        (dtype, n)
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float32)
        for n in (3000, 70_000)
    ]
    with torch._dynamo.config.patch(cache_size_limit=1):
        for dtype, n in cases:
            ys, xs = [torch.zeros(n, dtype=dtype)], [torch.ones(n, dtype=dtype)]
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                apply_rule_(rule, (ys, xs), {"alpha": 0.5, "negate": False}, backend="compiled")
            caught += [x for x in w if "running it eagerly" in str(x.message)]
            assert torch.equal(ys[0], torch.full_like(ys[0], 0.5))
    assert len(caught) == 1 and "RecompileLimit" in str(caught[0].message)
    assert caught[0].category is RuntimeWarning


def test_fused_lion_survives_a_sweep_past_the_recompile_limit(eager_compiler, monkeypatch):
    """The sweep of defect 7, at the optimizer: new dtypes and flags until the limit is hit."""
    monkeypatch.setattr(compiled_mod, "_FAILED", set())
    monkeypatch.setattr(compiled_mod, "_GRAPHS", {})
    limit = torch._dynamo.config.patch(cache_size_limit=1)
    with limit, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            runs = []
            for kwargs in ({"fused": True}, {"backend": "loop"}):
                torch.manual_seed(0)
                params = [torch.nn.Parameter(torch.randn(n, dtype=dtype)) for n in (7, 5000)]
                opt = Lion(params, lr=1e-2, weight_decay=0.1, **kwargs)
                for _ in range(3):
                    for p in params:
                        p.grad = torch.randn_like(p)
                    opt.step()
                runs.append(params)
            _assert_lists_close([runs[0]], [runs[1]], lr=3 * 1e-2)
    assert sum("running it eagerly" in str(x.message) for x in w) == 1


def test_a_failing_compiler_warns_once_and_the_loop_takes_over(monkeypatch) -> None:
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(compiled_mod, "COMPILER", broken)
    rule = _fresh_axpy()
    with pytest.warns(RuntimeWarning, match="compiling axpy failed"):
        ys, xs = [torch.zeros(9), torch.zeros(())], [torch.ones(9), torch.ones(())]
        apply_rule_(rule, (ys, xs), {"alpha": 2.0, "negate": True}, backend="compiled")
    assert all(torch.equal(y, torch.full_like(y, -2.0)) for y in ys)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_rule_(rule, (ys, xs), {"alpha": 2.0, "negate": True}, backend="compiled")
    assert all(torch.equal(y, torch.full_like(y, -4.0)) for y in ys)


# -- auto ---------------------------------------------------------------------------------------
def test_auto_stays_eager_until_the_compile_is_paid_for(eager_compiler, monkeypatch) -> None:
    rule = _fresh_axpy(exact=True)
    ys, xs = [torch.zeros(3000)], [torch.ones(3000)]
    hyper = {"alpha": 1.0, "negate": False}
    monkeypatch.setattr(dispatch, "AUTO_COMPILE_AFTER_S", float("inf"))
    for _ in range(3):
        apply_rule_(rule, (ys, xs), hyper)
    assert compiled_mod.compiled_ready(rule, hyper, 2) is None  # never compiled
    monkeypatch.setattr(dispatch, "AUTO_COMPILE_AFTER_S", 0.0)
    apply_rule_(rule, (ys, xs), hyper)
    assert compiled_mod.compiled_ready(rule, hyper, 2) is True
    torch.testing.assert_close(ys[0], torch.full((3000,), 4.0))


def test_auto_picks_the_eager_tier_on_cpu() -> None:
    import os

    if "OPTFORGE_AUTO_COMPILE_AFTER_S" not in os.environ:  # ski rental on by default: a run
        assert dispatch.AUTO_COMPILE_AFTER_S == 30.0  # with < 30 s of steps never compiles
    cpu = torch.device("cpu")
    # fp32 Lion: the C loop when it builds (tests/kernels/test_exact_cpu.py), else foreach
    native = "native" if exact_cpu.available() else "foreach"
    assert dispatch.resolve_backend("auto", lion_rule, cpu, torch.float32) == native
    assert dispatch.resolve_backend("auto", lion_rule, cpu, torch.bfloat16) == "foreach"
    assert dispatch.resolve_backend("auto", lars_rule, cpu, torch.float32) == "loop"


def test_explicit_backends_that_cannot_run_raise() -> None:
    with pytest.raises(ValueError, match="elementwise"):
        apply_rule_(lars_rule, [[torch.zeros(3)]] * 3, LARS, backend="foreach")
    with pytest.raises(ValueError, match="backend must be one of"):
        apply_rule_(lion_rule, [[torch.zeros(3)]] * 3, LION, backend="triton")


def test_a_registered_kernel_serves_auto_for_its_dtypes() -> None:
    rule = _fresh_axpy()
    seen = []

    def kernel(r, lists, hyper):
        seen.append(len(lists[0]))

    dispatch.register_kernel(rule, "toy", kernel, devices=["cpu"], dtypes=[torch.float64])
    ys, xs = [torch.zeros(3, dtype=torch.float64), torch.zeros(3)], [torch.ones(3)] * 2
    xs = [xs[0].double(), xs[1]]
    apply_rule_(rule, (ys, xs), {"alpha": 1.0, "negate": False}, backend="loop")
    apply_rule_(rule, (ys, xs), {"alpha": 1.0, "negate": False})
    assert seen == [1]  # the fp64 group went to the kernel, the fp32 one did not
    with pytest.raises(RuntimeError, match="no kernel"):
        apply_rule_(
            rule,
            ([torch.zeros(2)], [torch.ones(2)]),
            {"alpha": 1.0, "negate": False},
            backend="toy",
        )


@pytest.mark.gpu
def test_every_backend_on_a_list_spanning_cpu_and_cuda() -> None:
    want = _lists(3, [torch.float32])
    want = [[t if i % 2 else t.cuda() for i, t in enumerate(lst)] for lst in want]
    for backend in ("foreach", "compiled", "auto"):
        got = _clone(want)
        ref = _clone(want)
        apply_rule_(lion_rule, ref, LION, backend="loop")
        apply_rule_(lion_rule, got, LION, backend=backend)
        _assert_lists_close(got, ref, LION["lr"])
