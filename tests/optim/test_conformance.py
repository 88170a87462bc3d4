"""Every optforge optimizer passes ``optforge.testing``'s conformance suite; torch's AdamW, as a
control, passes the checks that apply to a torch optimizer (so a failure is the optimizer's,
not the check's)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from optforge.registry import Capabilities, get_optimizer_entry, list_optimizers
from optforge.testing import Spec, conformance_cases, run_checks
from optforge.testing.specs import SPECS

CONTROL = Spec(
    "torch.AdamW",
    torch.optim.AdamW,
    configs=[{"lr": 1e-2}],
    capabilities=Capabilities(supports_complex=True),
    forge=False,
)


def _cases() -> list:
    """Every conformance case; ``backends_match_the_loop`` on the ``"compiled"`` backend only for
    each spec's first config by default, since a cold compile of a rule takes 15-100 s on 2
    cores (LAMB's the longest); ``-m slow`` compiles every config."""
    cases = []
    for case in conformance_cases(SPECS):
        check, spec, config = case.values
        backends = spec.capabilities.backends
        if (
            check.__name__ != "backends_match_the_loop"
            or "compiled" not in backends
            or config is spec.configs[0]
        ):
            cases.append(case)
            continue
        eager = dataclasses.replace(
            spec,
            capabilities=dataclasses.replace(
                spec.capabilities, backends=tuple(b for b in backends if b != "compiled")
            ),
        )
        cases.append(pytest.param(check, eager, config, id=f"{case.id}-uncompiled"))
        cases.append(pytest.param(check, spec, config, id=case.id, marks=pytest.mark.slow))
    return cases


@pytest.mark.parametrize(("check", "spec", "config"), _cases())
def test_conformance(check, spec, config) -> None:
    check(spec, config)


def test_torch_adamw_passes_as_a_control() -> None:
    assert run_checks([CONTROL]) == {}


def test_every_optforge_registry_entry_has_a_spec() -> None:
    ours = set()
    for name in list_optimizers():
        factory = get_optimizer_entry(name).factory
        if isinstance(factory, type) and factory.__module__.startswith("optforge."):
            ours.add(name)
    assert ours and ours <= {spec.name.lower() for spec in SPECS}


def test_a_broken_optimizer_fails_the_suite() -> None:
    class ForgetsOnLoad(torch.optim.SGD):
        def load_state_dict(self, state_dict):  # drops the momentum: resume is not exact
            super().load_state_dict({**state_dict, "state": {}})

    broken = Spec("Forgets", ForgetsOnLoad, configs=[{"lr": 0.05, "momentum": 0.9}], forge=False)
    failures = run_checks([broken])
    assert any(name.startswith("exact_resume_weights_only") for name in failures)
