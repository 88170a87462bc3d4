"""optforge's first-order optimizers under ``torch.amp.GradScaler`` (amp-aware ``step``).

The scaler hands ``step()`` the scaled gradients with ``grad_scale`` and ``found_inf`` set; the
optimizer unscales where its rule reads the gradient and skips every write on an inf/NaN step.
Each test runs a real ``GradScaler("cpu")`` loop beside a reference written here (unscale by
hand, skip by hand, same gradients) and asks for equal bits on fp32: parameters, state, step
counters; the scaler's scale halves on the injected inf step as usual.
"""

from __future__ import annotations

import io

import pytest
import torch

from optforge.kernels import apply_rule_, unscaled
from optforge.lowrank import GaLoreAdamW
from optforge.optim import LAMB, LARS, SGD, AdamW, AdamW8bit, Lion, Lion8bit
from optforge.optim.adamw import adamw_rule
from optforge.optim.base import FirstOrderOptimizer
from optforge.optim.lion import lion_rule

SHAPES = [(64, 80), (4097,), (7,), (300,)]  # 8-bit (with a partial block) and fp32-state sizes
INF_STEPS = {2, 5}  # steps whose gradient gets an inf (after scaling, as an fp16 overflow would)
STEPS = 7

OPTIMIZERS = {
    "AdamW": (AdamW, dict(lr=1e-2, weight_decay=0.1)),
    "Lion": (Lion, dict(lr=1e-3, weight_decay=0.1)),
    "AdamW8bit": (AdamW8bit, dict(lr=1e-2, weight_decay=0.1)),
    "Lion8bit": (Lion8bit, dict(lr=1e-3, weight_decay=0.1)),
    "LARS": (LARS, dict(lr=1e-2, momentum=0.9, weight_decay=1e-3)),
    "LAMB": (LAMB, dict(lr=1e-2, weight_decay=0.01)),  # unscaled in place first (see base)
    "GaLoreAdamW": (GaLoreAdamW, dict(lr=1e-2, rank=8, update_proj_gap=3)),  # in place too
    "SGD": (SGD, dict(lr=1e-2, momentum=0.9, weight_decay=1e-3)),  # in place too (L2 pre-pass)
}
# backends per class that run on CPU without compiling ("auto" on CPU: the C loop for 8-bit)
FAST_BACKENDS = {
    "AdamW": ("loop", "foreach", "auto"),
    "Lion": ("loop", "foreach", "auto"),
    "AdamW8bit": ("loop", "auto"),
    "Lion8bit": ("loop", "auto"),
    "LARS": ("loop", "auto"),
    "LAMB": ("loop", "auto"),
    "GaLoreAdamW": ("loop", "auto"),
    "SGD": ("loop", "foreach", "auto"),
}
CASES = [(name, b) for name, backends in FAST_BACKENDS.items() for b in backends]


def _params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def _loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    """A smooth loss whose gradients change with the parameters and the step."""
    gen = torch.Generator().manual_seed(100 + step)
    total = torch.zeros(())
    for p in params:
        c, d = torch.rand(p.shape, generator=gen), torch.randn(p.shape, generator=gen)
        total = total + (c * p * p).sum() + (d * p).sum()
    return total


def _inject(params: list[torch.nn.Parameter], step: int) -> None:
    if step in INF_STEPS:
        params[step % len(params)].grad.view(-1)[3] = float("inf")


def _make(name: str, params, backend: str):
    cls, kw = OPTIMIZERS[name]
    if name == "GaLoreAdamW":  # its own inner loop, no backend choice
        return cls(params, **kw)
    return cls(params, backend=backend, **kw)


def _scaler_run(name, backend, steps=STEPS, clip=None):
    """(params, optimizer, scales after each step) of a GradScaler loop."""
    params, scaler = _params(), torch.amp.GradScaler("cpu")
    opt = _make(name, params, backend)
    scales = []
    for step in range(steps):
        scaler.scale(_loss(params, step)).backward()
        _inject(params, step)
        if clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        opt.zero_grad()
    return params, opt, scales


def _reference_run(name, backend, steps=STEPS, clip=None):
    """The same loop with the scaler's job done by hand: scale, unscale, skip, halve."""
    params = _params()
    opt = _make(name, params, backend)
    scale = 65536.0
    for step in range(steps):
        (_loss(params, step) * torch.tensor(scale)).backward()
        _inject(params, step)
        inv = torch.tensor(scale, dtype=torch.float64).reciprocal().float()
        for p in params:
            p.grad.mul_(inv)
        finite = all(bool(p.grad.isfinite().all()) for p in params)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        if finite:
            opt.step()
        else:
            scale *= 0.5
        opt.zero_grad()
    return params, opt


def _assert_same(params_a, opt_a, params_b, opt_b) -> None:
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
    for a, b in zip(params_a, params_b):
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, key
            assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_scaler_loop_equals_manual_unscale_and_skip(name: str, backend: str) -> None:
    params, opt, scales = _scaler_run(name, backend)
    ref_params, ref_opt = _reference_run(name, backend)
    _assert_same(params, opt, ref_params, ref_opt)
    # the scale halves on each inf step and nowhere else (growth comes after 2000 steps)
    expected, s = [], 65536.0
    for step in range(STEPS):
        s *= 0.5 if step in INF_STEPS else 1.0
        expected.append(s)
    assert scales == expected
    if "step" in opt.state[params[0]]:  # skipped steps are not counted
        assert float(opt.state[params[0]]["step"]) == STEPS - len(INF_STEPS)


@pytest.mark.parametrize("name", ["AdamW", "Lion", "AdamW8bit", "Lion8bit", "LAMB"])
def test_unscale_then_clip_recipe(name: str) -> None:
    """``scaler.unscale_(opt)`` + ``clip_grad_norm_`` before ``scaler.step``: grad_scale is None
    then, found_inf still skips."""
    params, opt, _ = _scaler_run(name, "auto", clip=1.0)
    ref_params, ref_opt = _reference_run(name, "auto", clip=1.0)
    _assert_same(params, opt, ref_params, ref_opt)


@pytest.mark.parametrize("name", ["AdamW", "AdamW8bit", "Lion8bit"])
def test_resume_mid_run_is_exact(name: str) -> None:
    full_params, full_opt, _ = _scaler_run(name, "auto")
    # first half, checkpoint (optimizer and scaler) through torch.save/load(weights_only=True)
    params = _params()
    opt, scaler = _make(name, params, "auto"), torch.amp.GradScaler("cpu")
    half = 4  # after the first inf step
    for step in range(half):
        scaler.scale(_loss(params, step)).backward()
        _inject(params, step)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "scaler": scaler.state_dict(),
                "params": [p.detach() for p in params]}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    params = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt, scaler = _make(name, params, "auto"), torch.amp.GradScaler("cpu")
    opt.load_state_dict(ckpt["opt"])
    scaler.load_state_dict(ckpt["scaler"])
    for step in range(half, STEPS):
        scaler.scale(_loss(params, step)).backward()
        _inject(params, step)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    _assert_same(params, opt, full_params, full_opt)


def test_check_finite_still_raises_without_a_scaler() -> None:
    params = _params()
    opt = AdamW(params)
    _loss(params, 0).backward()
    _inject(params, 2)
    with pytest.raises(FloatingPointError):
        opt.step()


def test_a_subclass_overriding_step_does_not_claim_amp_support() -> None:
    class Custom(FirstOrderOptimizer):
        def step(self, closure=None):  # reads the gradients itself: would see them scaled
            return None

    class Declared(Custom):
        _step_supports_amp_scaling = True

    assert AdamW._step_supports_amp_scaling and LAMB._step_supports_amp_scaling
    assert not Custom._step_supports_amp_scaling
    assert Declared._step_supports_amp_scaling


def _rule_lists(n_state: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    sizes = [1, 255, 256, 4099, 70000]  # packs, a prime, a tensor sliced into foreach tiles
    lists = [[torch.randn(n, generator=gen) for n in sizes] for _ in range(1 + n_state)]
    if n_state == 2:
        lists[2] = [t.abs() for t in lists[2]]  # exp_avg_sq
    lists.append([torch.randn(n, generator=gen) * 4096 for n in sizes])  # scaled gradients
    return lists


RULES = {
    "adamw": (adamw_rule, 2, dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
                                  maximize=False, bias_correction1=0.19, bias_correction2=0.002)),
    "lion": (lion_rule, 1, dict(lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.1,
                                maximize=True)),
}


def _unscaled_equals_unscaling_first(rule_name: str, backend: str) -> None:
    rule, n_state, hyper = RULES[rule_name]
    lists = _rule_lists(n_state)
    ref = [[t.clone() for t in lst] for lst in lists]
    inv = 1 / 4096
    ref[-1] = [g * inv for g in ref[-1]]
    apply_rule_(rule, ref, hyper, backend="loop")
    apply_rule_(unscaled(rule, n_state + 1), lists, {**hyper, "inv_grad_scale": inv},
                backend=backend)
    for a, b in zip(lists[: n_state + 1], ref[: n_state + 1]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("backend", ["loop", "foreach"])
def test_unscaled_rule_equals_unscaling_first(rule_name: str, backend: str) -> None:
    _unscaled_equals_unscaling_first(rule_name, backend)


@pytest.mark.slow
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_unscaled_rule_compiled_equals_unscaling_first(rule_name: str) -> None:
    _unscaled_equals_unscaling_first(rule_name, "compiled")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["AdamW", "Lion", "LARS", "AdamW8bit"])
def test_scaler_loop_compiled(name: str) -> None:
    params, opt, _ = _scaler_run(name, "compiled")
    ref_params, ref_opt = _reference_run(name, "compiled")
    _assert_same(params, opt, ref_params, ref_opt)


def test_autocast_bf16_model_with_master_weights() -> None:
    """A bf16 model under ``torch.autocast`` with ``AdamW(master_weights=True)``: the scaler
    loop equals the manual one (bf16 parameters, fp32 masters and moments)."""

    def run(use_scaler: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(),
                                    torch.nn.Linear(32, 4)).bfloat16()
        opt = AdamW(model.parameters(), lr=1e-2, master_weights=True)
        scaler, scale = torch.amp.GradScaler("cpu"), 65536.0
        gen = torch.Generator().manual_seed(1)
        for step in range(6):
            x = torch.randn(8, 16, generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x).float().pow(2).mean()
            if use_scaler:
                scaler.scale(loss).backward()
            else:
                (loss * torch.tensor(scale)).backward()
            if step == 3:
                model[0].weight.grad[0, 0] = float("nan")
            if use_scaler:
                scaler.step(opt)
                scaler.update()
            else:
                inv = torch.tensor(scale, dtype=torch.float64).reciprocal().float()
                grads = [p.grad for p in model.parameters()]
                torch._foreach_mul_(grads, inv)
                if all(bool(g.isfinite().all()) for g in grads):
                    opt.step()
                else:
                    scale *= 0.5
            opt.zero_grad()
        return list(model.parameters()), opt

    params, opt = run(True)
    ref_params, ref_opt = run(False)
    _assert_same(params, opt, ref_params, ref_opt)
    assert float(opt.state[params[0]]["step"]) == 5
