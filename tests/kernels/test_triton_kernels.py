"""The Triton kernels against the loop reference, on CPU tensors under TRITON_INTERPRET=1.

Sizes 1, BLOCK-1, BLOCK, BLOCK+1 and a prime in one multi-tensor launch; fp32 against the
rule's loop; bf16 bit for bit against "fp32 math, one round-to-nearest-even" (the loop rounds
after every op, so it is not the bf16 reference); several steps; exact resume through the
optimizer; launch counts; ``found_inf``; stochastic rounding; the errors where no kernel runs.
"""

from __future__ import annotations

import io
import math
import os

import pytest
import torch

pytest.importorskip("triton", reason="Triton (the 'triton' extra) is not installed")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "CPU tensors under TRITON_INTERPRET=1 only (GPU checks: benchmarks/kernels_gpu.py)",
        allow_module_level=True,
    )

from optforge.kernels import apply_rule_  # noqa: E402
from optforge.kernels.triton import available, register, register_if_available  # noqa: E402
from optforge.kernels.triton.adam import adamw_  # noqa: E402
from optforge.kernels.triton.launch import BLOCK, LAUNCHES  # noqa: E402
from optforge.kernels.triton.lion import lion_  # noqa: E402
from optforge.optim import AdamW  # noqa: E402
from optforge.optim.adamw import adam_inner_rule, adamw_rule  # noqa: E402
from optforge.optim.lamb import lamb_rule  # noqa: E402
from optforge.optim.lion import lion_rule  # noqa: E402
from optforge.optim.sgd import sgd_momentum_rule  # noqa: E402

SIZES = [1, BLOCK - 1, BLOCK, BLOCK + 1, 4099]  # 4099 is prime
ADAM = dict(beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.fixture(autouse=True, scope="module")
def kernels_on_cpu():
    register(("cpu",))
    yield
    register(())  # withdrawn: ``auto`` must not pick them for the rest of the session


def _tensors(n_lists: int, dtype=torch.float32, seed: int = 0, positive=()) -> list[list]:
    gen = torch.Generator().manual_seed(seed)
    lists = []
    for j in range(n_lists):
        make = torch.rand if j in positive else torch.randn
        lists.append([make(n, generator=gen).to(dtype) for n in SIZES])
    return lists


def _clone(lists):
    return [[t.clone() for t in lst] for lst in lists]


def _adam_hyper(step: int, **extra) -> dict:
    return dict(
        **ADAM,
        bias_correction1=1 - 0.9**step,
        bias_correction2=1 - 0.999**step,
        **extra,
    )


CASES = {
    "adamw": (adamw_rule, 4, (2,), lambda s: _adam_hyper(s, lr=1e-2, weight_decay=0.1,
                                                          maximize=False)),
    "adam_inner": (adam_inner_rule, 4, (2,), lambda s: _adam_hyper(s)),
    "lion": (lion_rule, 3, (), lambda s: dict(lr=1e-2, weight_decay=0.1, maximize=True,
                                              beta1=0.9, beta2=0.99)),
    "sgd": (sgd_momentum_rule, 3, (), lambda s: dict(lr=1e-2, weight_decay=0.01, maximize=False,
                                                     momentum=0.9, dampening=0.1,
                                                     nesterov=False)),
    "sgd_nesterov": (sgd_momentum_rule, 3, (), lambda s: dict(lr=1e-2, weight_decay=0.0,
                                                              maximize=False, momentum=0.9,
                                                              dampening=0.0, nesterov=True)),
    "lamb": (lamb_rule, 4, (2,), lambda s: _adam_hyper(
        s, lr=1e-2, weight_decay=0.01, grad_scale=0.5, adapt=True, max_weight_norm=10.0,
        max_trust_ratio=None, maximize=False)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_fp32_matches_the_loop_over_several_steps(name: str) -> None:
    rule, n_lists, positive, hyper = CASES[name]
    kernel = _tensors(n_lists, positive=positive)
    loop = _clone(kernel)
    for step in (1, 2, 3):
        for lists in (kernel, loop):  # a fresh gradient each step
            lists[-1] = [t * (1 + step) - step for t in _tensors(1, seed=step)[0]]
        apply_rule_(rule, kernel, hyper(step), backend="triton")
        apply_rule_(rule, loop, hyper(step), backend="loop")
    # LAMB's norms are summed in another order (block partials): a few ulps in the ratio
    tol = dict(rtol=1e-5, atol=1e-6) if name == "lamb" else dict(rtol=1.3e-6, atol=1e-6)
    for got_list, want_list in zip(kernel[: rule.n_out], loop[: rule.n_out]):
        for got, want in zip(got_list, want_list):
            torch.testing.assert_close(got, want, **tol)


def _adamw_fp32_math(p, m, v, g, hyper):
    """fp32 math, one rounding into p's dtype: the bf16 reference."""
    g = g.float()
    m.mul_(hyper["beta1"]).add_(g * (1 - hyper["beta1"]))
    v.mul_(hyper["beta2"]).add_(g * g * (1 - hyper["beta2"]))
    upd = (m / hyper["bias_correction1"]) / (torch.sqrt(v / hyper["bias_correction2"]) + 1e-8)
    p32 = p.float() * (1 - hyper["lr"] * hyper["weight_decay"]) - upd * hyper["lr"]
    return p32


def test_bf16_adamw_is_fp32_math_rounded_to_nearest_even_bit_for_bit() -> None:
    p, g = _tensors(2, torch.bfloat16)
    m = [torch.zeros(n) for n in SIZES]
    v = [torch.zeros(n) for n in SIZES]
    rp, rm, rv = [t.clone() for t in p], [t.clone() for t in m], [t.clone() for t in v]
    for step in (1, 2, 3):
        hyper = _adam_hyper(step, lr=1e-2, weight_decay=0.1, maximize=False)
        apply_rule_(adamw_rule, (p, m, v, g), hyper, backend="triton")
        for i in range(len(SIZES)):
            rp[i] = _adamw_fp32_math(rp[i], rm[i], rv[i], g[i], hyper).to(torch.bfloat16)
    for a, b in zip(p, rp):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    for a, b in zip(m, rm):
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=1e-7)


def test_bf16_lion_rounds_parameter_and_momentum_once() -> None:
    p, m, g = _tensors(3, torch.bfloat16)
    rp, rm = [t.clone() for t in p], [t.clone() for t in m]
    hyper = dict(lr=1e-2, weight_decay=0.5, maximize=False, beta1=0.9, beta2=0.99)
    for _ in range(3):
        apply_rule_(lion_rule, (p, m, g), hyper, backend="triton")
        for i in range(len(SIZES)):
            m32, g32 = rm[i].float(), g[i].float()
            c = m32 * 0.9 + g32 * (1 - 0.9)
            rp[i] = (rp[i].float() * (1 - 1e-2 * 0.5) - torch.sign(c) * 1e-2).to(torch.bfloat16)
            rm[i] = (m32 * 0.99 + g32 * (1 - 0.99)).to(torch.bfloat16)
    for a, b in zip(p + m, rp + rm):
        assert torch.equal(a, b)


def test_master_weights_carry_fp32_and_the_bf16_parameter_is_their_rounding() -> None:
    master, g = _tensors(2)
    p = [w.to(torch.bfloat16) for w in master]
    m = [torch.zeros(n) for n in SIZES]
    v = [torch.zeros(n) for n in SIZES]
    ref_w, ref_m, ref_v = [w.clone() for w in master], _clone([m])[0], _clone([v])[0]
    for step in (1, 2):
        hyper = _adam_hyper(step, lr=1e-3, weight_decay=0.1, maximize=False)
        adamw_((p, m, v, g), hyper, master=master)
        for i in range(len(SIZES)):
            ref_w[i] = _adamw_fp32_math(ref_w[i], ref_m[i], ref_v[i], g[i], hyper)
    for w, rw, q in zip(master, ref_w, p):
        torch.testing.assert_close(w, rw, rtol=1.3e-6, atol=1e-7)
        assert torch.equal(q, w.to(torch.bfloat16))
    # lr 1e-3 moves fp32 masters by less than a bf16 ulp: bf16 alone would lose the steps
    assert any(not torch.equal(w.to(torch.bfloat16).float(), w) for w in master)


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour() -> None:
    n = 4 * BLOCK
    x = 1 + 2**-9  # a quarter of the way from bf16 1.0 to 1.0078125
    master = [torch.full((n,), x)]
    p = [torch.ones(n, dtype=torch.bfloat16)]
    zeros = [torch.zeros(n)]
    hyper = _adam_hyper(1, lr=0.0, weight_decay=0.0, maximize=False)
    adamw_((p, zeros, [torch.zeros(n)], zeros), hyper, master=master, stochastic_rounding=True,
           seed=7)  # fmt: skip
    values = p[0].float()
    assert set(values.unique().tolist()) == {1.0, 1.0078125}
    assert abs(values.mean().item() - x) < 4 * 2**-7 * math.sqrt(0.25 * 0.75 / n)
    nearest = [torch.ones(n, dtype=torch.bfloat16)]
    adamw_((nearest, zeros, [torch.zeros(n)], zeros), hyper, master=master)
    assert bool((nearest[0] == 1.0).all())  # nearest even rounds every element down


def test_found_inf_skips_every_write_without_a_host_sync() -> None:
    p, m, g = _tensors(3)
    before = _clone([p, m])
    hyper = dict(lr=1e-2, weight_decay=0.0, maximize=False, beta1=0.9, beta2=0.99)
    lion_((p, m, g), hyper, found_inf=torch.ones(1))
    for a, b in zip(p + m, before[0] + before[1]):
        assert torch.equal(a, b)
    lion_((p, m, g), hyper, found_inf=torch.zeros(1))
    assert not torch.equal(p[-1], before[0][-1])


def test_one_launch_per_dtype_group_and_two_for_lamb() -> None:
    p32, g32 = _tensors(2)
    p16, g16 = _tensors(2, torch.bfloat16)
    params, grads = p32 + p16, g32 + g16
    m = [torch.zeros_like(t) for t in params]
    start = dict(LAUNCHES)
    hyper = dict(lr=1e-2, weight_decay=0.0, maximize=False, beta1=0.9, beta2=0.99)
    apply_rule_(lion_rule, (params, m, grads), hyper, backend="triton")
    assert LAUNCHES["lion"] - start.get("lion", 0) == 2  # fp32 group, bf16 group
    rule, n_lists, positive, hyper_of = CASES["lamb"]
    lists = _tensors(n_lists, positive=positive)
    start = dict(LAUNCHES)
    apply_rule_(rule, lists, hyper_of(1), backend="triton")
    assert LAUNCHES["lamb_moments"] - start.get("lamb_moments", 0) == 1
    assert LAUNCHES["lamb_update"] - start.get("lamb_update", 0) == 1


def _train(opt, params, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def test_optimizer_auto_runs_the_kernel_once_per_step_and_resumes_exactly() -> None:
    shapes = [(1,), (31, 33), (BLOCK + 1,)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = AdamW(params, lr=1e-2)
    before = LAUNCHES.get("adamw", 0)
    _train(opt, params, 1, seed=1)
    assert LAUNCHES["adamw"] - before == 1  # auto picked the kernel: one launch, all tensors
    assert [float(opt.state[p]["step"]) for p in params] == [1.0] * 3
    for p in params:  # state changed exactly once: m = (1 − β1)·g
        torch.testing.assert_close(opt.state[p]["exp_avg"], 0.1 * p.grad)

    ref = [torch.nn.Parameter(t.detach().clone()) for t in params]
    ref_opt = AdamW(ref, lr=1e-2)
    ref_opt.load_state_dict(opt.state_dict())
    _train(ref_opt, ref, 3, seed=2)

    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach() for p in params]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    opt2 = AdamW(resumed, lr=1e-2)
    opt2.load_state_dict(saved["opt"])
    _train(opt2, resumed, 3, seed=2)
    for a, b in zip(resumed, ref):
        assert torch.equal(a, b)
    for a, b in zip(resumed, ref):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt2.state[a][key], ref_opt.state[b][key])


def test_without_a_kernel_triton_is_refused_and_auto_never_picks_it() -> None:
    assert not available() or torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert register_if_available() is False  # no CUDA: nothing registered
    register(())  # as on a machine without CUDA: the name exists, no device is served
    try:
        p, m, g = _tensors(3)
        hyper = dict(lr=1e-2, weight_decay=0.0, maximize=False, beta1=0.9, beta2=0.99)
        with pytest.raises(RuntimeError, match="backend 'triton' has no kernel for lion on cpu"):
            apply_rule_(lion_rule, (p, m, g), hyper, backend="triton")
        before = dict(LAUNCHES)
        apply_rule_(lion_rule, (p, m, g), hyper, backend="auto")
        assert before == LAUNCHES
    finally:
        register(("cpu",))


@pytest.mark.parametrize("name", ["AdamW8bit", "Lion8bit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eightbit_kernels_match_the_loop(name: str, dtype: torch.dtype) -> None:
    from optforge.optim import AdamW8bit, Lion8bit

    cls = {"AdamW8bit": AdamW8bit, "Lion8bit": Lion8bit}[name]
    sizes = [1, 255, 256, 257, 1031]  # quantization block 256; 1031 is prime
    gen = torch.Generator().manual_seed(4)
    ref = [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in sizes]
    params = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_ref = cls(ref, lr=1e-2, weight_decay=0.1, min_8bit_size=1, backend="loop")
    opt = cls(params, lr=1e-2, weight_decay=0.1, min_8bit_size=1)  # auto: the kernel
    key = name.lower()
    for _ in range(3):
        for a, b in zip(ref, params):
            a.grad = torch.randn(a.shape, generator=gen).to(dtype)
            b.grad = a.grad.clone()
        before = LAUNCHES.get(key, 0)
        opt_ref.step()
        opt.step()
        assert LAUNCHES[key] - before == 1
    for a, b in zip(ref, params):
        if dtype == torch.float32:
            torch.testing.assert_close(b, a, rtol=1.3e-6, atol=1e-6)
        else:  # the loop's bf16 param is rounded once too: equal
            assert torch.equal(b, a)
        for k, value in opt_ref.state[a].items():
            other = opt.state[b][k]
            assert other.dtype == value.dtype, k
            if value.dtype == torch.uint8:
                assert (other.int() - value.int()).abs().max() <= 1, k
                assert (other != value).float().mean() <= 0.01, k
            else:
                torch.testing.assert_close(other, value, rtol=1e-5, atol=1e-8)


def test_non_contiguous_tensors_take_the_loop_and_the_rest_one_launch() -> None:
    base = torch.randn(2, 3, 4, 5)
    dense = [torch.randn(BLOCK + 1), base.to(memory_format=torch.channels_last)]
    p = [t.clone() for t in dense]
    m = [torch.zeros(BLOCK + 1), torch.zeros_like(dense[1])]  # channels_last state too
    g = [torch.randn(BLOCK + 1), torch.randn(2, 3, 4, 5)]
    ref = [[t.clone() for t in p], [t.clone() for t in m], g]
    hyper = dict(lr=1e-2, weight_decay=0.1, maximize=False, beta1=0.9, beta2=0.99)
    before = LAUNCHES.get("lion", 0)
    apply_rule_(lion_rule, (p, m, g), hyper, backend="triton")
    assert LAUNCHES["lion"] - before == 1
    apply_rule_(lion_rule, ref, hyper, backend="loop")
    for a, b in zip(p + m, ref[0] + ref[1]):
        torch.testing.assert_close(a, b)


def _against_loop(sizes, steps: int, data_seed: int, **kw):
    """bf16 parameters stepped by ``AdamW(**kw)`` on ``backend="loop"`` and on ``auto`` (the
    kernel registered) with the same gradients; also the kernel launches of each auto step."""
    gen = torch.Generator().manual_seed(data_seed)
    ref = [torch.nn.Parameter(torch.randn(n, generator=gen).bfloat16()) for n in sizes]
    params = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_ref, opt = AdamW(ref, backend="loop", **kw), AdamW(params, **kw)
    launches = []
    for _ in range(steps):
        for a, b in zip(ref, params):
            a.grad = torch.randn(a.shape, generator=gen).bfloat16()
            b.grad = a.grad.clone()
        opt_ref.step()
        before = LAUNCHES.get("adamw", 0)
        opt.step()
        launches.append(LAUNCHES.get("adamw", 0) - before)
    return ref, opt_ref, params, opt, launches


def test_optimizer_stochastic_rounding_keeps_its_streams_where_a_kernel_serves() -> None:
    """AdamW(stochastic_rounding=True) with the kernel registered: the optimizer's seeded bits
    reach the parameters (the rule's loop runs them), so results equal backend='loop'."""
    ref, _, params, _, launches = _against_loop(
        (5, 1030), 2, 7, lr=1e-3, stochastic_rounding=True, seed=2
    )
    assert launches == [0, 0]  # the loop ran, with the optimizer's bits
    for a, b in zip(ref, params):
        assert torch.equal(a, b)


def test_optimizer_master_weights_run_in_one_launch_and_match_the_loop() -> None:
    """AdamW(master_weights=True) on bf16 parameters: one launch updates the fp32 masters and
    writes each parameter as its master rounded to nearest even."""
    ref, opt_ref, params, opt, launches = _against_loop(SIZES, 3, 8, lr=1e-2, master_weights=True)
    assert launches == [1, 1, 1]
    for a, b in zip(ref, params):
        master = opt.state[b]["master"]
        assert master.dtype == torch.float32
        torch.testing.assert_close(master, opt_ref.state[a]["master"], rtol=1.3e-6, atol=1e-6)
        assert torch.equal(b.detach(), master.bfloat16())


@pytest.mark.parametrize("name", ["adamw", "lion"])
@pytest.mark.parametrize("inv", [2.0**-12, 1 / 3000])  # GradScaler's power of two, and not
def test_the_kernel_unscales_where_it_reads_the_gradient(name: str, inv: float) -> None:
    """``unscaled(rule)`` on the kernel (``inv_grad_scale`` read in the kernel, no extra pass)
    equals the kernel on gradients unscaled first, bit for bit on fp32."""
    from optforge.kernels import unscaled

    rule, n_lists, positive, hyper_at = CASES[name]
    lists = _tensors(n_lists, positive=positive)
    inv = float(torch.tensor(inv, dtype=torch.float32))  # as the optimizer passes it
    ref = _clone(lists)
    ref[-1] = [g * inv for g in ref[-1]]
    before = LAUNCHES.get(name, 0)
    apply_rule_(unscaled(rule, n_lists - 1), lists, {**hyper_at(3), "inv_grad_scale": inv},
                backend="triton")
    assert LAUNCHES[name] - before == 1  # one launch, no separate unscale
    apply_rule_(rule, ref, hyper_at(3), backend="triton")
    for a, b in zip(lists[: rule.n_out], ref[: rule.n_out]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("name", ["AdamW", "Lion", "AdamW8bit", "Lion8bit"])
def test_grad_scaler_loop_on_the_kernels(name: str) -> None:
    """A GradScaler loop with inf steps on the Triton kernels (``auto`` picks them): equal to
    unscaling and skipping by hand on the same kernels; an inf step launches nothing."""
    from tests.optim.test_grad_scaler import _assert_same, _reference_run, _scaler_run

    kernel = {"AdamW": "adamw", "Lion": "lion", "AdamW8bit": "adamw8bit",
              "Lion8bit": "lion8bit"}[name]  # fmt: skip
    before = LAUNCHES.get(kernel, 0)
    params, opt, _ = _scaler_run(name, "auto")
    launched = LAUNCHES.get(kernel, 0) - before
    ref_params, ref_opt = _reference_run(name, "auto")
    _assert_same(params, opt, ref_params, ref_opt)
    assert launched == LAUNCHES.get(kernel, 0) - before - launched > 0  # skipped steps: none
