"""Halton sampler: hand-computed Van der Corput values and an independent plain implementation
of AlgoPerf's ``algoperf/halton.py`` (pre-shuffle matrix, then the seeded shuffle)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optforge.bench.halton import (
    default_primes,
    generate_primes,
    generate_sequence,
    van_der_corput,
)


def _plain_primes(n: int) -> list[int]:
    return [p for p in range(3, n) if all(p % d for d in range(2, int(p**0.5) + 1))]


def _plain_reference(num_samples, num_dims, skip=100):
    """AlgoPerf's generate_sequence(shuffle_sequence=False), written out from its description:
    bases = the num_dims primes before 997; per base p, RandomState(p) shuffles [1..p-1] and
    then draws the shift; point k = sum over base-p digits (LSB first) of perm[d] / p^(j+1),
    plus the shift, mod 1; the first `skip` points are dropped."""
    odd_primes = _plain_primes(1000)
    bases = odd_primes[len(odd_primes) - 1 - num_dims : len(odd_primes) - 1]
    cols = []
    for p in bases:
        rng = np.random.RandomState(p)
        rest = list(range(1, p))
        rng.shuffle(rest)
        perm = [0] + rest
        shift = rng.random_sample()
        col = []
        for k in range(1, num_samples + skip + 1):
            digits = []
            while k:
                digits.append(k % p)
                k //= p
            u = 0.0
            for j, d in enumerate(digits):
                u += perm[d] / p ** (j + 1)
            col.append(math.fmod(u + shift, 1.0))
        cols.append(col[skip:])
    return [tuple(c[i] for c in cols) for i in range(num_samples)]


def test_primes_match_trial_division():
    assert generate_primes(1000) == _plain_primes(1000)
    assert generate_primes(1000)[-1] == 997
    assert default_primes(1) == [991]
    assert default_primes(3) == [977, 983, 991]
    # More dimensions than odd primes below 1000 (167) -> the reference widens the range.
    assert default_primes(170) == _plain_primes(2000)[-171:-1]


def test_van_der_corput_hand_values():
    # Unscrambled base 3 (identity digits, no shift): the textbook radical inverse.
    got = van_der_corput(9, 3, per_dim_shift=False, permutation=[0, 1, 2])
    want = [1 / 3, 2 / 3, 1 / 9, 4 / 9, 7 / 9, 2 / 9, 5 / 9, 8 / 9, 1 / 27]
    assert got == pytest.approx(want, abs=1e-15)
    # Scrambled digits 1 <-> 2: k=3 is "10" in base 3 -> perm[0]/3 + perm[1]/9 = 2/9.
    got = van_der_corput(4, 3, per_dim_shift=False, permutation=[0, 2, 1])
    assert got == pytest.approx([2 / 3, 1 / 3, 2 / 9, 8 / 9], abs=1e-15)


def test_van_der_corput_shift_is_the_rngs_draw_after_the_shuffle():
    rng = np.random.RandomState(5)
    rng.shuffle(list(range(1, 5)))
    shift = rng.random_sample()
    unshifted = van_der_corput(6, 5, per_dim_shift=False)
    shifted = van_der_corput(6, 5)
    assert shifted == pytest.approx([math.fmod(u + shift, 1.0) for u in unshifted], abs=1e-15)


@pytest.mark.parametrize(("n", "d"), [(1, 1), (7, 3), (15, 5)])
def test_pre_shuffle_matrix_matches_plain_reference_exactly(n, d):
    assert generate_sequence(n, d, shuffle=False) == _plain_reference(n, d)


def test_shuffle_equals_reference_with_global_seed():
    rows = _plain_reference(15, 4)
    np.random.seed(1234)  # what the reference would need: its shuffle uses the global RNG
    np.random.shuffle(rows)
    assert generate_sequence(15, 4, seed=1234) == rows
    assert generate_sequence(15, 4, seed=1) != rows
    assert sorted(generate_sequence(15, 4, seed=1)) == sorted(rows)


def test_points_are_in_unit_cube_and_stratified():
    pts = np.array(generate_sequence(200, 6))
    assert pts.shape == (200, 6)
    assert ((pts >= 0) & (pts < 1)).all()
    # Quasi-random: every column covers each tenth of [0, 1) in 200 points.
    for col in pts.T:
        assert len(set(np.floor(col * 10).astype(int))) == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 3, "num_dims": 2, "skip": -1}, r"skip must be >= 0 \(got -1\)"),
        ({"num_samples": 3, "num_dims": 0}, r"num_dims must be >= 1 \(got 0\)"),
        ({"num_samples": 3, "num_dims": 2, "primes": [3]}, r"primes must have length"),
        ({"num_samples": 3, "num_dims": 1, "primes": [4]}, r"base must be an odd prime \(got 4\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_sequence(**kwargs)


def test_bad_permutation_length():
    with pytest.raises(ValueError, match=r"permutation must have length base=3"):
        van_der_corput(2, 3, permutation=[0, 1])
