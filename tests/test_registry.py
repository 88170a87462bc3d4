"""create_optimizer / list_optimizers / register_optimizer and the decay/no-decay split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optforge
from optforge.optim import LAMB, Lion, decay_param_groups, register_optimizer


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.ln = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 2, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_lists_optforge_and_torch_optimizers() -> None:
    names = optforge.list_optimizers()
    assert {"lion", "lamb", "lars", "adamw", "sgd", "nadamw"} <= set(names)
    assert names == sorted(names)


def test_builds_decay_and_no_decay_groups_from_a_model() -> None:
    model = Block()
    opt = optforge.create_optimizer("Lion", model, lr=3e-4, weight_decay=1.0)
    assert isinstance(opt, Lion)
    decay, no_decay = opt.param_groups
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(model.proj.weight), id(model.head.weight)}
    assert ids(no_decay) == {
        id(p)
        for p in (model.proj.bias, model.ln.weight, model.ln.bias, model.bn.weight, model.bn.bias)
    }
    assert decay["weight_decay"] == 1.0 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == 3e-4


def test_norm_pattern_matches_the_module_class_not_only_the_name() -> None:
    groups = decay_param_groups(nn.Sequential(nn.Linear(3, 3), nn.GroupNorm(1, 3)), 0.1)
    assert len(groups[1]["params"]) == 3  # the linear bias, GroupNorm weight and bias


def test_params_and_defaults_pass_through() -> None:
    params = [nn.Parameter(torch.zeros(3))]
    opt = optforge.create_optimizer("lamb", params)
    assert isinstance(opt, LAMB)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 0.01
    opt = optforge.create_optimizer("adamw", params, lr=0.5, betas=(0.8, 0.9))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.9)


def test_optforge_adamw_is_registered_beside_torchs() -> None:
    from optforge.optim import AdamW
    from optforge.registry import get_optimizer_entry

    model = Block()
    opt = optforge.create_optimizer("optforge_AdamW", model, lr=3e-4, weight_decay=0.1)
    assert isinstance(opt, AdamW) and [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    # the plain name stays torch's class: the harness's AdamW baseline is measured with it
    assert type(optforge.create_optimizer("adamw", Block())) is torch.optim.AdamW
    caps = get_optimizer_entry("optforge_adamw").capabilities
    assert caps.backends == ("loop", "foreach", "compiled") and caps.supports_complex


def test_nadamw_is_nadam_with_decoupled_decay() -> None:
    opt = optforge.create_optimizer("nadamw", [nn.Parameter(torch.zeros(2))], lr=1e-3)
    assert isinstance(opt, torch.optim.NAdam) and opt.defaults["decoupled_weight_decay"]


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown optimizer 'lino'; did you mean 'lion'"):
        optforge.create_optimizer("lino", Block())


def test_register_and_refuse_silent_overwrite() -> None:
    register_optimizer("test-sgd", torch.optim.SGD, description="for this test")
    try:
        opt = optforge.create_optimizer("test-sgd", Block(), lr=0.1, weight_decay=0.0)
        assert isinstance(opt, torch.optim.SGD)
        with pytest.raises(ValueError, match="already registered"):
            register_optimizer("TEST-SGD", torch.optim.Adam)
    finally:
        from optforge.registry import _REGISTRY

        _REGISTRY.pop("test-sgd", None)


def test_entries_are_lazy_and_carry_capabilities() -> None:
    import subprocess
    import sys

    code = (
        "import sys, optforge; names = optforge.list_optimizers(); "
        "print('lion' in names, 'optforge.optim' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]  # listed without importing optforge.optim
    from optforge.registry import get_optimizer_entry

    entry = get_optimizer_entry("lion")
    assert entry.capabilities.uses_gradients and entry.capabilities.supports_complex
    assert "foreach" in entry.capabilities.backends
    assert entry.factory is Lion


def test_lazy_string_factories_are_checked() -> None:
    with pytest.raises(TypeError, match="module:attribute"):
        register_optimizer("test-bad", "optforge.optim.Lion")


def test_bare_import_exposes_subpackages() -> None:
    import subprocess
    import sys

    code = "import optforge, torch; print(type(optforge.optim.Lion([torch.zeros(2)])).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Lion"
