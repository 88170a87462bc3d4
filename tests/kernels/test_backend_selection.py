"""Which backend ``auto`` picks, without a GPU: every rule with a Triton kernel gets it on CUDA
(availability patched in), never on CPU, and ``backend="triton"`` where no kernel serves the
tensors fails with a message that says what Triton needs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("triton", reason="Triton (the 'triton' extra) is not installed")

from optforge.kernels import apply_rule_, check_backend, resolve_backend  # noqa: E402
from optforge.kernels.triton import available, register, register_if_available  # noqa: E402
from optforge.lowrank import GaLoreAdamW, ProjectedOptimizer  # noqa: E402
from optforge.optim import LAMB, SGD, AdamW, AdamW8bit, Lion, Lion8bit  # noqa: E402
from optforge.optim.adamw import adam_inner_rule, adamw_master_rule, adamw_rule  # noqa: E402
from optforge.optim.eightbit import adamw8bit_rule, lion8bit_rule  # noqa: E402
from optforge.optim.lamb import lamb_rule  # noqa: E402
from optforge.optim.lion import lion_rule  # noqa: E402
from optforge.optim.sgd import sgd_momentum_rule  # noqa: E402

#: every rule a Triton kernel is registered for, and the optimizer class that runs it
RULES = {
    adamw_rule: AdamW,
    adamw_master_rule: AdamW,  # master_weights=True
    lion_rule: Lion,
    lamb_rule: LAMB,
    adamw8bit_rule: AdamW8bit,
    lion8bit_rule: Lion8bit,
    adam_inner_rule: ProjectedOptimizer,  # every low-rank class: GaLore, Fira, FRUGAL, ...
    sgd_momentum_rule: SGD,  # momentum != 0
}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True)
def private_registry(monkeypatch):
    """Registrations made here vanish afterwards, names included: later tests see the
    registry as it was."""
    from optforge.kernels import dispatch

    monkeypatch.setattr(dispatch, "_KERNELS", dict(dispatch._KERNELS))


@pytest.fixture
def cuda_present(monkeypatch):
    """A machine with CUDA and Triton, as far as registration can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_picks_the_triton_kernel_on_cuda_for_every_rule(cuda_present) -> None:
    assert available() and register_if_available()
    for rule in RULES:
        for dtype in DTYPES:
            assert resolve_backend("auto", rule, torch.device("cuda"), dtype) == "triton"
            assert resolve_backend("auto", rule, torch.device("cpu"), dtype) != "triton"


@pytest.mark.parametrize("cls", sorted(set(RULES.values()), key=lambda c: c.__name__))
def test_the_optimizer_classes_run_these_rules(cls) -> None:
    """The classes dispatch the very rule objects the kernels are registered for."""
    assert any(rule in cls.rules for rule in RULES)


def test_without_triton_nothing_registers_and_triton_is_refused(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not available() and register_if_available() is False
    register(())  # as after a session that registered nothing for any device
    for rule in RULES:
        assert resolve_backend("auto", rule, torch.device("cpu"), torch.float32) != "triton"
    p = [torch.nn.Parameter(torch.zeros(3))]
    for cls, kw in ((AdamW, {}), (Lion, {}), (AdamW8bit, {}), (SGD, {"momentum": 0.9}),
                    (GaLoreAdamW, {})):  # fmt: skip
        opt = cls(p, backend="triton", **kw)
        p[0].grad = torch.ones(3)
        with pytest.raises(RuntimeError, match="Triton is installed and a CUDA device"):
            opt.step()
    with pytest.raises(RuntimeError, match="backend 'triton' has no kernel for lion on cpu"):
        apply_rule_(lion_rule, [[torch.zeros(2)]] * 3,
                    dict(lr=0.1, weight_decay=0.0, maximize=False, beta1=0.9, beta2=0.99),
                    backend="triton")  # fmt: skip


def test_unknown_triton_name_explains_what_is_missing(monkeypatch) -> None:
    from optforge.kernels import dispatch

    monkeypatch.setattr(dispatch, "_KERNELS", {})  # a process where nothing was registered
    with pytest.raises(ValueError, match="Triton is installed and a CUDA device"):
        check_backend("triton")
    with pytest.raises(ValueError, match="Triton is installed and a CUDA device"):
        AdamW([torch.nn.Parameter(torch.zeros(2))], backend="triton")
