"""Behaviour every optimizer shares, run over the database in specs.py."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from tests.optim.specs import OPTIMIZERS, OptimSpec

SHAPES = [(7, 3), (3, 7), (4, 4), (5,)]
CASES = [(spec, config) for spec in OPTIMIZERS for config in spec.configs]
CASE_IDS = [f"{spec.name}-{i}" for spec in OPTIMIZERS for i in range(len(spec.configs))]


def make_params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]


def objective(params: list[torch.Tensor]) -> torch.Tensor:
    """A smooth non-quadratic loss with a minimum at 0.5 (float32 accumulation)."""
    return sum(((p.float() - 0.5) ** 2).sum() + 0.1 * (p.float() ** 4).sum() for p in params)


def closure_for(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Any:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(params)
        loss.backward()
        return loss

    return closure


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int) -> None:
    for _ in range(steps):
        opt.step(closure_for(opt, params))


def build(spec: OptimSpec, params: Any, config: dict[str, Any], **extra: Any) -> Any:
    return spec.factory(params, **{**config, **extra})


@pytest.mark.parametrize(("spec", "config"), CASES, ids=CASE_IDS)
def test_goes_downhill_and_closure_returns_loss(spec: OptimSpec, config: dict) -> None:
    params = make_params()
    opt = build(spec, params, config)
    first = opt.step(closure_for(opt, params))
    assert isinstance(first, torch.Tensor)
    run(opt, params, 30)
    assert objective(params).item() < first.item()


@pytest.mark.parametrize(("spec", "config"), CASES, ids=CASE_IDS)
def test_exact_resume_weights_only(spec: OptimSpec, config: dict) -> None:
    total, split = 6, 3
    ref = make_params()
    ref_opt = build(spec, ref, config)
    run(ref_opt, ref, total)

    params = make_params()
    opt = build(spec, params, config)
    run(opt, params, split)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in params]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(t) for t in saved["params"]]
    opt2 = build(spec, resumed, config)
    opt2.load_state_dict(saved["opt"])
    for p_old, p_new in zip(params, resumed):
        for key, value in opt.state[p_old].items():
            loaded = opt2.state[p_new][key]
            assert loaded.dtype == value.dtype, key
            assert torch.equal(loaded, value), key
    run(opt2, resumed, total - split)
    for a, b in zip(ref, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("spec", "config"), CASES, ids=CASE_IDS)
def test_param_groups_match_separate_optimizers(spec: OptimSpec, config: dict) -> None:
    if spec.coupled or any(k in config for k in spec.coupling_keys):
        pytest.skip("this configuration couples param groups by design")
    params = make_params()
    lr = config["lr"]
    opt = build(spec, [{"params": params[:2]}, {"params": params[2:], "lr": lr / 3}], config)
    run(opt, params, 4)

    separate = make_params()
    opt_a = build(spec, separate[:2], config)
    opt_b = build(spec, separate[2:], {**config, "lr": lr / 3})
    for _ in range(4):
        for o in (opt_a, opt_b):
            o.zero_grad()
        objective(separate).backward()
        opt_a.step()
        opt_b.step()
    for a, b in zip(params, separate):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("spec", [s for s in OPTIMIZERS if s.forge], ids=repr)
def test_maximize_equals_negated_gradient(spec: OptimSpec) -> None:
    config = spec.configs[0]
    up = make_params()
    down = make_params()
    opt_up = build(spec, up, config, maximize=True)
    opt_down = build(spec, down, config)
    for _ in range(3):
        for o in (opt_up, opt_down):
            o.zero_grad()
        (-objective(up)).backward()
        objective(down).backward()
        opt_up.step()
        opt_down.step()
    for a, b in zip(up, down):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=repr)
def test_params_without_grad_are_skipped(spec: OptimSpec) -> None:
    params = make_params()
    frozen_before = params[1].detach().clone()
    opt = build(spec, params, spec.configs[0])
    for _ in range(2):
        opt.zero_grad()
        objective([p for i, p in enumerate(params) if i != 1]).backward()
        opt.step()
    assert params[1].grad is None
    assert torch.equal(params[1], frozen_before)
    assert not opt.state.get(params[1])


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=repr)
def test_zero_grad_sets_none(spec: OptimSpec) -> None:
    params = make_params()
    opt = build(spec, params, spec.configs[0])
    objective(params).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=repr)
def test_bfloat16_params(spec: OptimSpec) -> None:
    params32 = make_params()
    params16 = make_params(torch.bfloat16)
    opt32 = build(spec, params32, spec.configs[0])
    opt16 = build(spec, params16, spec.configs[0])
    run(opt32, params32, 3)
    run(opt16, params16, 3)
    for p16, p32 in zip(params16, params32):
        assert p16.dtype == torch.bfloat16
        assert all(
            v.dtype in (torch.bfloat16, torch.float32)
            for v in opt16.state[p16].values()
            if isinstance(v, torch.Tensor)
        )
        torch.testing.assert_close(p16.float(), p32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=repr)
def test_hooks_and_lr_scheduler(spec: OptimSpec) -> None:
    params = make_params()
    opt = build(spec, params, spec.configs[0])
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lr0 = opt.param_groups[0]["lr"]
    run(opt, params, 1)
    sched.step()
    assert calls == ["pre", "post"]
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 / 2)


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=repr)
def test_bad_hyperparameters(spec: OptimSpec) -> None:
    for config, error, pattern in spec.errors:
        with pytest.raises(error, match=pattern):
            build(spec, make_params(), {**spec.configs[0], **config})


@pytest.mark.parametrize("spec", [s for s in OPTIMIZERS if s.forge], ids=repr)
def test_bad_hyperparameters_in_added_group(spec: OptimSpec) -> None:
    opt = build(spec, make_params()[:2], spec.configs[0])
    with pytest.raises(ValueError, match=r"lr must be >= 0"):
        opt.add_param_group({"params": make_params()[2:], "lr": -1.0})


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=repr)
def test_sparse_gradients_rejected(spec: OptimSpec) -> None:
    param = torch.nn.Parameter(torch.randn(4, 3))
    opt = build(spec, [param], spec.configs[0])
    param.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=repr)
def test_state_dict_from_another_optimizer_rejected(spec: OptimSpec) -> None:
    params = make_params()
    other = torch.optim.Adam(params, lr=1e-3)
    run(other, params, 1)
    opt = build(spec, params, spec.configs[0])
    with pytest.raises(ValueError, match="not"):
        opt.load_state_dict(other.state_dict())


@pytest.mark.parametrize("spec", [s for s in OPTIMIZERS if s.forge], ids=repr)
def test_nonfinite_gradient_raises_and_changes_nothing(spec: OptimSpec) -> None:
    params = make_params()
    opt = build(spec, params, spec.configs[0])
    run(opt, params, 2)
    before = [p.detach().clone() for p in params]
    state_before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    opt.zero_grad()
    objective(params).backward()
    params[2].grad[1, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="parameter 2 in param group 0"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    assert all(torch.equal(opt.state[params[0]][k], v) for k, v in state_before.items())

    unchecked = build(spec, params, spec.configs[0], check_finite=False)
    params[2].grad[0, 0] = float("inf")
    unchecked.step()  # torch.optim's behaviour: non-finite values flow through
    touched = [params[2], *unchecked.state[params[2]].values()]
    assert not all(torch.isfinite(t).all() for t in touched)


@pytest.mark.parametrize("spec", [s for s in OPTIMIZERS if len(s.impls) > 1], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backends_match_the_loop(spec: OptimSpec, dtype: torch.dtype) -> None:
    # bf16: the fused kernel keeps fp32 intermediates and rounds once, the eager path rounds after
    # every op, so after 5 steps they may differ by a few bf16 ulps (2**-7 relative each).
    tol = {torch.float32: 1e-5, torch.bfloat16: 4e-2}[dtype]
    for config in spec.configs:
        results = {}
        for impl in spec.impls:
            flags = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(impl, {})
            params = make_params(dtype)
            opt = build(spec, params, config, **flags)
            run(opt, params, 5)
            results[impl] = (params, opt)
        ref_params, ref_opt = results["loop"]
        for impl, (params, opt) in results.items():
            for p, q in zip(params, ref_params):
                torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=f"{impl} vs loop")
                for key, value in ref_opt.state[q].items():
                    torch.testing.assert_close(opt.state[p][key], value, rtol=tol, atol=tol)


def test_finite_check_handles_mixed_dtypes_and_empty_tensors() -> None:
    from optforge.optim import Lion

    params = [torch.nn.Parameter(torch.randn(3, dtype=d)) for d in (torch.float64, torch.bfloat16)]
    params.append(torch.nn.Parameter(torch.zeros(0)))
    opt = Lion(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # finite: no error
    params[1].grad[0] = float("-inf")
    with pytest.raises(FloatingPointError, match="parameter 1 in param group 0"):
        opt.step()
