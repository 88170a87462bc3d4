"""One optimizer step at ~31M parameters in 53 tensors (a small transformer's shapes),
optforge against torch.optim and lion-pytorch, side by side in one run.

    pytest benchmarks/test_optim_step.py --benchmark-json=bench-step.json
    python benchmarks/step_table.py bench-step.json      # the Markdown table in docs/benchmarks.md
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from optforge.optim import AGVM, LAMB, GradientNoise, Lion

SHAPES = [(1024, 1024)] * 24 + [(1024,)] * 24 + [(4096, 1024)] + [(512, 768)] * 4
NUMEL = sum(torch.Size(s).numel() for s in SHAPES)


def make_params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    return params


def lion_pytorch(params):
    lp = pytest.importorskip("lion_pytorch", reason="lion-pytorch is not installed")
    return lp.Lion(params, lr=1e-4, weight_decay=0.1)


CASES: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "torch AdamW foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
    "torch AdamW fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
    "lion-pytorch Lion": lion_pytorch,
    "optforge Lion loop": lambda p: Lion(p, weight_decay=0.1),
    "optforge Lion foreach": lambda p: Lion(p, weight_decay=0.1, foreach=True),
    "optforge Lion fused": lambda p: Lion(p, weight_decay=0.1, fused=True),
    "optforge Lion fused, check_finite=False": lambda p: Lion(
        p, weight_decay=0.1, fused=True, check_finite=False
    ),
    "optforge LAMB loop": lambda p: LAMB(p),
    "optforge LAMB fused": lambda p: LAMB(p, fused=True),
    "GradientNoise(torch AdamW fused)": lambda p: GradientNoise(
        torch.optim.AdamW(p, lr=1e-3, fused=True), eta=0.01
    ),
    "AGVM(torch AdamW fused), outside its window": lambda p: AGVM(
        torch.optim.AdamW(p, lr=1e-3, fused=True), start_iter=10**9
    ),
}


@pytest.fixture(scope="module")
def params() -> list[torch.nn.Parameter]:
    # One set of tensors for every case: fresh 250 MB allocations per case made timings depend
    # on memory placement (lion-pytorch measured 18 ms or 31 ms depending on case order).
    return make_params()


@pytest.mark.parametrize("name", list(CASES))
def test_step(benchmark, params: list[torch.nn.Parameter], name: str) -> None:
    opt = CASES[name](params)
    opt.step()  # state allocation and, for fused paths, compilation happen outside the timing
    benchmark.extra_info.update(numel=NUMEL, tensors=len(SHAPES), threads=torch.get_num_threads())
    benchmark.pedantic(opt.step, rounds=15, iterations=1, warmup_rounds=2)
