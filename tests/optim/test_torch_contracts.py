"""torch's generic optimizer contracts, as an independent reference for optforge's optimizers.

The contracts are those of ``TestOptimRenewed`` in torch's ``test/test_optim.py`` (not installed
with torch; these tests are ours, written from it), driven by the installed
``torch.testing._internal.common_optimizers`` machinery: each optimizer is an ``OptimizerInfo``
(``tests/optim/_torch_contracts_db.py``) with ``optim_inputs_func`` and ``optim_error_inputs_func``
in torch's convention. Entries: ``Lion``, ``SGD``, optforge's ``AdamW`` (id ``optforge_AdamW``),
``LAMB``, ``LARS``, ``GradientNoise(SGD)``, ``AGVM(SGD, start_iter=10**9)`` and torch's ``AdamW``
as a control that must pass every test (a failure on an optforge entry alone is then the
optimizer's, not the test's).

Ported from TestOptimRenewed (same name here):
test_optim_infos_do_not_specify_global_cliquey_kwargs, test_errors,
test_forloop_goes_right_direction, test_param_group_with_lrscheduler_goes_right_direction,
test_tensor_lr, test_complex, test_complex_2d, test_foreach_matches_forloop,
test_fused_matches_forloop, test_fused_error_on_params_on_meta, test_param_groups_weight_decay,
test_param_groups_lr, test_step_is_noop_when_params_have_no_grad, test_step_is_noop_for_zero_grads,
test_optimizer_can_be_printed, test_state_dict_deterministic, test_can_load_older_state_dict,
test_can_load_from_to_named_state_dict, test_save_load_equality_with_weights_only,
test_load_nontensor_step, test_state_dict_pre_hook, test_state_dict_post_hook,
test_state_dict_pre_post_hook, test_load_state_dict_pre_hook_and_prepend,
test_load_state_dict_post_hook, test_load_state_dict_pre_post_hook, test_step_post_hook,
test_step_pre_hook, test_step_all_hooks, test_deepcopy_copies_all_public_attrs,
test_non_empty_state.

Added for issue 7 (contracts torch's optimizers meet that TestOptimRenewed does not spell out):
a weights-only checkpoint round trip continues bit-identically; loading the same state_dict twice;
loading into a deepcopy; deepcopy / pickle / ``torch.save(optimizer)`` then stepping; bf16 and fp16
state dtypes and values kept through a reload; a step with every grad None changes no state;
``add_param_group`` equals constructing with the group; param groups with different
hyperparameters equal separate optimizers; ``step(closure)`` returns the closure's loss.

Deviations from torch's versions: plain pytest parametrization over our entries on CPU instead
of torch's device-type framework; "all inputs" adds ``foreach=True`` on CPU too (our foreach path
runs there) and, to bound compile time, ``fused=True`` only in the checkpoint and copy tests
(first input) and the fused tests (``test_fused_matches_forloop``: first input, fp32, by default;
every input in fp32/fp64/bf16/fp16 under ``slow``); the named-parameter variants of the
state_dict tests run the first input only (names, not the algorithm, are what they add), and the
fp16 state-dtype test the first input (bf16 runs every input); LARS's
required ``lr`` is passed where torch constructs with no kwargs; complex parameters may be
rejected at construction (TypeError/ValueError/NotImplementedError naming "complex") instead of
supported, but if accepted must equal the ``view_as_real`` run exactly; a Tensor lr may be rejected
with TypeError or ValueError naming "lr" (torch requires its own message wording);
``test_complex_2d`` runs only for elementwise methods (LAMB and LARS scale by whole-tensor norms,
so splitting a tensor into real and imaginary tensors legitimately changes their update).

Not ported, with the reason:
- test_rosenbrock_sparse: our optimizers do not support sparse gradients (they reject them: an
  error input in test_errors).
- test_forloop_goes_right_direction_multigpu, test_mixed_device_dtype: need two CUDA devices.
- test_set_default_dtype_works_with_foreach: CUDA only; checks the dtype of torch's ``step``
  tensor under ``torch.set_default_dtype`` (torch's internal step-counter convention).
- test_foreach_large_tensor, test_fused_large_tensor: 2**32-element tensors (64-72 GB).
- test_peak_memory_foreach: CUDA only; budgets torch's own foreach kernels' intermediates by
  optimizer class name.
- test_fused_does_not_step_if_foundinf: checks torch's fused kernels' ``grad_scale``/``found_inf``
  attributes (GradScaler's internal protocol with torch's fused optimizers).
- test_cpu_load_state_dict: CUDA only; torch's capturable/fused state placement.
- test_state_dict_with_cuda_params: CUDA only (the CPU half is test_state_dict_deterministic).
- test_second_order_optims_return_consistent_types: LBFGS-only (step_requires_closure).
- test_fused_cpu_matches_cuda: needs CUDA.
- test_defaults_changed_to_foreach: CUDA only; patches torch's private ``_multi_tensor_<name>``
  functions.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")

from torch.nn import Parameter  # noqa: E402
from torch.optim import SGD, Optimizer  # noqa: E402
from torch.optim.lr_scheduler import ReduceLROnPlateau  # noqa: E402
from torch.optim.optimizer import (  # noqa: E402
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.testing._internal.common_optimizers import (  # noqa: E402
    OptimizerErrorEnum,
    OptimizerInput,
)

from tests.optim._torch_contracts_db import (  # noqa: E402
    ALL_OPTIM_DB,
    LARS,
    ForgeOptimizerInfo,
)

DEVICE = "cpu"

# Required kwargs where torch constructs an optimizer with none (LARS has no default lr).
REQUIRED: dict[Any, dict[str, Any]] = {LARS: {"lr": 1.0}}


def _info_id(info: ForgeOptimizerInfo) -> str:
    return info.name


all_infos = pytest.mark.parametrize("info", ALL_OPTIM_DB, ids=_info_id)


def _infos_with(impl: str) -> list[ForgeOptimizerInfo]:
    return [i for i in ALL_OPTIM_DB if impl in i.supported_impls]


def all_inputs(
    info: ForgeOptimizerInfo, skip: tuple[str, ...] = (), fused_inputs: int = 0
) -> list[OptimizerInput]:
    """torch's ``_get_optim_inputs_including_global_cliquey_kwargs``: every input with each
    supported flag False, plus one config per flag set True (fused only for the first
    ``fused_inputs`` inputs: each new fused configuration compiles, seconds on 2 cores)."""
    impls = [f for f in info.supported_impls if f not in skip and f != "differentiable"]
    out = []
    for i, inp in enumerate(info.optim_inputs_func(device=DEVICE)):
        base = copy.deepcopy(inp.kwargs)
        for f in impls:
            base[f] = False
        out.append(OptimizerInput(params=None, kwargs=base, desc=inp.desc))
        for flag in impls:
            if flag == "fused" and i >= fused_inputs:
                continue
            kw = copy.deepcopy(inp.kwargs)
            for f in impls:
                kw[f] = f == flag
            out.append(OptimizerInput(params=None, kwargs=kw, desc=f"{inp.desc}, {flag}"))
    return out


def named_variant_inputs(info: ForgeOptimizerInfo, full: bool) -> list[OptimizerInput]:
    """Every input for the plain-params variant; for the named-params variants (which exercise
    param names, not the algorithm) the first input with each implementation flag."""
    inputs = all_inputs(info)
    if full:
        return inputs
    first = info.optim_inputs_func(device=DEVICE)[0].desc
    return [i for i in inputs if i.desc == first or i.desc.startswith(first + ", ")]


def _linear_loss(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (w.mv(x) + b).pow(2).sum()


def _fwd_bwd(opt: Optimizer, w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    opt.zero_grad()
    loss = _linear_loss(w, b, x)
    loss.backward()
    return loss


def _maximize(opt: Optimizer, kwargs: dict[str, Any]) -> bool:
    return bool(kwargs.get("maximize", False))


def _assert_state_equal(a: Any, b: Any, path: str = "state") -> None:
    """Exact equality of nested state (tensors: same dtype, shape and values, NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: tensor vs {type(b).__name__}"
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        assert (
            torch.equal(a, b)
            or torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(), b.nan_to_num())
        ), f"{path}: values differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a)} vs {set(b)}"
        for k in a:
            _assert_state_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} vs {b!r}"


def _opt_state(opt: Optimizer, params: list[torch.Tensor]) -> list[dict[str, Any]]:
    return [dict(opt.state[p]) if p in opt.state else {} for p in params]


def _check_error(error_type: Any, regex: str, fn: Callable[[], Any]) -> None:
    if isinstance(error_type, type) and issubclass(error_type, Warning):
        with pytest.warns(error_type, match=regex):
            fn()
    else:
        with pytest.raises(error_type, match=regex):
            fn()


# ------------------------------------------------------------------------------------------------
# OptimizerInfo conventions and errors
# ------------------------------------------------------------------------------------------------
@all_infos
def test_optim_infos_do_not_specify_global_cliquey_kwargs(info: ForgeOptimizerInfo) -> None:
    for optim_input in info.optim_inputs_func(device=DEVICE):
        assert not any(f in optim_input.kwargs for f in ("foreach", "fused", "differentiable"))


@all_infos
def test_errors(info: ForgeOptimizerInfo) -> None:
    for error_input in info.optim_error_inputs_func(device=DEVICE, dtype=torch.float32):
        inp = error_input.optimizer_error_input
        params, kwargs = inp.params, inp.kwargs
        if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            try:
                _check_error(
                    error_input.error_type,
                    error_input.error_regex,
                    functools.partial(info.optim_cls, params, **kwargs),
                )
            except BaseException as e:  # say which case failed
                raise AssertionError(f"error input {inp.desc!r} ({kwargs}): {e}") from e
        else:
            opt = info.optim_cls(params, **kwargs)
            try:
                _check_error(error_input.error_type, error_input.error_regex, opt.step)
            except BaseException as e:
                raise AssertionError(f"error input {inp.desc!r} ({kwargs}): {e}") from e


# ------------------------------------------------------------------------------------------------
# Direction, closures, schedulers, param groups
# ------------------------------------------------------------------------------------------------
@all_infos
@pytest.mark.parametrize("with_lrsched", [True, False], ids=["lrsched", "nosched"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
def test_forloop_goes_right_direction(
    info: ForgeOptimizerInfo, contiguous: bool, with_lrsched: bool
) -> None:
    schedulers_constructors = info.scheduler_inputs if with_lrsched else [None]
    for schedulers_constructor in schedulers_constructors:
        for optim_input in info.optim_inputs_func(device=DEVICE):
            if "foreach" in info.supported_impls:
                optim_input.kwargs["foreach"] = False  # force the for-loop
            if contiguous:
                weight = Parameter(torch.randn(10, 5))
                bias = Parameter(torch.randn(10))
            else:
                weight = Parameter(torch.randn(10, 5, 2)[..., 0])
                bias = Parameter(torch.randn(10, 2)[..., 0])
            x = torch.randn(5)
            optimizer = info.optim_cls([weight, bias], **optim_input.kwargs)
            schedulers = [s(optimizer) for s in (schedulers_constructor or [])]
            closure = functools.partial(_fwd_bwd, optimizer, weight, bias, x)

            initial_value = closure().item()
            for _ in range(20):
                expected = _linear_loss(weight, bias, x).item()
                loss = optimizer.step(closure)  # step(closure) returns the closure's loss
                assert loss is not None and loss.item() == expected, optim_input.desc
                for scheduler in schedulers:
                    if isinstance(scheduler, ReduceLROnPlateau):
                        scheduler.step(loss)
                    else:
                        scheduler.step()
            final = closure().item()
            if _maximize(optimizer, optim_input.kwargs):
                assert final > initial_value, optim_input.desc
            else:
                assert final < initial_value, optim_input.desc


@all_infos
def test_param_group_with_lrscheduler_goes_right_direction(info: ForgeOptimizerInfo) -> None:
    for schedulers_c in info.scheduler_inputs:
        weight = Parameter(torch.randn(10, 5))
        bias = Parameter(torch.randn(10))
        x = torch.randn(5)
        optimizer = info.optim_cls(
            [{"params": [weight]}, {"params": [bias], "lr": 0.01}],
            **REQUIRED.get(info.optim_cls, {}),
        )
        schedulers = [s(optimizer) for s in schedulers_c]
        closure = functools.partial(_fwd_bwd, optimizer, weight, bias, x)
        initial_value = closure().item()
        for _ in range(20):
            loss = optimizer.step(closure)
            for scheduler in schedulers:
                if isinstance(scheduler, ReduceLROnPlateau):
                    scheduler.step(loss)
                else:
                    scheduler.step()
        assert closure().item() < initial_value


@all_infos
def test_tensor_lr(info: ForgeOptimizerInfo) -> None:
    """A 0-d Tensor lr either gives exactly the float-lr trajectory or is rejected at
    construction with an error naming lr."""
    for optim_input in all_inputs(info):
        weight = Parameter(torch.randn(10, 5))
        weight_c = weight.detach().clone().requires_grad_(True)
        bias = Parameter(torch.randn(10))
        bias_c = bias.detach().clone().requires_grad_(True)
        x = torch.randn(5)
        kwargs = dict(optim_input.kwargs)
        kwargs["lr"] = 1e-3
        optimizer_r = info.optim_cls([weight, bias], **kwargs)
        kwargs["lr"] = torch.tensor(1e-3)
        try:
            optimizer = info.optim_cls([weight_c, bias_c], **kwargs)
        except (TypeError, ValueError) as e:
            assert "lr" in str(e), f"{optim_input.desc}: tensor lr rejected without naming lr: {e}"
            continue
        for _ in range(5):
            optimizer_r.step(functools.partial(_fwd_bwd, optimizer_r, weight, bias, x))
            optimizer.step(functools.partial(_fwd_bwd, optimizer, weight_c, bias_c, x))
            torch.testing.assert_close(weight, weight_c, msg=optim_input.desc)
            torch.testing.assert_close(bias, bias_c, msg=optim_input.desc)


@all_infos
def test_param_groups_weight_decay(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        weight_kwargs = optim_input.kwargs
        bias_kwargs = copy.deepcopy(optim_input.kwargs)
        bias_kwargs["weight_decay"] = 0.0
        weight = Parameter(torch.randn(10, 5))
        bias = Parameter(torch.randn(10))
        x = torch.randn(5)
        optimizer = info.optim_cls(
            [dict(params=[weight], **weight_kwargs), dict(params=[bias], **bias_kwargs)],
            **REQUIRED.get(info.optim_cls, {}),
        )
        initial_value = _linear_loss(weight, bias, x).item()
        for _ in range(20):
            loss = _fwd_bwd(optimizer, weight, bias, x)
            optimizer.step()
        if optim_input.kwargs.get("maximize", False):
            assert loss.item() > initial_value, optim_input.desc
        else:
            assert loss.item() < initial_value, optim_input.desc


@all_infos
def test_param_groups_lr(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        if optim_input.kwargs.get("lr", 0) == 0:
            optim_input.kwargs["lr"] = 1e-3
        weight = Parameter(torch.randn(10, 5))
        bias = Parameter(torch.randn(10))
        irrelevant = Parameter(torch.randn(2))
        irrelevant_clone = irrelevant.detach().clone()
        x = torch.randn(5)
        optimizer = info.optim_cls(
            [dict(params=[weight, bias], **optim_input.kwargs), dict(params=[irrelevant])],
            lr=1e-28,
        )
        initial_value = _linear_loss(weight, bias, x).item()
        for _ in range(20):
            loss = _fwd_bwd(optimizer, weight, bias, x)
            irrelevant.grad = torch.rand_like(irrelevant)
            optimizer.step()
        if optim_input.kwargs.get("maximize", False):
            assert loss.item() > initial_value, optim_input.desc
        else:
            assert loss.item() < initial_value, optim_input.desc
        assert torch.equal(irrelevant.detach(), irrelevant_clone), optim_input.desc


@all_infos
def test_add_param_group_matches_construction(info: ForgeOptimizerInfo) -> None:
    """``add_param_group`` fills the defaults and then steps exactly as a group passed to the
    constructor; a parameter already held is rejected."""
    for optim_input in all_inputs(info):
        torch.manual_seed(0)
        w, b, x = Parameter(torch.randn(4, 3)), Parameter(torch.randn(4)), torch.randn(3)
        w2, b2 = Parameter(w.detach().clone()), Parameter(b.detach().clone())
        extra = {"lr": 0.5 * optim_input.kwargs.get("lr", 1e-3)}
        ref = info.optim_cls([{"params": [w]}, {"params": [b], **extra}], **optim_input.kwargs)
        opt = info.optim_cls([w2], **optim_input.kwargs)
        opt.add_param_group({"params": [b2], **extra})
        assert len(opt.param_groups) == 2
        assert set(opt.param_groups[1]) == set(ref.param_groups[1]), optim_input.desc
        for _ in range(4):
            ref.step(functools.partial(_fwd_bwd, ref, w, b, x))
            opt.step(functools.partial(_fwd_bwd, opt, w2, b2, x))
        assert torch.equal(w, w2) and torch.equal(b, b2), optim_input.desc
        with pytest.raises(ValueError, match="more than one parameter group"):
            opt.add_param_group({"params": [w2]})


@all_infos
def test_param_groups_with_different_hyperparameters_match_separate_optimizers(
    info: ForgeOptimizerInfo,
) -> None:
    """Param groups are equivalent to one optimizer per group (torch's docstring: "Parameter
    groups should be equivalent to having multiple optimizers"), with each group's own lr and
    weight decay. Skipped where a documented cross-group coupling exists: seeded noise indexed
    over all parameters, LAMB's global-norm clipping."""
    if info.noisy:
        pytest.skip("GradientNoise indexes its noise streams over all groups' parameters")
    for optim_input in all_inputs(info):
        if optim_input.kwargs.get("max_grad_norm") is not None:
            continue
        torch.manual_seed(0)
        w, b, x = Parameter(torch.randn(4, 3)), Parameter(torch.randn(4)), torch.randn(3)
        w2, b2 = Parameter(w.detach().clone()), Parameter(b.detach().clone())
        lr = optim_input.kwargs.get("lr", REQUIRED.get(info.optim_cls, {}).get("lr", 1e-3))
        other = {"lr": lr * 0.3, "weight_decay": 0.05}
        both = info.optim_cls([{"params": [w]}, {"params": [b], **other}], **optim_input.kwargs)
        first = info.optim_cls([w2], **optim_input.kwargs)
        second = info.optim_cls([b2], **{**optim_input.kwargs, **other})
        for _ in range(4):
            _fwd_bwd(both, w, b, x)
            both.step()
            first.zero_grad()
            second.zero_grad()
            _linear_loss(w2, b2, x).backward()
            first.step()
            second.step()
        assert torch.equal(w, w2) and torch.equal(b, b2), optim_input.desc


# ------------------------------------------------------------------------------------------------
# Missing and zero gradients
# ------------------------------------------------------------------------------------------------
@all_infos
def test_step_is_noop_when_params_have_no_grad(info: ForgeOptimizerInfo) -> None:
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    old_params = [p.detach().clone() for p in params]
    for optim_input in all_inputs(info):
        optimizer = info.optim_cls(params, **optim_input.kwargs)
        optimizer.step(lambda: torch.tensor([1.0]))
        for p, old in zip(params, old_params):
            assert torch.equal(p, old), optim_input.desc


@all_infos
def test_step_with_all_grads_none_changes_no_state(info: ForgeOptimizerInfo) -> None:
    """After some real steps, a step where every grad is None changes neither the parameters
    nor anything in ``state_dict()`` (torch's optimizers skip such parameters entirely)."""
    for optim_input in all_inputs(info):
        w, b, x = Parameter(torch.randn(4, 3)), Parameter(torch.randn(4)), torch.randn(3)
        optimizer = info.optim_cls([w, b], **optim_input.kwargs)
        for _ in range(3):
            optimizer.step(functools.partial(_fwd_bwd, optimizer, w, b, x))
        before = copy.deepcopy(optimizer.state_dict())
        params_before = [w.detach().clone(), b.detach().clone()]
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        assert torch.equal(w, params_before[0]) and torch.equal(b, params_before[1])
        try:
            _assert_state_equal(before, optimizer.state_dict(), "state_dict()")
        except AssertionError as e:
            raise AssertionError(f"{optim_input.desc}: {e}") from e


@all_infos
def test_step_is_noop_for_zero_grads(info: ForgeOptimizerInfo) -> None:
    param = torch.randn(5, 1, requires_grad=True)
    old_param = param.detach().clone()
    for optim_input in all_inputs(info):
        optimizer = info.optim_cls([param], **optim_input.kwargs)
        # As torch skips weight_decay != 0: settings that move a parameter without a gradient
        # (decay; gradient noise), read from the constructed optimizer (defaults included).
        group = optimizer.param_groups[0]
        if any(group.get(k, getattr(optimizer, k, 0)) for k in info.moves_without_grad):
            continue
        param.grad = torch.zeros_like(param)
        optimizer.step(lambda: torch.tensor([1.0]))
        assert torch.equal(param.detach(), old_param), optim_input.desc


# ------------------------------------------------------------------------------------------------
# Complex parameters
# ------------------------------------------------------------------------------------------------
_COMPLEX_REJECTION = (TypeError, ValueError, NotImplementedError, RuntimeError)


def _construct_or_rejected(info: ForgeOptimizerInfo, params: list, kwargs: dict) -> Any:
    """The optimizer, or None when construction rejects complex params with a clear message."""
    try:
        return info.optim_cls(params, **kwargs)
    except _COMPLEX_REJECTION as e:
        assert "complex" in str(e).lower(), f"rejection of complex params must say so: {e!r}"
        return None


@all_infos
def test_complex(info: ForgeOptimizerInfo) -> None:
    """Complex params are either rejected at construction or updated as their ``view_as_real``
    (torch's contract, with torch's float32 tolerances). With ``fused=True`` a rejection at the
    first step, as torch's own fused kernels do, is accepted too."""
    for optim_input in all_inputs(info):
        complex_params = [
            torch.randn(10, 5, dtype=torch.complex64, requires_grad=True),
            torch.randn(10, dtype=torch.complex64, requires_grad=True),
            torch.randn(10, 5, dtype=torch.float32, requires_grad=True),
        ]
        real_params = [
            (torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_()
            for p in complex_params
        ]
        complex_optimizer = _construct_or_rejected(info, complex_params, optim_input.kwargs)
        if complex_optimizer is None:
            continue
        real_optimizer = info.optim_cls(real_params, **optim_input.kwargs)
        for step in range(3):
            for p, r in zip(complex_params, real_params):
                r.grad = torch.randn_like(r)
                p.grad = torch.view_as_complex(r.grad.clone()) if p.is_complex() else r.grad.clone()
            real_optimizer.step()
            if optim_input.kwargs.get("fused") and step == 0:
                # torch's fused kernels reject complex params at the first step (torch skips
                # fused in its complex tests); accept that, with a message that says why.
                try:
                    complex_optimizer.step()
                except _COMPLEX_REJECTION as e:
                    text = str(e).lower()
                    assert "complex" in text or "floating point" in text, repr(e)
                    break
            else:
                complex_optimizer.step()
            for i, (p, r) in enumerate(zip(complex_params, real_params)):
                got = torch.view_as_real(p) if p.is_complex() else p
                torch.testing.assert_close(  # torch's assertEqual tolerances
                    got,
                    r,
                    msg=lambda m, d=optim_input.desc, s=step, i=i: (
                        f"{d}: step {s}, param {i}: complex params accepted but not updated as "
                        f"their view_as_real: {m}"
                    ),
                )


def _rosenbrock(t: torch.Tensor) -> torch.Tensor:
    x, y = t
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("info", [i for i in ALL_OPTIM_DB if i.elementwise], ids=_info_id)
def test_complex_2d(info: ForgeOptimizerInfo) -> None:
    """Elementwise methods: a complex tensor steps exactly as its real and imaginary parts held
    as two real tensors."""
    for optim_input in all_inputs(info, skip=("fused",)):
        a1 = torch.randn(2, dtype=torch.complex64, requires_grad=True)
        a1_real = a1.real.detach().clone().requires_grad_()
        a1_imag = a1.imag.detach().clone().requires_grad_()
        optim1 = _construct_or_rejected(info, [a1], optim_input.kwargs)
        if optim1 is None:
            continue
        optim2 = info.optim_cls([a1_real, a1_imag], **optim_input.kwargs)
        for _ in range(3):
            optim1.zero_grad()
            optim2.zero_grad()
            _rosenbrock(a1).abs().backward()
            _rosenbrock(torch.complex(a1_real, a1_imag)).abs().backward()
            torch.testing.assert_close(a1.grad.real, a1_real.grad)
            torch.testing.assert_close(a1.grad.imag, a1_imag.grad)
            optim1.step()
            optim2.step()
            torch.testing.assert_close(a1.real, a1_real, msg=optim_input.desc)
            torch.testing.assert_close(a1.imag, a1_imag, msg=optim_input.desc)


# ------------------------------------------------------------------------------------------------
# foreach / fused against the for-loop
# ------------------------------------------------------------------------------------------------
def _derived_parity(
    info: ForgeOptimizerInfo, flag: str, dtype: torch.dtype, n_inputs: int | None = None
) -> None:
    """torch's ``_test_derived_optimizers`` + ``_compare_between``: 7 iterations on a small MLP
    plus a 0-d parameter, with a None-grad step (i == 2) and a frozen layer (i == 3, 4); after
    each iteration every param and state entry of the ``flag=True`` run is compared with the
    for-loop run (dtype default tolerances; 5e-3 for bf16/fp16, as torch) and then set to the
    for-loop value, as torch's ``TensorTracker.pop_check_set`` does (no compounding)."""
    # torch's low-precision allowance for fused vs for-loop (its optim_db toleranceOverride for
    # test_fused_matches_forloop: the for-loop has more dtype casts); defaults otherwise.
    tol = {"atol": 5e-3, "rtol": 5e-3} if dtype in (torch.bfloat16, torch.float16) else {}
    inputs = info.optim_inputs_func(device=DEVICE, dtype=dtype)[:n_inputs]
    for optim_input in inputs:
        models, optimizers = [], []
        x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
        for flag_value in (False, True):
            kwargs = copy.deepcopy(optim_input.kwargs)
            kwargs[flag] = flag_value
            torch.manual_seed(1)
            model = torch.nn.Sequential(
                torch.nn.Linear(2, 3),
                torch.nn.Sigmoid(),
                torch.nn.Linear(3, 1),
                torch.nn.Sigmoid(),
            ).to(dtype)
            empty_param = torch.empty((), dtype=dtype, requires_grad=True)
            empty_param.grad = torch.rand_like(empty_param)
            optimizers.append(info.optim_cls([*model.parameters(), empty_param], **kwargs))
            models.append(model)
        for i in range(7):
            for model, optimizer in zip(models, optimizers):
                optimizer.zero_grad()
                if i == 3:
                    model[2].requires_grad_(False)
                if i == 5:
                    model[2].requires_grad_(True)
                if i != 2:
                    model(x).sum().backward()
                optimizer.step()
            pairs = zip(models[0].parameters(), models[1].parameters())
            for j, (p0, p1) in enumerate(pairs):
                msg = f"{optim_input.desc}, iteration {i}, param {j}"
                torch.testing.assert_close(p1, p0, **tol, msg=lambda m, msg=msg: f"{msg}: {m}")
                with torch.no_grad():
                    p1.copy_(p0)
                s0, s1 = optimizers[0].state[p0], optimizers[1].state[p1]
                assert set(s0) == set(s1), msg
                for k in s0:
                    if not isinstance(s0[k], torch.Tensor):
                        assert s0[k] == s1[k], f"{msg}, {k}"
                        continue
                    torch.testing.assert_close(
                        s1[k], s0[k], **tol, msg=lambda m, msg=msg, k=k: f"{msg}, {k}: {m}"
                    )
                    with torch.no_grad():
                        s1[k].copy_(s0[k])


@pytest.mark.parametrize("info", _infos_with("foreach"), ids=_info_id)
def test_foreach_matches_forloop(info: ForgeOptimizerInfo) -> None:
    _derived_parity(info, "foreach", torch.float64)


@pytest.mark.parametrize("info", _infos_with("fused"), ids=_info_id)
def test_fused_matches_forloop(info: ForgeOptimizerInfo) -> None:
    """float32, the first input (each fused configuration compiles: seconds to minutes on 2
    cores with a cold inductor cache); every input and the other dtypes torch checks are in the
    slow variant below."""
    _derived_parity(info, "fused", torch.float32, n_inputs=1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str
)
@pytest.mark.parametrize("info", _infos_with("fused"), ids=_info_id)
def test_fused_matches_forloop_all_inputs_and_dtypes(
    info: ForgeOptimizerInfo, dtype: torch.dtype
) -> None:
    _derived_parity(info, "fused", dtype)


@pytest.mark.parametrize("info", _infos_with("fused"), ids=_info_id)
def test_fused_error_on_params_on_meta(info: ForgeOptimizerInfo) -> None:
    """Meta parameters with fused=True: torch constructs, raises a clear error at the step, and
    after ``to_empty`` the same optimizer steps real tensors. Issue 7 also allows rejecting meta
    parameters at construction with a message that says so."""
    with torch.device("meta"):
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1)
        )
    try:
        optimizer = info.optim_cls(
            model.parameters(), fused=True, **REQUIRED.get(info.optim_cls, {})
        )
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        assert "meta" in str(e).lower(), f"unclear error on meta params: {e!r}"
        return
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    try:
        optimizer.step()
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        text = str(e).lower()
        assert "meta" in text or "floating point" in text, f"unclear error on meta params: {e!r}"
    optimizer.zero_grad(set_to_none=True)
    model.to_empty(device=DEVICE)
    for p in model.parameters():
        torch.nn.init.normal_(p)
        p.grad = torch.rand_like(p)
    optimizer.step()
    assert all(p.isfinite().all() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# Printing, state_dict, checkpoints
# ------------------------------------------------------------------------------------------------
@all_infos
def test_optimizer_can_be_printed(info: ForgeOptimizerInfo) -> None:
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for optim_input in all_inputs(info):
        assert repr(info.optim_cls(params, **optim_input.kwargs))


def _named(params: list, is_named: bool) -> list:
    return [(f"name{i}", p) for i, p in enumerate(params)] if is_named else params


def _without_param_names(state_dict: dict) -> dict:
    new = copy.deepcopy(state_dict)
    for pg in new["param_groups"]:
        pg.pop("param_names", None)
    return new


@all_infos
@pytest.mark.parametrize("is_named_optim1", [True, False], ids=["named1", "plain1"])
@pytest.mark.parametrize("is_named_optim0", [True, False], ids=["named0", "plain0"])
def test_state_dict_deterministic(
    info: ForgeOptimizerInfo, is_named_optim0: bool, is_named_optim1: bool
) -> None:
    weight = Parameter(torch.randn(2, 3))
    bias = Parameter(torch.randn(2))
    x = torch.randn(3)
    full = not (is_named_optim0 or is_named_optim1)
    for optim_input in named_variant_inputs(info, full):
        optimizer = info.optim_cls(_named([weight, bias], is_named_optim0), **optim_input.kwargs)
        closure = functools.partial(_fwd_bwd, optimizer, weight, bias, x)
        for _ in range(10):
            optimizer.step(closure)
        with torch.no_grad():
            weight_c, bias_c = Parameter(weight.clone()), Parameter(bias.clone())
        optimizer_c = info.optim_cls(
            _named([weight_c, bias_c], is_named_optim1), **optim_input.kwargs
        )
        closure_c = functools.partial(_fwd_bwd, optimizer_c, weight_c, bias_c, x)
        optimizer_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for _ in range(10):
            optimizer.step(closure)
            optimizer_c.step(closure_c)
            assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c), optim_input.desc
        _assert_state_equal(
            _without_param_names(optimizer.state_dict()),
            _without_param_names(optimizer_c.state_dict()),
            "state_dict()",
        )
        optimizer_c.param_groups.extend(optimizer_c.param_groups)
        _assert_state_equal(
            _without_param_names(optimizer.state_dict())["param_groups"][-1],
            _without_param_names(optimizer_c.state_dict())["param_groups"][-1],
            "repeated param group",
        )


def _conv_bn() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2))
    return model, torch.rand(1, 4, 16, 16)


def _module_step(opt: Optimizer, model: torch.nn.Module, x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()


@all_infos
def test_can_load_older_state_dict(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        model, x = _conv_bn()
        optimizer = info.optim_cls(model.parameters(), **optim_input.kwargs)
        for _ in range(3):
            _module_step(optimizer, model, x)
        old_state_dict = copy.deepcopy(optimizer.state_dict())
        for group in old_state_dict["param_groups"]:
            for flag in info.not_og_supported_flags:
                group.pop(flag, None)
        optimizer.load_state_dict(old_state_dict)
        _module_step(optimizer, model, x)


@all_infos
@pytest.mark.parametrize("is_named_optim1", [True, False], ids=["named1", "plain1"])
@pytest.mark.parametrize("is_named_optim0", [True, False], ids=["named0", "plain0"])
def test_can_load_from_to_named_state_dict(
    info: ForgeOptimizerInfo, is_named_optim0: bool, is_named_optim1: bool
) -> None:
    full = not (is_named_optim0 or is_named_optim1)
    for optim_input in named_variant_inputs(info, full):
        model, x = _conv_bn()
        params0 = model.named_parameters() if is_named_optim0 else model.parameters()
        optimizer = info.optim_cls(params0, **optim_input.kwargs)
        for _ in range(3):
            _module_step(optimizer, model, x)
        old_state_dict = copy.deepcopy(optimizer.state_dict())
        params1 = model.named_parameters() if is_named_optim1 else model.parameters()
        optimizer2 = info.optim_cls(params1, **optim_input.kwargs)
        optimizer2.load_state_dict(old_state_dict)
        _module_step(optimizer2, model, x)
        if is_named_optim0 or is_named_optim1:
            assert optimizer2.state_dict()["param_groups"][0]["param_names"] == [
                "0.weight",
                "0.bias",
                "1.weight",
                "1.bias",
            ]


def _save_load(obj: Any, weights_only: bool = True) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


@all_infos
@pytest.mark.parametrize("is_named_optim", [True, False], ids=["named", "plain"])
def test_save_load_equality_with_weights_only(
    info: ForgeOptimizerInfo, is_named_optim: bool
) -> None:
    """torch's test (the saved dict equals the dict, with and without weights_only), then the
    weights-only checkpoint round trip: a fresh optimizer over copies of the parameters, loaded
    from it, continues bit-identically."""
    inputs = (
        all_inputs(info, fused_inputs=1)
        if not is_named_optim
        else named_variant_inputs(info, False)
    )
    for optim_input in inputs:
        weight, bias, x = Parameter(torch.randn(2, 3)), Parameter(torch.randn(2)), torch.randn(3)
        optimizer = info.optim_cls(_named([weight, bias], is_named_optim), **optim_input.kwargs)
        closure = functools.partial(_fwd_bwd, optimizer, weight, bias, x)
        for _ in range(3):
            optimizer.step(closure)
        sd = optimizer.state_dict()
        _assert_state_equal(sd, _save_load(sd, weights_only=False), "torch.load(sd)")
        loaded = _save_load(sd, weights_only=True)
        _assert_state_equal(sd, loaded, "torch.load(sd, weights_only=True)")

        with torch.no_grad():
            weight_c, bias_c = Parameter(weight.clone()), Parameter(bias.clone())
        optimizer_c = info.optim_cls(
            _named([weight_c, bias_c], is_named_optim), **optim_input.kwargs
        )
        optimizer_c.load_state_dict(loaded)
        closure_c = functools.partial(_fwd_bwd, optimizer_c, weight_c, bias_c, x)
        for _ in range(3):
            optimizer.step(closure)
            optimizer_c.step(closure_c)
            assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c), optim_input.desc
        _assert_state_equal(optimizer.state_dict(), optimizer_c.state_dict(), "after resume")


@all_infos
def test_load_state_dict_twice(info: ForgeOptimizerInfo) -> None:
    """Loading the same state_dict twice (as accelerate + the HF Trainer do) works and the
    result continues exactly like the original."""
    for optim_input in all_inputs(info, fused_inputs=1):
        w, b, x = Parameter(torch.randn(4, 3)), Parameter(torch.randn(4)), torch.randn(3)
        optimizer = info.optim_cls([w, b], **optim_input.kwargs)
        for _ in range(3):
            optimizer.step(functools.partial(_fwd_bwd, optimizer, w, b, x))
        sd = _save_load(optimizer.state_dict())
        with torch.no_grad():
            w2, b2 = Parameter(w.clone()), Parameter(b.clone())
        optimizer2 = info.optim_cls([w2, b2], **optim_input.kwargs)
        optimizer2.load_state_dict(sd)
        optimizer2.load_state_dict(sd)
        optimizer2.load_state_dict(optimizer2.state_dict())
        for _ in range(3):
            optimizer.step(functools.partial(_fwd_bwd, optimizer, w, b, x))
            optimizer2.step(functools.partial(_fwd_bwd, optimizer2, w2, b2, x))
            assert torch.equal(w, w2) and torch.equal(b, b2), optim_input.desc


@all_infos
def test_load_nontensor_step(info: ForgeOptimizerInfo) -> None:
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    for optim_input in all_inputs(info):
        optimizer = info.optim_cls(params, **optim_input.kwargs)
        for _ in range(3):
            optimizer.step()
        state_dict = copy.deepcopy(optimizer.state_dict())
        for p_state in state_dict["state"].values():
            if "step" in p_state and torch.is_tensor(p_state["step"]):
                p_state["step"] = p_state["step"].item()
        optimizer.load_state_dict(state_dict)
        optimizer.step()


@all_infos
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_state_dtypes_survive_reload(
    info: ForgeOptimizerInfo, dtype: torch.dtype
) -> None:
    """bf16/fp16 parameters: after a weights-only checkpoint round trip every state tensor has
    the dtype, device and exact value it had when saved, and training continues bit-identically."""
    inputs = all_inputs(info, skip=("fused",))
    if dtype == torch.float16:  # same dtype policy as bf16; the first input suffices
        inputs = inputs[:1]
    for optim_input in inputs:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
        ).to(dtype)
        x = torch.randn(5, 3, dtype=dtype)
        optimizer = info.optim_cls(model.parameters(), **optim_input.kwargs)
        for _ in range(3):
            _module_step(optimizer, model, x)
        saved = copy.deepcopy(_opt_state(optimizer, list(model.parameters())))
        sd = _save_load(optimizer.state_dict())
        model2 = copy.deepcopy(model)
        optimizer2 = info.optim_cls(model2.parameters(), **optim_input.kwargs)
        optimizer2.load_state_dict(sd)
        loaded = _opt_state(optimizer2, list(model2.parameters()))
        for i, (s0, s1) in enumerate(zip(saved, loaded)):
            for k, v in s0.items():
                if isinstance(v, torch.Tensor):
                    assert s1[k].dtype == v.dtype, (
                        f"{optim_input.desc}: state[{i}][{k!r}] was {v.dtype}, "
                        f"loaded as {s1[k].dtype}"
                    )
                    assert s1[k].device == v.device
            _assert_state_equal(s0, s1, f"{optim_input.desc}: state[{i}]")
        for _ in range(3):
            _module_step(optimizer, model, x)
            _module_step(optimizer2, model2, x)
        for p, q in zip(model.parameters(), model2.parameters()):
            assert torch.equal(p, q), optim_input.desc


# ------------------------------------------------------------------------------------------------
# Copies of the optimizer
# ------------------------------------------------------------------------------------------------
@all_infos
def test_deepcopy_copies_all_public_attrs(info: ForgeOptimizerInfo) -> None:
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)

    def public(obj: Any) -> set[str]:
        return {k for k in obj.__dict__ if not k.startswith("_")}

    for optim_input in all_inputs(info):
        optimizer = info.optim_cls(params, **optim_input.kwargs)
        for _ in range(3):
            optimizer.step()
        assert public(optimizer) == public(copy.deepcopy(optimizer)), optim_input.desc


def _copy_deepcopy(opt: Optimizer) -> Optimizer:
    return copy.deepcopy(opt)


def _copy_pickle(opt: Optimizer) -> Optimizer:
    return pickle.loads(pickle.dumps(opt))


def _copy_torch_save(opt: Optimizer) -> Optimizer:
    return _save_load(opt, weights_only=False)


@all_infos
@pytest.mark.parametrize(
    "make_copy",
    [_copy_deepcopy, _copy_pickle, _copy_torch_save],
    ids=["deepcopy", "pickle", "torch_save"],
)
def test_copied_optimizer_steps_like_the_original(
    info: ForgeOptimizerInfo, make_copy: Callable
) -> None:
    """A copy (deepcopy, pickle, torch.save of the optimizer object) owns copies of the params
    and state; given the same gradients it steps exactly like the original."""
    for optim_input in all_inputs(info, fused_inputs=1):
        w, b, x = Parameter(torch.randn(4, 3)), Parameter(torch.randn(4)), torch.randn(3)
        optimizer = info.optim_cls([w, b], **optim_input.kwargs)
        for _ in range(2):
            optimizer.step(functools.partial(_fwd_bwd, optimizer, w, b, x))
        copied = make_copy(optimizer)
        w2, b2 = copied.param_groups[0]["params"]
        assert w2 is not w and torch.equal(w2, w)
        for _ in range(3):
            optimizer.step(functools.partial(_fwd_bwd, optimizer, w, b, x))
            copied.step(functools.partial(_fwd_bwd, copied, w2, b2, x))
            assert torch.equal(w, w2) and torch.equal(b, b2), optim_input.desc
        _assert_state_equal(optimizer.state_dict(), copied.state_dict(), "state_dict()")


@all_infos
def test_load_state_dict_into_deepcopy(info: ForgeOptimizerInfo) -> None:
    """A deepcopy made before training, loaded with the trained optimizer's state_dict and its
    parameters, continues exactly like the original."""
    for optim_input in all_inputs(info):
        w, b, x = Parameter(torch.randn(4, 3)), Parameter(torch.randn(4)), torch.randn(3)
        optimizer = info.optim_cls([w, b], **optim_input.kwargs)
        copied = copy.deepcopy(optimizer)
        for _ in range(3):
            optimizer.step(functools.partial(_fwd_bwd, optimizer, w, b, x))
        w2, b2 = copied.param_groups[0]["params"]
        with torch.no_grad():
            w2.copy_(w)
            b2.copy_(b)
        copied.load_state_dict(_save_load(optimizer.state_dict()))
        for _ in range(3):
            optimizer.step(functools.partial(_fwd_bwd, optimizer, w, b, x))
            copied.step(functools.partial(_fwd_bwd, copied, w2, b2, x))
            assert torch.equal(w, w2) and torch.equal(b, b2), optim_input.desc


# ------------------------------------------------------------------------------------------------
# Hooks
# ------------------------------------------------------------------------------------------------
def _state_dict_pre_hook(optimizer: Optimizer) -> None:
    optimizer.state["test"] = 1


def _state_dict_post_hook(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    if "test" in state_dict["state"]:
        state_dict["state"].pop("test")
        state_dict["ran_state_dict_pre_hook"] = True
    else:
        state_dict["ran_state_dict_pre_hook"] = False
    return state_dict


def _load_state_dict_pre_hook1(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    state_dict["param_groups"][0]["lr"] = 0.002


def _load_state_dict_pre_hook2(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    my_state_dict = copy.deepcopy(state_dict)
    my_state_dict["param_groups"][0]["lr"] = 0.003
    return my_state_dict


def _load_state_dict_post_hook(optimizer: Optimizer) -> None:
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


def _one_param_optimizer(info: ForgeOptimizerInfo, kwargs: dict[str, Any]) -> Optimizer:
    return info.optim_cls([torch.rand(2, 3, requires_grad=True)], **kwargs)


@all_infos
def test_state_dict_pre_hook(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        optim = _one_param_optimizer(info, optim_input.kwargs)
        optim.register_state_dict_pre_hook(_state_dict_pre_hook)
        assert optim.state_dict()["state"]["test"] == 1, optim_input.desc


@all_infos
def test_state_dict_post_hook(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        optim = _one_param_optimizer(info, optim_input.kwargs)
        optim.register_state_dict_post_hook(_state_dict_post_hook)
        state_dict = optim.state_dict()
        assert "ran_state_dict_pre_hook" in state_dict, f"{optim_input.desc}: post hook did not run"
        assert state_dict["ran_state_dict_pre_hook"] is False


@all_infos
def test_state_dict_pre_post_hook(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        optim = _one_param_optimizer(info, optim_input.kwargs)
        optim.register_state_dict_pre_hook(_state_dict_pre_hook)
        optim.register_state_dict_post_hook(_state_dict_post_hook)
        state_dict = optim.state_dict()
        assert "test" not in state_dict["state"], optim_input.desc
        assert state_dict.get("ran_state_dict_pre_hook") is True, optim_input.desc


@all_infos
def test_load_state_dict_pre_hook_and_prepend(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        optim = _one_param_optimizer(info, optim_input.kwargs)
        state_dict = optim.state_dict()
        optim.register_load_state_dict_pre_hook(_load_state_dict_pre_hook1)
        optim.load_state_dict(state_dict)
        assert optim.param_groups[0]["lr"] == 0.002, optim_input.desc
        optim.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2, prepend=True)
        optim.load_state_dict(state_dict)
        # hook2 runs first (prepend), then hook1 overrides its lr.
        assert optim.param_groups[0]["lr"] == 0.002, optim_input.desc


@all_infos
def test_load_state_dict_post_hook(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        optim = _one_param_optimizer(info, optim_input.kwargs)
        optim.register_load_state_dict_post_hook(_load_state_dict_post_hook)
        optim.load_state_dict(optim.state_dict())
        assert optim.state.get("ran_load_state_dict_post_hook") is True, optim_input.desc
        assert optim.state["ran_load_state_dict_pre_hook2"] is False, optim_input.desc


@all_infos
def test_load_state_dict_pre_post_hook(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        optim = _one_param_optimizer(info, optim_input.kwargs)
        optim.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2)
        optim.register_load_state_dict_post_hook(_load_state_dict_post_hook)
        optim.load_state_dict(optim.state_dict())
        assert optim.state.get("ran_load_state_dict_pre_hook2") is True, optim_input.desc
        assert optim.state.get("ran_load_state_dict_post_hook") is True, optim_input.desc


def _adder(data: list[int], amount: int) -> Callable[..., None]:
    def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
        data[0] += amount

    return hook


def _appender(data: list[int], value: int) -> Callable[..., None]:
    def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
        data.append(value)

    return hook


@all_infos
def test_step_post_hook(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        data = [2]
        optim = info.optim_cls([torch.tensor([1.0, 1.0])], **optim_input.kwargs)
        handle = optim.register_step_post_hook(_adder(data, 2))
        optim.step()
        optim.step()
        assert data[0] == 6, optim_input.desc
        handle.remove()
        optim.step()
        assert data[0] == 6, optim_input.desc


@all_infos
def test_step_pre_hook(info: ForgeOptimizerInfo) -> None:
    for optim_input in all_inputs(info):
        data = [5]
        optim = info.optim_cls([torch.tensor([1.0, 1.0])], **optim_input.kwargs)
        handle = optim.register_step_pre_hook(_adder(data, 2))
        optim.step()
        optim.step()
        assert data[0] == 9, optim_input.desc
        handle.remove()
        optim.step()
        assert data[0] == 9, optim_input.desc


@all_infos
def test_step_all_hooks(info: ForgeOptimizerInfo) -> None:
    params = [torch.tensor([1.0, 1.0])]
    for optim_input in all_inputs(info):
        data: list[int] = []
        optim = info.optim_cls(params, **optim_input.kwargs)
        optim2 = SGD(params)
        handles = [
            register_optimizer_step_pre_hook(_appender(data, 0)),
            register_optimizer_step_post_hook(_appender(data, 5)),
            optim.register_step_pre_hook(_appender(data, 1)),
            optim.register_step_post_hook(_appender(data, 2)),
            optim2.register_step_pre_hook(_appender(data, 1)),
            optim2.register_step_post_hook(_appender(data, 2)),
        ]
        try:
            optim.step()
            assert data == [0, 1, 2, 5], f"{optim_input.desc}: hooks ran as {data}"
            optim2.step()
            assert data == [0, 1, 2, 5] * 2
            optim.step()
            assert data == [0, 1, 2, 5] * 3, f"{optim_input.desc}: hooks ran as {data}"
        finally:
            for h in handles:
                h.remove()
        optim.step()
        optim2.step()
        assert data == [0, 1, 2, 5] * 3


@all_infos
def test_non_empty_state(info: ForgeOptimizerInfo) -> None:
    model = torch.nn.Linear(5, 5)
    x = torch.rand(2, 5)
    for optim_input in info.optim_inputs_func(device=DEVICE):
        optim = info.optim_cls(model.parameters(), **optim_input.kwargs)
        optim.zero_grad()
        model(x).sum().backward()
        optim.step()
        for state in optim.state.values():
            assert len(state) > 0, optim_input.desc
