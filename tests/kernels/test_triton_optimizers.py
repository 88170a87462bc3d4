"""The classes that run issue 10's last kernels by default, on CPU tensors under
TRITON_INTERPRET=1, against the same class on ``backend="loop"``: the low-rank optimizers'
inner Adam (``adam_inner_rule``) and ``optforge.optim.SGD`` (``sgd_momentum_rule``).

The inner-Adam kernel computes Adam's direction in fp32 with the same operations in the same
order as ``optim.rules.adam_direction`` (the bias corrections as host scalars, a correctly
rounded square root), so the low-rank comparison is bit for bit: parameters, moments (fp32
and 8-bit codes), bases and counters, over steps that cross basis refreshes, and across a
checkpoint.
"""

from __future__ import annotations

import io
import os

import pytest
import torch

pytest.importorskip("triton", reason="Triton (the 'triton' extra) is not installed")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "CPU tensors under TRITON_INTERPRET=1 only (GPU checks: benchmarks/kernels_gpu.py)",
        allow_module_level=True,
    )

from optforge.kernels.triton import register  # noqa: E402
from optforge.kernels.triton.launch import LAUNCHES  # noqa: E402
from optforge.lowrank import (  # noqa: E402
    FRUGAL,
    FiraAdamW,
    GaLoreAdamW,
    GaLoreAdamW8bit,
    NaturalGaLoreAdamW,
    QGaLoreAdamW8bit,
    quantize_linear_weights,
)
from optforge.lowrank import projected as projected_module  # noqa: E402
from optforge.optim import SGD  # noqa: E402
from optforge.optim.sgd import sgd_momentum_rule  # noqa: E402

#: every configuration in the lowrank/__init__ table; gaps of 2 so 5 steps refresh 3 times
METHODS = {
    "galore": (GaLoreAdamW, dict(rank=4, update_proj_gap=2, weight_decay=0.1)),
    "galore_std_maximize": (GaLoreAdamW, dict(rank=4, update_proj_gap=2, proj_type="std",
                                              maximize=True)),
    "galore8bit": (GaLoreAdamW8bit, dict(rank=4, update_proj_gap=2, min_8bit_size=32)),
    "qgalore": (QGaLoreAdamW8bit, dict(rank=4, update_proj_gap=2, min_8bit_size=32,
                                       queue_size=2, cos_threshold=-1.0)),
    "natural": (NaturalGaLoreAdamW, dict(rank=4, update_proj_gap=2, natural_history=3)),
    "fira": (FiraAdamW, dict(rank=4, update_proj_gap=2)),
    "frugal": (FRUGAL, dict(density=0.25, update_proj_gap=2)),  # resets: two step counts
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def kernels_on_cpu():
    register(("cpu",))
    yield
    register(())  # withdrawn: ``auto`` must not pick them for the rest of the session


def _model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(3)
    # a wide and a tall matrix (both sides of reverse_std), biases left unprojected; 40×24 =
    # 960 and 24×1030 elements put the unprojected and projected states around one BLOCK
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.Linear(24, 1030)).to(dtype)
    if name == "qgalore":  # INT8 weights stepped by stochastic rounding
        model = quantize_linear_weights(model, target_modules=())
    return model


def _step(model, opt, gen) -> None:
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
    opt.step()


def _pair(name: str, dtype: torch.dtype):
    cls, kw = METHODS[name]
    ref, model = _model(name, dtype), _model(name, dtype)
    return (ref, cls(ref.parameters(), lr=1e-2, backend="loop", **kw),
            model, cls(model.parameters(), lr=1e-2, **kw))  # fmt: skip


def _assert_same(model_a, opt_a, model_b, opt_b) -> None:
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b)
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for pid in state_a:
        assert state_a[pid].keys() == state_b[pid].keys()
        for key, value in state_a[pid].items():
            other = state_b[pid][key]
            assert other.dtype == value.dtype and torch.equal(other, value), (pid, key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_auto_runs_the_inner_kernel_and_equals_the_loop_bit_for_bit(name, dtype) -> None:
    ref, opt_ref, model, opt = _pair(name, dtype)
    gen_ref, gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    launches = []
    for _ in range(5):
        _step(ref, opt_ref, gen_ref)
        before = LAUNCHES.get("adam_inner", 0)
        _step(model, opt, gen)
        launches.append(LAUNCHES.get("adam_inner", 0) - before)
    _assert_same(ref, opt_ref, model, opt)
    # every parameter's inner state in one launch (16-bit parameters keep fp32 inner states);
    # FRUGAL restarts the projected matrices' count at each refresh (steps 3 and 5) while the
    # biases' runs on: two bias corrections, hence two launches, from the first reset on
    assert launches == ([1, 1, 2, 2, 2] if name == "frugal" else [1] * 5)


def test_resume_through_a_checkpoint_on_the_kernel_is_exact() -> None:
    name, dtype = "fira", torch.bfloat16  # fp32 moments for bf16 weights, Fira's norm state
    _, _, model, opt = _pair(name, dtype)
    gen = torch.Generator().manual_seed(6)
    for _ in range(3):  # the next refresh falls after the save
        _step(model, opt, gen)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    cls, kw = METHODS[name]
    resumed = _model(name, dtype)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(resumed.parameters(), lr=1e-2, **kw)
    opt2.load_state_dict(saved["opt"])
    gen2 = torch.Generator().manual_seed(7)
    gen.manual_seed(7)
    for _ in range(3):
        _step(model, opt, gen)
        _step(resumed, opt2, gen2)
    _assert_same(model, opt, resumed, opt2)


def test_inner_chunks_bound_the_waiting_updates_and_change_nothing(monkeypatch) -> None:
    """``INNER_CHUNK`` closes a pass once the waiting projected gradients hold that many
    elements: more launches, the same bits."""
    ref, _, model, opt = _pair("galore", torch.float32)
    opt_ref = GaLoreAdamW(ref.parameters(), lr=1e-2, **METHODS["galore"][1])
    monkeypatch.setattr(projected_module, "INNER_CHUNK", 1)  # one parameter per pass
    gen_ref, gen = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    for _ in range(3):
        before = LAUNCHES.get("adam_inner", 0)
        _step(model, opt, gen)
        assert LAUNCHES["adam_inner"] - before == 4  # two weights, two biases
        monkeypatch.setattr(projected_module, "INNER_CHUNK", 1 << 24)
        _step(ref, opt_ref, gen_ref)
        monkeypatch.setattr(projected_module, "INNER_CHUNK", 1)
    _assert_same(ref, opt_ref, model, opt)


# -- SGD ---------------------------------------------------------------------------------------
def _sgd_fp32_math_bf16_stores(p, buf, grad, first: bool, lr: float, kw: dict) -> None:
    """The bf16 reference: torch's L2 term in the parameters' dtype (the class's pre-pass),
    then the rule in fp32, each stored tensor rounded once to nearest even, in place."""
    wd, maximize = kw.get("weight_decay", 0.0), kw.get("maximize", False)
    if wd:
        grad, maximize = (-grad if maximize else grad).add(p, alpha=wd), False
    hyper = dict(lr=lr, weight_decay=0.0, maximize=maximize, momentum=kw["momentum"],
                 dampening=0.0 if first else kw.get("dampening", 0.0),
                 nesterov=kw.get("nesterov", False))  # fmt: skip
    new_p, new_buf = sgd_momentum_rule(p.float(), buf.float(), grad.float(), **hyper)
    p.copy_(new_p)  # fp32 -> bf16 by copy_: round to nearest even
    buf.copy_(new_buf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "kw",
    [
        dict(momentum=0.9),
        dict(momentum=0.9, dampening=0.3, weight_decay=0.1, maximize=True),
        dict(momentum=0.9, nesterov=True, weight_decay=0.1),
    ],
)
def test_sgd_auto_runs_the_momentum_kernel(kw, dtype) -> None:
    """``optforge.optim.SGD`` with the kernel registered: one launch per step for every
    tensor; fp32 equal to ``backend="loop"`` bit for bit (the same fp32 operations in the same
    order); bf16 equal bit for bit to fp32 math rounded once per store (the loop rounds after
    every bf16 operation, so it is not the bf16 reference)."""
    gen = torch.Generator().manual_seed(9)
    sizes = [(1,), (1023,), (1025,), (31, 33)]
    ref = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in sizes]
    params = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_ref = SGD(ref, lr=0.05, backend="loop", **kw)
    opt = SGD(params, lr=0.05, **kw)
    bufs = [torch.zeros_like(p) for p in ref]
    for step in range(4):  # the first step starts the buffers (dampening 0), the others use it
        for a, b in zip(ref, params):
            a.grad = torch.randn(a.shape, generator=gen).to(dtype)
            b.grad = a.grad.clone()
        if dtype == torch.float32:
            opt_ref.step()
        else:
            with torch.no_grad():
                for a, buf in zip(ref, bufs):
                    _sgd_fp32_math_bf16_stores(a, buf, a.grad, step == 0, 0.05, kw)
        before = LAUNCHES.get("sgd_momentum", 0)
        opt.step()
        assert LAUNCHES["sgd_momentum"] - before == 1
    for a, b, buf in zip(ref, params, bufs):
        if dtype == torch.float32:
            buf = opt_ref.state[a]["momentum_buffer"]
        assert torch.equal(a, b)
        assert opt.state[b]["momentum_buffer"].dtype == dtype
        assert torch.equal(opt.state[b]["momentum_buffer"], buf)
