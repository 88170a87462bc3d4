"""The base classes: declared state dtypes survive a checkpoint, the parameter index, the
zeroth-order skeleton (a toy SPSA written here passes the conformance suite)."""

from __future__ import annotations

import pytest
import torch

from optforge._seeding import generator_for
from optforge.optim import FirstOrderOptimizer, StateSpec, ZerothOrderOptimizer
from optforge.registry import Capabilities
from optforge.testing import Spec, conformance_cases
from optforge.testing.conformance import round_trip


class ScaledSGD(FirstOrderOptimizer):
    """SGD keeping an fp32 running scale and an int8 sign per element, whatever the param dtype."""

    state_spec = {
        "scale": StateSpec(dtype=torch.float32, shape=()),
        "signs": StateSpec(dtype=torch.int8),
        "count": StateSpec(dtype=torch.int64, shape=(), device="cpu"),
    }

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    def _update_group(self, group, params, grads):
        for p, g in zip(params, grads):
            state = self.state[p]
            state["scale"].mul_(0.5).add_(g.float().abs().mean(), alpha=0.5)
            state["signs"].copy_(torch.sign(g).to(torch.int8))
            state["count"] += 1
            p.add_(g, alpha=-group["lr"])


def test_fp32_and_int8_state_of_bf16_params_keep_their_dtype_and_value() -> None:
    p = torch.nn.Parameter(torch.randn(5, 3).bfloat16())
    opt = ScaledSGD([p])
    p.grad = torch.full_like(p, 0.1234567)
    opt.step()
    saved = round_trip(opt.state_dict())
    assert saved["state"][0]["scale"].dtype == torch.float32
    opt2 = ScaledSGD([torch.nn.Parameter(p.detach().clone())])
    opt2.load_state_dict(saved)
    loaded = opt2.state[opt2.param_groups[0]["params"][0]]
    assert loaded["scale"].dtype == torch.float32 and loaded["signs"].dtype == torch.int8
    assert torch.equal(loaded["scale"], opt.state[p]["scale"])  # torch's loader rounds to bf16
    assert loaded["count"].device.type == "cpu" and int(loaded["count"]) == 1


def test_integer_state_saved_as_float_is_refused() -> None:
    p = torch.nn.Parameter(torch.randn(4))
    opt = ScaledSGD([p])
    p.grad = torch.ones_like(p)
    opt.step()
    saved = round_trip(opt.state_dict())
    saved["state"][0]["signs"] = saved["state"][0]["signs"].float()
    with pytest.raises(
        ValueError, match=r"\['signs'\] has dtype torch.float32, expected torch.int8"
    ):
        opt.load_state_dict(saved)


def test_parameter_index_is_global_and_stable() -> None:
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = ScaledSGD([{"params": [a, b]}, {"params": [c]}])
    assert [opt.param_index(p) for p in (a, b, c)] == [0, 1, 2]
    d = torch.nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [d]})
    assert opt.param_index(d) == 3


class ToySPSA(ZerothOrderOptimizer):
    """Two-sided SPSA with Rademacher directions seeded by (seed, step, parameter index)."""

    state_spec = {"step": StateSpec(dtype=torch.int64, shape=(), device="cpu")}

    def __init__(self, params, lr=1e-2, eps=1e-3, seed=0):
        super().__init__(params, {"lr": lr, "eps": eps, "seed": seed})

    def _directions(self, group):
        out = []
        for p in group["params"]:
            state = self.state[p]
            if not state:
                self._init_state(p, state, group)
            gen = generator_for("cpu", group["seed"], int(state["step"]), self.param_index(p))
            out.append(torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1)
        return out

    def _zo_step(self, closure):
        group = self.param_groups[0]
        params, eps = group["params"], group["eps"]
        zs = self._directions(group)
        for p, z in zip(params, zs):
            p.add_(z, alpha=eps)
        plus = self.evaluate(closure)
        for p, z in zip(params, zs):
            p.add_(z, alpha=-2 * eps)
        minus = self.evaluate(closure)
        coeff = float((plus - minus) / (2 * eps))
        for p, z in zip(params, zs):
            p.add_(z, alpha=eps - group["lr"] * coeff)
            self.state[p]["step"] += 1
        return (plus + minus) / 2


TOY = Spec(
    "ToySPSA",
    ToySPSA,
    configs=[{"lr": 1e-3, "eps": 1e-3}],
    capabilities=Capabilities(uses_gradients=False, needs_closure=True),
    forge=False,
)


@pytest.mark.parametrize(("check", "spec", "config"), conformance_cases([TOY]))
def test_zeroth_order_skeleton_passes_the_suite(check, spec, config) -> None:
    check(spec, config)


def test_zeroth_order_step_needs_a_scalar_closure_and_never_touches_grads() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = ToySPSA([p])
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()
    with pytest.raises(TypeError, match=r"scalar loss \(got \(3,\)\)"):
        opt.step(lambda: p * 2)
    state = torch.get_rng_state()
    loss = opt.step(lambda: (p**2).sum())
    assert p.grad is None and not loss.requires_grad
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never drawn from


def test_checkpoint_saved_before_a_flag_existed_loads_with_the_default() -> None:
    from optforge.optim import Lion

    p = torch.nn.Parameter(torch.randn(3))
    opt = Lion([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    saved = round_trip(opt.state_dict())
    for key in ("backend", "stochastic_rounding", "seed", "foreach", "fused", "maximize"):
        del saved["param_groups"][0][key]
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["backend"] is None and opt.param_groups[0]["seed"] == 0
    del saved["param_groups"][0]["betas"]  # a hyperparameter proper: not this optimizer's dict
    with pytest.raises(ValueError, match=r"lacks \['betas'\]"):
        opt.load_state_dict(saved)
