"""The dispatch: every backend matches the loop reference; compiled does not recompile on new lr."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from optforge.kernels import Rule, apply_rule_


def _axpy(y, x, *, alpha, negate):
    """A toy rule: y ← y + alpha·x (or −x)."""
    return (y + alpha * (-x if negate else x),)


axpy_rule = Rule(_axpy, n_out=1)


def run(fused: bool, ys: list[torch.Tensor], xs: list[torch.Tensor], alpha: float) -> None:
    backend = "compiled" if fused else "loop"
    apply_rule_(axpy_rule, (ys, xs), {"alpha": alpha, "negate": False}, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fused_matches_eager_on_many_shapes(dtype: torch.dtype) -> None:
    shapes = [(9, 41), (341,), (3, 4, 5), (2, 2)]
    xs = [torch.randn(s).to(dtype) for s in shapes]
    eager = [torch.randn(s).to(dtype) for s in shapes]
    fused = [y.clone() for y in eager]
    run(False, eager, xs, 0.3)
    run(True, fused, xs, 0.3)
    # bf16: the compiled kernel rounds once from fp32, eager after each op (one ulp apart)
    tol = {"rtol": 2**-7, "atol": 2**-7} if dtype == torch.bfloat16 else {}
    for a, b in zip(eager, fused):
        torch.testing.assert_close(a, b, **tol)


def test_new_hyperparameter_values_do_not_recompile() -> None:
    ys, xs = [torch.zeros(17)], [torch.ones(17)]
    run(True, ys, xs, 0.1)  # compiles (or reuses the graph of an earlier test)
    before = counters["stats"]["unique_graphs"]
    for alpha in (0.2, 0.3, 0.4):
        run(True, ys, xs, alpha)
    assert counters["stats"]["unique_graphs"] == before
    torch.testing.assert_close(ys[0], torch.full((17,), 1.0))


def test_non_contiguous_tensors_take_the_eager_rule() -> None:
    base = torch.randn(6, 8)
    ys = [base.t()]  # a view: written in place through the view
    xs = [torch.ones(8, 6)]
    expected = base.t() + 0.5
    run(True, ys, xs, 0.5)
    torch.testing.assert_close(base.t(), expected)


@pytest.mark.gpu
def test_fused_on_cuda_matches_eager() -> None:
    xs = [torch.randn(1000, 37, device="cuda")]
    eager = [torch.randn(1000, 37, device="cuda")]
    fused = [eager[0].clone()]
    run(False, eager, xs, 0.7)
    run(True, fused, xs, 0.7)
    torch.testing.assert_close(eager[0], fused[0])
