"""The optimizer contracts every optforge optimizer keeps, runnable against any optimizer.

A ``Spec`` names an optimizer, how to build it, a few hyperparameter configurations, the bad
inputs it must refuse and its ``Capabilities``. ``CHECKS`` are plain functions
``check(spec, config)`` that raise ``AssertionError`` (or the optimizer's own error) when a
contract breaks; ``conformance_cases(specs)`` turns them into pytest parameters:

    import pytest
    from optforge.testing import Spec, conformance_cases

    SPECS = [Spec("MyOpt", MyOpt, configs=[{"lr": 1e-2}])]

    @pytest.mark.parametrize(("check", "spec", "config"), conformance_cases(SPECS))
    def test_my_optimizer(check, spec, config):
        check(spec, config)

Checks use small CPU problems (a few tensors, tens of steps) and no test framework, so they run
anywhere (pytest, a notebook, a CI script). They cover: progress on a smooth objective, closures,
exact resume through ``torch.save``/``torch.load(weights_only=True)`` with every state dtype
kept (fp32, bf16 and fp16 parameters, every backend), loading twice, ``deepcopy`` and ``pickle``
then stepping, state-dict and step hooks, LR schedulers, param groups, ``maximize``, parameters
without gradients, odd tensor sizes (0-d, 1, 7, 4231) and ``channels_last``, complex parameters
(equal to optimizing ``torch.view_as_real``) or their refusal, bad hyperparameters at
construction, in ``add_param_group`` and on load, and damaged checkpoints.
"""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optforge.registry import Capabilities

__all__ = ["CHECKS", "Spec", "check", "conformance_cases", "run_checks"]

Params = list[torch.nn.Parameter]
SHAPES = [(7, 3), (3, 7), (4, 4), (5,)]
ODD_SHAPES = [(), (1,), (7,), (4231,), (2, 3, 4, 5)]


@dataclass
class Spec:
    """One optimizer under test.

    Attributes:
        name: shown in test ids.
        factory: ``factory(params, **config)`` builds the optimizer.
        configs: hyperparameter sets, each run through every per-config check.
        capabilities: what the optimizer supports (decides which checks apply).
        errors: ``(config, error type, message regex)`` it must raise at construction.
        forge: an optforge optimizer (``check_finite``, foreign-state rejection, load checks).
        coupled: param groups influence each other by design (e.g. noise keyed by global index).
        coupling_keys: config keys that couple groups (e.g. global gradient clipping).
    """

    name: str
    factory: Callable[..., Optimizer]
    configs: list[dict[str, Any]]
    capabilities: Capabilities = field(default_factory=Capabilities)
    errors: list[tuple[dict[str, Any], type[Exception], str]] = field(default_factory=list)
    forge: bool = True
    coupled: bool = False
    coupling_keys: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return self.name

    def build(self, params: Any, config: dict[str, Any], **extra: Any) -> Optimizer:
        return self.factory(params, **{**config, **extra})


Check = Callable[[Spec, dict[str, Any]], None]
CHECKS: list[Check] = []


def check(
    *, per_config: bool = True, applies: Callable[[Spec], bool] = lambda spec: True
) -> Callable[[Check], Check]:
    """Register a check; ``per_config=False`` runs it on the first config only."""

    def register(fn: Check) -> Check:
        fn.per_config = per_config  # type: ignore[attr-defined]
        fn.applies = applies  # type: ignore[attr-defined]
        CHECKS.append(fn)
        return fn

    return register


def _cases(specs: list[Spec]) -> Iterator[tuple[Check, Spec, dict[str, Any], str]]:
    for fn in CHECKS:
        for spec in specs:
            if not fn.applies(spec):  # type: ignore[attr-defined]
                continue
            configs = spec.configs if fn.per_config else spec.configs[:1]  # type: ignore[attr-defined]
            for i, config in enumerate(configs):
                yield fn, spec, config, f"{fn.__name__}-{spec.name}-{i}"


def conformance_cases(specs: list[Spec]) -> list[Any]:
    """``pytest.param(check, spec, config, id=...)`` for every check that applies."""
    import pytest

    return [pytest.param(fn, spec, config, id=name) for fn, spec, config, name in _cases(specs)]


def run_checks(specs: list[Spec]) -> dict[str, str]:
    """Run every check outside pytest; returns ``{case id: error}`` for the failures."""
    failures = {}
    for fn, spec, config, name in _cases(specs):
        try:
            fn(spec, config)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            failures[name] = f"{type(exc).__name__}: {exc}"
    return failures


# -- the problem every check runs on ---------------------------------------------------------
def make_params(
    dtype: torch.dtype = torch.float32, seed: int = 0, shapes: list[tuple[int, ...]] = SHAPES
) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]


def objective(params: list[Tensor]) -> Tensor:
    """A smooth non-quadratic loss with its minimum at 0.5 (accumulated in float32)."""
    total = torch.zeros((), dtype=torch.float32)
    for p in params:
        x = torch.view_as_real(p) if p.is_complex() else p
        x = x.float()
        total = total + ((x - 0.5) ** 2).sum() + 0.1 * (x**4).sum()
    return total


def closure_for(spec: Spec, opt: Optimizer, params: list[Tensor]) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        if not spec.capabilities.uses_gradients:
            with torch.no_grad():
                return objective(params)
        opt.zero_grad()
        loss = objective(params)
        loss.backward()
        return loss

    return closure


def run(spec: Spec, opt: Optimizer, params: list[Tensor], steps: int) -> None:
    for _ in range(steps):
        opt.step(closure_for(spec, opt, params))


def round_trip(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``torch.save`` then ``torch.load(weights_only=True)``, as trainers checkpoint."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_state(a: Optimizer, b: Optimizer, pa: list[Tensor], pb: list[Tensor]) -> None:
    for p, q in zip(pa, pb):
        sa, sb = a.state.get(p, {}), b.state.get(q, {})
        assert set(sa) == set(sb), (sorted(sa), sorted(sb))
        for key, value in sa.items():
            other = sb[key]
            if isinstance(value, Tensor):
                assert other.dtype == value.dtype, f"state {key!r}: {other.dtype} != {value.dtype}"
                assert torch.equal(other, value), f"state {key!r} differs"
            else:
                assert other == value, f"state {key!r}: {other!r} != {value!r}"


def assert_params_equal(a: list[Tensor], b: list[Tensor]) -> None:
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and torch.equal(x, y), f"parameter {i} differs"


def _resume_matches(
    spec: Spec, config: dict[str, Any], dtype: torch.dtype, shapes: list[tuple[int, ...]], **extra
) -> None:
    total, split = 6, 3
    ref = make_params(dtype, shapes=shapes)
    ref_opt = spec.build(ref, config, **extra)
    run(spec, ref_opt, ref, total)

    params = make_params(dtype, shapes=shapes)
    opt = spec.build(params, config, **extra)
    run(spec, opt, params, split)
    saved = round_trip({"opt": opt.state_dict(), "params": [p.detach().clone() for p in params]})
    resumed = [torch.nn.Parameter(t) for t in saved["params"]]
    opt2 = spec.build(resumed, config, **extra)
    opt2.load_state_dict(saved["opt"])
    assert_same_state(opt, opt2, params, resumed)
    run(spec, opt2, resumed, total - split)
    assert_params_equal(ref, resumed)


# -- the checks --------------------------------------------------------------------------------
@check()
def goes_downhill_and_closure_returns_loss(spec: Spec, config: dict[str, Any]) -> None:
    params = make_params()
    opt = spec.build(params, config)
    first = opt.step(closure_for(spec, opt, params))
    assert isinstance(first, Tensor), "step(closure) must return the closure's loss"
    run(spec, opt, params, 30)
    assert objective(params).item() < first.item()


@check(applies=lambda s: s.capabilities.exact_resume)
def exact_resume_weights_only(spec: Spec, config: dict[str, Any]) -> None:
    _resume_matches(spec, config, torch.float32, SHAPES)


@check(per_config=False, applies=lambda s: s.capabilities.exact_resume)
def exact_resume_low_precision_keeps_state_dtypes(spec: Spec, config: dict[str, Any]) -> None:
    for dtype in (torch.bfloat16, torch.float16):
        _resume_matches(spec, config, dtype, SHAPES)


@check(per_config=False, applies=lambda s: s.capabilities.exact_resume)
def exact_resume_on_every_backend(spec: Spec, config: dict[str, Any]) -> None:
    for backend in spec.capabilities.backends:
        _resume_matches(spec, config, torch.float32, SHAPES, backend=backend)


@check(per_config=False, applies=lambda s: s.capabilities.exact_resume)
def odd_sizes_and_channels_last(spec: Spec, config: dict[str, Any]) -> None:
    _resume_matches(spec, config, torch.float32, ODD_SHAPES)
    params = make_params(shapes=[(2, 3, 4, 5)])
    with torch.no_grad():
        params[0].data = params[0].data.to(memory_format=torch.channels_last)
    plain = make_params(shapes=[(2, 3, 4, 5)])
    opt, ref = spec.build(params, config), spec.build(plain, config)
    run(spec, opt, params, 3)
    run(spec, ref, plain, 3)
    # A zeroth-order step divides a loss difference by ε: the loss's summation order (memory
    # layout) shows through, amplified, so only first-order methods are held to 1e-6.
    tol = 1e-6 if spec.capabilities.uses_gradients else 1e-3
    torch.testing.assert_close(params[0], plain[0], rtol=tol, atol=tol)


@check(per_config=False, applies=lambda s: s.capabilities.exact_resume)
def load_twice_and_into_a_stepped_optimizer(spec: Spec, config: dict[str, Any]) -> None:
    params = make_params()
    opt = spec.build(params, config)
    run(spec, opt, params, 2)
    saved = round_trip(opt.state_dict())
    other = make_params()
    opt2 = spec.build(other, config)
    run(spec, opt2, other, 1)
    opt2.load_state_dict(saved)
    opt2.load_state_dict(saved)  # what accelerate does before a Trainer resumes
    opt2.load_state_dict(round_trip(opt2.state_dict()))
    assert_same_state(opt, opt2, params, other)


@check(per_config=False)
def deepcopy_and_pickle_then_step(spec: Spec, config: dict[str, Any]) -> None:
    params = make_params()
    opt = spec.build(params, config)
    run(spec, opt, params, 2)
    twin = copy.deepcopy({"params": params, "opt": opt})
    run(spec, opt, params, 3)
    run(spec, twin["opt"], twin["params"], 3)
    assert_params_equal(params, twin["params"])
    blob = pickle.dumps({"params": params, "opt": opt})
    thawed = pickle.loads(blob)
    run(spec, thawed["opt"], thawed["params"], 1)


@check(per_config=False)
def hooks_run_and_can_repair_a_checkpoint(spec: Spec, config: dict[str, Any]) -> None:
    params = make_params()
    opt = spec.build(params, config)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *_: calls.append("step_pre"))
    opt.register_step_post_hook(lambda *_: calls.append("step_post"))
    opt.register_state_dict_pre_hook(lambda *_: calls.append("sd_pre"))

    def tag(_opt: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        calls.append("sd_post")
        return {**state_dict, "tag": 1}

    opt.register_state_dict_post_hook(tag)
    run(spec, opt, params, 1)
    saved = opt.state_dict()
    assert calls == ["step_pre", "step_post", "sd_pre", "sd_post"] and saved["tag"] == 1

    def repair(_opt: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        calls.append("load_pre")
        return {k: v for k, v in state_dict.items() if k != "broken"}

    opt.register_load_state_dict_pre_hook(repair)
    opt.register_load_state_dict_post_hook(lambda *_: calls.append("load_post"))
    damaged = {k: v for k, v in saved.items() if k != "tag"}
    damaged["broken"] = "a key the pre-hook removes"
    opt.load_state_dict(damaged)
    assert calls[-2:] == ["load_pre", "load_post"]


@check(per_config=False)
def lr_scheduler_drives_the_optimizer(spec: Spec, config: dict[str, Any]) -> None:
    params = make_params()
    opt = spec.build(params, config)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lr0 = opt.param_groups[0]["lr"]
    run(spec, opt, params, 1)
    sched.step()
    assert abs(opt.param_groups[0]["lr"] - lr0 / 2) <= 1e-12 * lr0


@check(applies=lambda s: not s.coupled and s.capabilities.uses_gradients)
def param_groups_match_separate_optimizers(spec: Spec, config: dict[str, Any]) -> None:
    if any(k in config for k in spec.coupling_keys):
        return
    lr = config.get("lr", spec.build(make_params(), config).defaults["lr"])
    params = make_params()
    opt = spec.build([{"params": params[:2]}, {"params": params[2:], "lr": lr / 3}], config)
    run(spec, opt, params, 4)
    separate = make_params()
    opt_a = spec.build(separate[:2], config)
    opt_b = spec.build(separate[2:], {**config, "lr": lr / 3})
    closure_a = closure_for(spec, opt_a, separate)
    for _ in range(4):
        opt_b.zero_grad()
        closure_a()
        opt_a.step()
        opt_b.step()
    assert_params_equal(params, separate)


@check(per_config=False, applies=lambda s: s.forge and s.capabilities.uses_gradients)
def maximize_equals_negated_gradient(spec: Spec, config: dict[str, Any]) -> None:
    up, down = make_params(), make_params()
    opt_up, opt_down = spec.build(up, config, maximize=True), spec.build(down, config)
    for _ in range(3):
        opt_up.zero_grad()
        opt_down.zero_grad()
        (-objective(up)).backward()
        objective(down).backward()
        opt_up.step()
        opt_down.step()
    for a, b in zip(up, down):
        torch.testing.assert_close(a, b)


@check(per_config=False, applies=lambda s: s.capabilities.uses_gradients)
def params_without_grad_are_left_alone(spec: Spec, config: dict[str, Any]) -> None:
    params = make_params()
    frozen = params[1].detach().clone()
    opt = spec.build(params, config)
    for _ in range(2):
        opt.zero_grad()
        objective([p for i, p in enumerate(params) if i != 1]).backward()
        opt.step()
    assert params[1].grad is None and torch.equal(params[1], frozen)
    assert not opt.state.get(params[1])
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    opt.step()  # no gradient at all: nothing moves
    assert_params_equal(params, before)


@check(per_config=False, applies=lambda s: s.capabilities.uses_gradients)
def complex_params_follow_their_real_view_or_are_refused(
    spec: Spec, config: dict[str, Any]
) -> None:
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(6, 4, 2, generator=gen)
    z = torch.nn.Parameter(torch.view_as_complex(values.clone()))
    if not spec.capabilities.supports_complex:
        try:
            spec.build([z], config)
        except (TypeError, ValueError, RuntimeError):
            return
        raise AssertionError("complex parameters are neither supported nor refused")
    r = torch.nn.Parameter(values.clone())
    opt_z, opt_r = spec.build([z], config), spec.build([r], config)
    run(spec, opt_z, [z], 4)
    run(spec, opt_r, [r], 4)
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-6, atol=1e-6)


@check(per_config=False)
def bad_hyperparameters_are_refused(spec: Spec, config: dict[str, Any]) -> None:
    import re

    for bad, error, pattern in spec.errors:
        try:
            spec.build(make_params(), {**config, **bad})
        except error as exc:
            assert re.search(pattern, str(exc)), f"{bad}: message {exc!s:.200} !~ {pattern}"
        else:
            raise AssertionError(f"{bad} was accepted")


@check(per_config=False, applies=lambda s: s.forge)
def bad_values_in_added_groups_and_checkpoints_are_refused(
    spec: Spec, config: dict[str, Any]
) -> None:
    params = make_params()
    opt = spec.build(params[:2], config)
    _expect(ValueError, "lr must be", opt.add_param_group, {"params": params[2:], "lr": -1.0})
    _expect(
        TypeError, "maximize must be", opt.add_param_group, {"params": params[2:], "maximize": "no"}
    )
    run(spec, opt, params[:2], 2)
    good = round_trip(opt.state_dict())
    first = next(iter(good["state"]))
    entry = good["state"][first]
    tensor_key = next(k for k, v in entry.items() if isinstance(v, Tensor) and v.dim())
    damaged = [
        ("lr=nan", lambda sd: sd["param_groups"][0].update(lr=float("nan")), "lr must be"),
        ("lr<0", lambda sd: sd["param_groups"][0].update(lr=-5.0), "lr must be"),
        (
            "wrong shape",
            lambda sd: sd["state"][first].update({tensor_key: torch.zeros(13)}),
            "shape",
        ),
        ("emptied state", lambda sd: sd["state"].update({first: {}}), "keeps"),
        ("missing entry", lambda sd: sd["state"][first].pop(tensor_key), "keeps"),
        ("unknown id", lambda sd: sd["state"].update({999: entry}), "999"),
    ]
    before = round_trip(opt.state_dict())
    for what, damage, pattern in damaged:
        sd = copy.deepcopy(good)
        damage(sd)
        try:
            opt.load_state_dict(sd)
        except (ValueError, TypeError) as exc:
            assert "state_dict" in str(exc) and pattern in str(exc), f"{what}: {exc}"
        else:
            raise AssertionError(f"a checkpoint with {what} loaded")
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"], "a refused load changed the groups"


@check(per_config=False, applies=lambda s: s.forge)
def foreign_state_dict_is_refused(spec: Spec, config: dict[str, Any]) -> None:
    # Adagrad: no optforge optimizer keeps exactly its groups and state. (An Adam dict is not
    # foreign to an AdamW, nor an SGD dict to optforge's SGD: same state, same
    # hyperparameters; they load by design.)
    params = make_params()
    other = torch.optim.Adagrad(params, lr=1e-3)
    objective(params).backward()
    other.step()
    _expect(ValueError, "", spec.build(params, config).load_state_dict, other.state_dict())


@check(per_config=False, applies=lambda s: s.capabilities.uses_gradients)
def sparse_gradients_are_refused(spec: Spec, config: dict[str, Any]) -> None:
    param = torch.nn.Parameter(torch.randn(4, 3))
    opt = spec.build([param], config)
    param.grad = torch.randn(4, 3).to_sparse()
    _expect(RuntimeError, "sparse", opt.step)


@check(per_config=False, applies=lambda s: s.forge and s.capabilities.uses_gradients)
def nonfinite_gradient_raises_and_changes_nothing(spec: Spec, config: dict[str, Any]) -> None:
    params = make_params()
    opt = spec.build(params, config)
    run(spec, opt, params, 2)
    before = [p.detach().clone() for p in params]
    state_before = round_trip(opt.state_dict())
    opt.zero_grad()
    objective(params).backward()
    params[2].grad[1, 1] = float("nan")
    _expect(FloatingPointError, "parameter 2 in param group 0", opt.step)
    assert_params_equal(params, before)
    for key, value in state_before["state"][0].items():
        assert torch.equal(opt.state[params[0]][key], value), key


@check(applies=lambda s: bool(s.capabilities.backends))
def backends_match_the_loop(spec: Spec, config: dict[str, Any]) -> None:
    # bf16: a compiled kernel keeps fp32 intermediates and rounds once, the eager path rounds
    # after every op, so after 5 steps they may differ by a few bf16 ulps (2**-7 relative each).
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 4e-2)):
        ref = make_params(dtype)
        ref_opt = spec.build(ref, config, backend="loop")
        run(spec, ref_opt, ref, 5)
        for backend in spec.capabilities.backends:
            params = make_params(dtype)
            opt = spec.build(params, config, backend=backend)
            run(spec, opt, params, 5)
            for p, q in zip(params, ref):
                torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=f"{backend} vs loop")
                for key, value in ref_opt.state[q].items():
                    torch.testing.assert_close(opt.state[p][key], value, rtol=tol, atol=tol)


@check(per_config=False, applies=lambda s: s.forge)
def meta_parameters_are_refused(spec: Spec, config: dict[str, Any]) -> None:
    _expect(
        ValueError,
        "meta device",
        spec.build,
        [torch.nn.Parameter(torch.empty(3, device="meta"))],
        config,
    )


def _expect(error: type[Exception], pattern: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except error as exc:
        assert pattern in str(exc), f"{type(exc).__name__}: {exc!s:.300} lacks {pattern!r}"
    else:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} did not raise {error.__name__}")
