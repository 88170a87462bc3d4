"""Compiled graphs give the eager bits (``Rule.exact``), so ``auto`` may switch mid-run on CPU:
a run resumed from a checkpoint repeats an uninterrupted one whichever step each switched at.
The gradient check (``all_finite``) keeps "a bad step changes nothing" after the switch.

The parity tests compile with inductor (the point is its C++); the Lion graph is shared with
test_dispatch.py's parity tests in one process. AdamW and SGD add graphs of their own: slow.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from optforge.kernels import all_finite, apply_rule_, dispatch, exact_cpu
from optforge.kernels import compiled as compiled_mod
from optforge.optim.adamw import adamw_rule
from optforge.optim.lars import lars_rule
from optforge.optim.lion import Lion, lion_rule
from optforge.optim.rules import exact_sqrt
from optforge.optim.sgd import sgd_momentum_rule
from tests.kernels.test_dispatch import LARS, LION, _clone, _lists

ADAMW = dict(
    lr=1e-3,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    weight_decay=0.01,
    maximize=False,
    bias_correction1=1 - 0.9**3,
    bias_correction2=1 - 0.999**3,
)
SGD = dict(lr=1e-2, momentum=0.9, dampening=0.1, nesterov=True, weight_decay=0.01, maximize=True)


@pytest.fixture(autouse=True)
def without_the_c_library(monkeypatch):
    """This file tests the tiers that run the exact rules where no C compiler exists (eager,
    then compiled); with one, ``auto`` runs the C loops on fp32 CPU lists from the first step
    and their check (tests/kernels/test_exact_cpu.py)."""
    monkeypatch.setattr(exact_cpu, "_load", lambda: None)


def _assert_equal(got, want) -> None:
    for lg, lw in zip(got, want):
        for g, w in zip(lg, lw):
            assert g.stride() == w.stride() or g.numel() <= 1
            assert torch.equal(g, w), f"{tuple(g.shape)}: {int((g != w).sum())} elements differ"


def _steps(rule, hyper, backend, n_state, steps=3, positive=()):
    lists = _lists(2 + n_state, [torch.float32])
    for k in positive:  # Adam's second moment
        lists[k] = [t.abs() for t in lists[k]]
    lists = _clone(lists)
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 + step)
        for g in lists[-1]:  # a new gradient each step
            g.copy_(torch.randn(g.shape, generator=gen))
        apply_rule_(rule, lists, hyper, backend=backend)
    return lists


@pytest.mark.parametrize(
    "rule, hyper, n_state, positive",
    [
        (lion_rule, LION, 1, ()),
        pytest.param(adamw_rule, ADAMW, 2, (2,), marks=pytest.mark.slow),
        pytest.param(sgd_momentum_rule, SGD, 1, (), marks=pytest.mark.slow),
    ],
    ids=["lion", "adamw", "sgd_momentum"],
)
def test_exact_rules_compile_to_the_loops_bits_in_fp32(rule, hyper, n_state, positive) -> None:
    """0-d, sizes 1, 7, 4231, 64x300, 1.1M (vector tails, threaded loops, packed small tensors),
    a transposed view, channels_last, empty; three steps."""
    assert rule.exact
    want = _steps(rule, hyper, "loop", n_state, positive=positive)
    for backend in ("foreach", "compiled"):
        _assert_equal(_steps(rule, hyper, backend, n_state, positive=positive), want)


def test_exact_sqrt_is_correctly_rounded() -> None:
    """Eager fp32 torch.sqrt on CPU is not (a vector-math library); numpy's is IEEE."""
    x = torch.rand(1_000_003) * 3
    want = np.sqrt(x.numpy()).view(np.int32)
    assert np.array_equal(exact_sqrt(x).numpy().view(np.int32), want)
    b = x.bfloat16()
    assert torch.equal(exact_sqrt(b), torch.sqrt(b.double()).float().bfloat16())


def test_only_exact_fp32_lists_switch(monkeypatch) -> None:
    """bf16 lists (inductor rounds a scalar to bf16 before a bf16 multiply, eager to fp32) and
    rules not marked exact (norms: reduction order) stay eager whatever the time spent."""
    ran = []
    monkeypatch.setattr(dispatch, "run_compiled", lambda *a: ran.append(a[0]))
    monkeypatch.setattr(dispatch, "AUTO_COMPILE_AFTER_S", 0.0)
    bf16 = [[torch.randn(3000, dtype=torch.bfloat16) for _ in range(2)] for _ in range(3)]
    for _ in range(2):
        apply_rule_(lion_rule, bf16, LION)
        apply_rule_(lars_rule, [[torch.randn(3000)] for _ in range(3)], LARS)
    assert ran == []
    fp32 = [[torch.randn(3000) for _ in range(2)] for _ in range(3)]
    apply_rule_(lion_rule, fp32, LION)
    assert ran == [lion_rule]


def _train(params, opt, steps, start=0):
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def _model():
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 300), (300,), (7,), (), (4231,), (20, 30), (1,)] * 3
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def test_a_resume_across_the_switch_repeats_the_run_bit_for_bit(monkeypatch) -> None:
    """The default Lion: one run switches to compiled at step 2; another runs eagerly to step
    4, round-trips a checkpoint, and switches at step 4 after the load; a third never switches.
    All three end with equal bits. (check_finite=False: the compiled check is its own, slow
    test.)"""
    inf = float("inf")

    def run(switch_at, resume_at=None):
        params = _model()
        opt = Lion(params, lr=1e-2, weight_decay=0.1, check_finite=False)
        for step in range(6):
            if step == resume_at:
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)
                buf.seek(0)
                params = [torch.nn.Parameter(p.detach().clone()) for p in params]
                opt = Lion(params, lr=1e-2, weight_decay=0.1, check_finite=False)
                opt.load_state_dict(torch.load(buf, weights_only=True))
            monkeypatch.setattr(dispatch, "AUTO_COMPILE_AFTER_S", 0.0 if step >= switch_at else inf)
            _train(params, opt, 1, start=step)
        return params, opt

    runs = [run(switch_at=2), run(switch_at=4, resume_at=4), run(switch_at=99)]
    assert compiled_mod.compiled_ready(lion_rule, LION, 3) is True  # the switch happened
    (want, want_opt), *others = runs
    for got, got_opt in others:
        _assert_equal([got], [want])
        for p, q in zip(got, want):
            assert torch.equal(got_opt.state[p]["exp_avg"], want_opt.state[q]["exp_avg"])


# -- the gradient check ---------------------------------------------------------------------
def _grads():
    gen = torch.Generator().manual_seed(1)
    sizes = [(), (1,), (7,), (0,), (4231,), (64, 300), (40, 30)] * 5  # 35: three chunks
    grads = [torch.randn(s, generator=gen) for s in sizes]
    grads[-1] = grads[-1].t()  # a strided view
    grads[-2] = grads[-2].bfloat16()
    return grads


@pytest.mark.parametrize("check", ["eager", "compiled"])
@pytest.mark.parametrize("where", [None, 0, 1, 33, 34, 26, 5])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_a_bad_value_anywhere(check, where, bad, monkeypatch) -> None:
    """The CPU check (eager packs) and the CUDA one (compiled chunks; run here on CPU, traced
    by dynamo's eager backend: the logic) over 35 tensors of every kind, 3 chunks."""
    monkeypatch.setattr(compiled_mod, "COMPILER", "eager")
    grads = _grads()
    if where is not None:
        grads[where][tuple(-1 for _ in grads[where].shape)] = bad
    if check == "eager":
        got = all_finite(grads, backend="compiled")  # CPU: eager on every backend
    else:
        got = compiled_mod.compiled_all_finite([g for g in grads if g.numel()])
    assert bool(got) is (where is None)


def test_all_finite_does_not_overflow_on_large_finite_values() -> None:
    grads = [torch.full((70_000,), 3e38), torch.full((5,), -3e38)]
    assert bool(all_finite(grads, backend="loop"))


def test_after_the_switch_a_bad_step_changes_nothing(monkeypatch) -> None:
    """After the switch to compiled updates: a NaN in a late gradient raises before any chunk
    is written."""
    monkeypatch.setattr(dispatch, "AUTO_COMPILE_AFTER_S", 0.0)
    params = _model()
    opt = Lion(params, lr=1e-2, weight_decay=0.1)
    _train(params, opt, 2)
    assert compiled_mod.compiled_ready(lion_rule, LION, 3) is True
    before = [p.detach().clone() for p in params]
    state = [opt.state[p]["exp_avg"].clone() for p in params]
    for p in params:
        p.grad = torch.randn(p.shape)
    params[-3].grad.view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match=f"parameter {len(params) - 3} "):
        opt.step()
    _assert_equal([params], [before])
    _assert_equal([[opt.state[p]["exp_avg"] for p in params]], [state])
