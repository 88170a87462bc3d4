"""The CPU C loops (kernels/exact_cpu.c, backend ``"native"``): bit-identical to the rule's
loop for Lion, AdamW, Adam's inner direction and SGD-momentum under every flag, on odd sizes,
one and two threads, several steps and a checkpoint round trip; what they cannot serve falls
back to the other tiers; and the C finite check gives ``isfinite().all()``'s answer."""

from __future__ import annotations

import io
import itertools

import pytest
import torch

from optforge.kernels import all_finite, apply_rule_, exact_cpu, resolve_backend
from optforge.kernels import unscaled as unscaled_rule
from optforge.optim import AdamW, Lion
from optforge.optim.adamw import adam_inner_rule, adamw_rule, bias_corrections
from optforge.optim.lion import lion_rule
from optforge.optim.sgd import sgd_momentum_rule

pytestmark = pytest.mark.skipif(
    not exact_cpu.available(), reason="no C compiler: the CPU exact kernels cannot be built"
)

CPU = torch.device("cpu")
#: 0-d, vector tails around 8 and 16 lanes, a multi-block tensor, one over a million elements
SIZES = [(), (1,), (7,), (8,), (15,), (17,), (4231,), (65_539,), (1_100_003,)]
MIXED = [(3, 5), (), (1,), (0,), (300, 7), (17,), (16_385,), (8,), (2, 3, 4), (65_539,), (0, 4)]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def calls(monkeypatch):
    """Counts C calls, so a test knows the kernel ran (and did not silently fall back)."""
    seen: list[int] = []
    real = exact_cpu._call

    def counting(kind, lib, lists, hyper):
        seen.append(len(lists[0]))
        real(kind, lib, lists, hyper)

    monkeypatch.setattr(exact_cpu, "_call", counting)
    return seen


def _tensors(shapes, n_lists: int, seed: int, special: bool = True) -> list[list[torch.Tensor]]:
    """``n_lists`` lists of random fp32 tensors; ``special`` puts a zero (sign(0)), a -0.0 and
    a subnormal into each tensor of more than 3 elements."""
    gen = torch.Generator().manual_seed(seed)
    lists = []
    for j in range(n_lists):
        lst = []
        for shape in shapes:
            t = torch.randn(shape, generator=gen) * (0.1 + j)
            if special and t.numel() > 3:
                flat = t.view(-1)
                flat[0], flat[1], flat[-1] = 0.0, -0.0, 1e-40  # a zero, a -0 and a subnormal
            lst.append(t)
        lists.append(lst)
    return lists


def _clone(lists):
    return [[t.clone() for t in lst] for lst in lists]


def _assert_bits_equal(got, want) -> None:
    for a, b in zip(got, want):
        for x, y in zip(a, b):
            assert x.shape == y.shape and x.stride() == y.stride()
            assert torch.equal(x.view(torch.int32), y.view(torch.int32)), (
                f"{(x != y).sum()} of {x.numel()} elements differ"
            )


def _lion_hyper(maximize, wd):
    return dict(lr=3e-3, beta1=0.9, beta2=0.99, weight_decay=wd, maximize=maximize)


def _adamw_hyper(maximize, wd, step=3):
    return dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd, maximize=maximize,
                **bias_corrections(0.9, 0.999, step))


CASES = []  # (rule, n_state, hyper, id)
for maximize, wd, scale in itertools.product([False, True], [0.0, 0.1], [None, 2.0**-7]):
    tag = f"max{int(maximize)}-wd{wd}-{'scaled' if scale else 'plain'}"
    extra = {} if scale is None else {"inv_grad_scale": scale}
    CASES.append((lion_rule, 1, {**_lion_hyper(maximize, wd), **extra}, "lion-" + tag))
    CASES.append((adamw_rule, 2, {**_adamw_hyper(maximize, wd), **extra}, "adamw-" + tag))
    for nesterov, dampening, momentum in [(False, 0.0, 0.9), (True, 0.0, 0.9), (False, 0.3, 0.9),
                                          (False, 0.0, 0.0)]:
        CASES.append((
            sgd_momentum_rule, 1,
            dict(lr=0.05, weight_decay=wd, maximize=maximize, momentum=momentum,
                 dampening=dampening, nesterov=nesterov, **extra),
            f"sgd-nest{int(nesterov)}-damp{dampening}-mom{momentum}-" + tag,
        ))
CASES.append((adam_inner_rule, 2, {k: v for k, v in _adamw_hyper(False, 0.0).items()
                                   if k not in ("lr", "weight_decay", "maximize")}, "adam_inner"))


def _run_both(rule, n_state, hyper, shapes, steps, seed):
    """The rule ``steps`` times on the loop and on ``native``, fresh gradients each step."""
    if "inv_grad_scale" in hyper:
        rule = unscaled_rule(rule, n_state + 1)
    lists = _tensors(shapes, n_state + 2, seed)
    if n_state == 2:
        lists[2] = [t.abs() for t in lists[2]]  # v >= 0
    ref, got = _clone(lists), _clone(lists)
    for k in range(steps):
        grads = _tensors(shapes, 1, seed * 100 + k)[0]
        apply_rule_(rule, [*ref[:-1], grads], hyper, backend="loop")
        apply_rule_(rule, [*got[:-1], grads], hyper, backend="native")
    return got, ref


#: the flag matrix runs on one thread by default; on two threads for a case of each rule
#: (the whole matrix on two threads: ``-m slow``)
TWO_THREADS = {"lion-max1-wd0.1-scaled", "adamw-max1-wd0.1-scaled", "adam_inner",
               "sgd-nest1-damp0.0-mom0.9-max1-wd0.1-scaled"}
MATRIX = [
    pytest.param(*c[:3], n, id=f"{c[3]}-{n}thread",
                 marks=[pytest.mark.slow] if n == 2 and c[3] not in TWO_THREADS else [])
    for c in CASES for n in (1, 2)
]


@pytest.mark.parametrize("rule,n_state,hyper,n_threads", MATRIX)
def test_every_rule_and_flag_equals_the_loop_bit_for_bit(rule, n_state, hyper, n_threads, calls,
                                                         monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: n_threads)  # what the kernel is given
    got, ref = _run_both(rule, n_state, hyper, MIXED, steps=3, seed=1)
    _assert_bits_equal(got, ref)
    assert calls == [len(MIXED)] * 3  # one call per step for the whole list


@pytest.mark.parametrize("shape", SIZES, ids=[str(s) for s in SIZES])
@pytest.mark.parametrize(
    "rule,n_state,hyper", [CASES[0][:3], CASES[1][:3], CASES[-1][:3]],
    ids=["lion", "adamw", "inner"],
)
def test_odd_sizes_each_alone(rule, n_state, hyper, shape, threads) -> None:
    got, ref = _run_both(rule, n_state, hyper, [shape], steps=2, seed=7)
    _assert_bits_equal(got, ref)


def test_sgd_on_every_size_in_one_list(threads) -> None:
    rule, n_state, hyper, _ = CASES[2]
    got, ref = _run_both(rule, n_state, hyper, SIZES, steps=2, seed=3)
    _assert_bits_equal(got, ref)


def test_non_finite_values_propagate_as_in_the_loop(calls) -> None:
    """Without the optimizer's check: NaN, inf and -0 in gradients and state, at the ends and
    in the middle, give the loop's bits (sign(NaN) = 0 as ATen's)."""
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 3e38])
    for rule, n_state, hyper in (CASES[0][:3], CASES[1][:3], CASES[2][:3]):
        lists = _tensors([(37,), (4231,)], n_state + 2, 5)
        for lst in (lists[1], lists[-1]):
            for t in lst:
                t[:6], t[18:24], t[-6:] = specials, specials.flip(0), specials
        if n_state == 2:
            lists[2] = [t.abs() for t in lists[2]]
        ref, got = _clone(lists), _clone(lists)
        apply_rule_(rule, ref, hyper, backend="loop")
        apply_rule_(rule, got, hyper, backend="native")
        _assert_bits_equal(got, ref)
    assert calls == [2, 2, 2]


def test_auto_runs_the_kernel_from_the_first_step(calls) -> None:
    assert resolve_backend("auto", lion_rule, CPU, torch.float32) == "native"
    assert resolve_backend("auto", lion_rule, CPU, torch.bfloat16) == "foreach"
    params = [torch.nn.Parameter(t) for t in _tensors(MIXED, 1, 11)[0]]
    opt = Lion(params, lr=1e-3, weight_decay=0.1)  # the default construction
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert calls == [len(MIXED)]


@pytest.mark.parametrize("cls", [Lion, AdamW])
def test_checkpoint_round_trip_across_native_and_loop(cls, threads) -> None:
    """Native (auto) for 2 steps, saved, loaded into a loop optimizer for 2 more (and the
    reverse): the bits of an uninterrupted loop run."""
    shapes = [(33, 5), (4231,), (), (65_539,)]
    grads = [_tensors(shapes, 1, 50 + k)[0] for k in range(4)]

    def run(first: str, second: str) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(t) for t in _tensors(shapes, 1, 1)[0]]
        opt = cls(params, lr=1e-2, weight_decay=0.1, backend=first)
        for k in range(4):
            if k == 2:
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)
                buf.seek(0)
                opt = cls(params, lr=1e-2, weight_decay=0.1, backend=second)
                opt.load_state_dict(torch.load(buf, weights_only=True))
            for p, g in zip(params, grads[k]):
                p.grad = g.clone()
            opt.step()
        states = [opt.state[p][k] for p in params for k in sorted(opt.state[p])]
        return [p.detach() for p in params] + states

    want = run("loop", "loop")
    for first, second in (("auto", "loop"), ("loop", "auto"), ("native", "native")):
        _assert_bits_equal([run(first, second)], [want])


def test_what_it_cannot_serve_falls_back(calls) -> None:
    """Strided entries go to the eager tier next to the served ones; tensor-valued
    hyperparameters and bf16 lists never reach the C loop; all equal the loop."""
    lists = _tensors([(6, 4), (9, 3), (17,)], 3, 2)
    lists = [[lst[0].t(), lst[1], lst[2]] for lst in lists]  # a transposed view: strided
    lists[0][0] = lists[0][0].contiguous()  # p contiguous, m and g not: no shared layout
    ref, got = _clone(lists), _clone(lists)
    hyper = _lion_hyper(False, 0.1)
    apply_rule_(lion_rule, ref, hyper, backend="loop")
    apply_rule_(lion_rule, got, hyper)
    _assert_bits_equal(got, ref)
    assert calls == [2]
    tensor_lr = {**hyper, "lr": torch.tensor(3e-3)}
    ref, got = _clone(lists), _clone(lists)
    apply_rule_(lion_rule, ref, tensor_lr, backend="loop")
    apply_rule_(lion_rule, got, tensor_lr)
    _assert_bits_equal(got, ref)
    bf16 = [[t.contiguous().bfloat16() for t in lst] for lst in lists]
    apply_rule_(lion_rule, bf16, hyper)
    assert calls == [2]


def test_complex_parameters_run_as_their_real_view(calls) -> None:
    """The dispatch hands complex tensors over as ``view_as_real`` (fp32, contiguous), as it
    does to the loop: the kernel serves them, with the loop's bits."""
    shapes = [(3, 4), (17,)]
    runs = []
    for backend in ("loop", "auto"):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, dtype=torch.complex64, generator=gen))
                  for s in shapes]
        opt = Lion(params, lr=1e-2, weight_decay=0.1, backend=backend)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, dtype=torch.complex64, generator=gen)
            opt.step()
        runs.append([torch.view_as_real(p.detach()) for p in params]
                    + [torch.view_as_real(opt.state[p]["exp_avg"]) for p in params])
    _assert_bits_equal([runs[1]], [runs[0]])
    assert calls == [2, 2]


def test_without_a_compiler_auto_takes_the_eager_tier(monkeypatch) -> None:
    monkeypatch.setattr(exact_cpu, "_load", lambda: None)
    assert resolve_backend("auto", lion_rule, CPU, torch.float32) == "foreach"
    assert resolve_backend("auto", adamw_rule, CPU, torch.float32) == "foreach"
    with pytest.raises(RuntimeError, match="backend 'native' has no kernel for lion on cpu"):
        apply_rule_(lion_rule, [[torch.zeros(2)]] * 3, _lion_hyper(False, 0.0), backend="native")
    lists = _tensors([(5,), (300,)], 3, 4)
    ref, got = _clone(lists), _clone(lists)
    apply_rule_(lion_rule, ref, _lion_hyper(True, 0.1), backend="loop")
    apply_rule_(lion_rule, got, _lion_hyper(True, 0.1))
    _assert_bits_equal(got, ref)
    grads = [torch.ones(3), torch.tensor([1.0, float("nan")])]
    assert not bool(all_finite(grads)) and bool(all_finite(grads[:1]))


# -- the finite check ---------------------------------------------------------------------------
FINITE_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("dtype", FINITE_DTYPES, ids=str)
def test_all_finite_answers_as_isfinite(dtype, threads) -> None:
    sizes = [1, 7, 17, 4231, 65_539, 1_100_003]
    base = [torch.randn(n).to(dtype) for n in sizes]
    assert exact_cpu.all_finite(base) == (True, [])
    assert bool(all_finite(base))
    for k, n in enumerate(sizes):
        # the ends, the middle, and the edges of the C loop's four interleaved read streams
        for pos in sorted({0, n // 4 - 1, n // 4, n // 2, 3 * n // 4, n - 1} - {-1}):
            for bad in (float("inf"), -float("inf"), float("nan")):
                kept = base[k][pos].clone()
                base[k][pos] = bad
                finite, rest = exact_cpu.all_finite(base)
                assert not finite and rest == [], (n, pos, bad)
                assert not bool(all_finite(base))
                base[k][pos] = kept
    assert exact_cpu.all_finite(base) == (True, [])
    big = torch.full((9,), torch.finfo(dtype).max, dtype=dtype)  # a sum would overflow
    assert exact_cpu.all_finite([big]) == (True, [])


def test_all_finite_layouts_and_what_it_leaves() -> None:
    x = torch.randn(2, 3, 5, 7).to(memory_format=torch.channels_last)
    x[1, 2, 4, 6] = float("nan")
    assert exact_cpu.all_finite([x]) == (False, [])
    strided = torch.randn(8, 8).t()[::2]
    ints = torch.ones(3, dtype=torch.int64)
    finite, rest = exact_cpu.all_finite([torch.ones(3), strided, ints])
    assert finite and len(rest) == 2
    strided[1, 1] = float("inf")
    assert not bool(all_finite([torch.ones(3), strided]))  # the eager check took the view


def test_the_default_lion_refuses_a_non_finite_gradient_and_writes_nothing() -> None:
    params = [torch.nn.Parameter(torch.randn(70_000)), torch.nn.Parameter(torch.randn(5))]
    opt = Lion(params, lr=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in params]
    before += [opt.state[p]["exp_avg"].clone() for p in params]
    params[0].grad[-1] = float("nan")
    with pytest.raises(FloatingPointError, match="parameter 0"):
        opt.step()
    after = [p.detach() for p in params] + [opt.state[p]["exp_avg"] for p in params]
    _assert_bits_equal([after], [before])
