"""kernels.all_finite: the check every step runs before it writes (check_finite).

On CPU it first sums (a NaN or infinity makes a sum non-finite), and only a non-finite sum, which
finite values can also give by overflowing, goes to the exact extremes."""

from __future__ import annotations

import pytest
import torch

from optforge.kernels import all_finite
from optforge.kernels.foreach import PACK

SIZES = [(), (1,), (7,), (PACK,), (PACK + 1,), (300, 301)]


def _list(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).to(dtype) for s in SIZES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", range(len(SIZES)))
def test_one_non_finite_element_anywhere_is_found(dtype, bad, where):
    ts = _list(dtype)
    assert bool(all_finite(ts))
    ts[where].view(-1)[-1] = bad
    assert not bool(all_finite(ts))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_finite_values_whose_sum_overflows_are_finite(dtype):
    big = torch.finfo(dtype).max
    ts = [torch.full((PACK + 5,), big, dtype=dtype), torch.full((3,), big, dtype=dtype)]
    assert torch.isinf(ts[0].sum()) and bool(all_finite(ts))
    ts[1][0] = float("nan")
    assert not bool(all_finite(ts))


def test_infinities_of_both_signs_are_found():
    # inf + (-inf) is NaN: still non-finite, as it must be
    t = torch.zeros(PACK * 3)
    t[0], t[-1] = float("inf"), -float("inf")
    assert not bool(all_finite([t]))


def test_empty_and_complex():
    assert bool(all_finite([torch.empty(0)]))
    z = torch.randn(5, dtype=torch.complex64)
    assert bool(all_finite([z]))
    z[2] = complex(1.0, float("nan"))
    assert not bool(all_finite([z]))
