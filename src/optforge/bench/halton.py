"""Scrambled Halton sequences for quasi-random hyperparameter search.

A port of AlgoPerf's ``algoperf/halton.py`` (itself after google/uncertainty-baselines), the
sampler behind AlgoPerf's external-tuning ruleset (Bousquet et al., "Critical hyper-parameters:
no random, no cry", arXiv 1706.03200). Each dimension is a Van der Corput sequence in its own
prime base, with the digits scrambled by a permutation and the whole dimension shifted by a
uniform offset, both drawn from a legacy ``numpy.random.RandomState`` seeded with the base; the
first ``skip = 100`` points are dropped. The pre-shuffle matrix is reproduced bit for bit.

One deliberate difference: the reference shuffles the rows with numpy's *global* RNG, which its
runner never seeds, so the order of the points (and hence which study gets which point) is not
reproducible there. Here the shuffle takes an explicit ``seed``; ``np.random.seed(seed)`` followed
by the reference ``generate_sequence`` gives the same order.

Example::

    >>> pts = generate_sequence(num_samples=4, num_dims=2, seed=0)
    >>> len(pts), len(pts[0])
    (4, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["default_primes", "generate_primes", "generate_sequence", "van_der_corput"]


def generate_primes(n: int) -> list[int]:
    """Odd primes below ``n`` (2 excluded), by the sieve of Sundaram, as the reference does."""
    half_m1 = int((n - 2) / 2)
    sieve = [False] * (half_m1 + 1)
    for outer in range(1, half_m1 + 1):
        inner = outer
        while outer + inner + 2 * outer * inner <= half_m1:
            sieve[outer + inner + 2 * outer * inner] = True
            inner += 1
    return [2 * i + 1 for i in range(1, half_m1 + 1) if not sieve[i]]


def default_primes(num_dims: int) -> list[int]:
    """The bases the reference uses: the ``num_dims`` odd primes just below the largest one
    under ``1000 * k`` (``k`` grown until there are enough); for ``num_dims <= 166`` these are
    the primes preceding 997."""
    primes: list[int] = []
    attempts = 1
    while len(primes) < num_dims + 1:
        primes = generate_primes(1000 * attempts)
        attempts += 1
    return primes[-num_dims - 1 : -1]


def _is_odd_prime(n: int) -> bool:
    return n > 2 and all(n % i for i in range(2, math.isqrt(n) + 1))


def van_der_corput(
    num_samples: int,
    base: int,
    *,
    per_dim_shift: bool = True,
    permutation: Sequence[int] | None = None,
) -> list[float]:
    """Points ``k = 1 .. num_samples`` of a scrambled, shifted Van der Corput sequence.

    ``u_k = sum_j perm[d_j(k)] / base^(j+1)`` over the base-``base`` digits ``d_j`` of ``k``
    (least significant first), then ``u_k = fmod(u_k + shift, 1)``. ``permutation`` (length
    ``base``, default ``[0] + RandomState(base).shuffle([1..base-1])``) and the shift (the same
    RNG's next ``random_sample()``) follow the reference, draw for draw.
    """
    if not _is_odd_prime(base):
        raise ValueError(f"base must be an odd prime (got {base})")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0 (got {num_samples})")
    rng = np.random.RandomState(base)
    if permutation is None:
        digits = list(range(1, base))
        rng.shuffle(digits)
        permutation = [0, *digits]
    elif len(permutation) != base:
        raise ValueError(
            f"permutation must have length base={base} (got length {len(permutation)})"
        )
    # Drawn after the shuffle, as in the reference, so the shift matches its stream.
    shift = rng.random_sample() if per_dim_shift else 0.0

    out = []
    for k in range(1, num_samples + 1):
        # The summation order and the integer denominators match the reference exactly;
        # a different order would change the last bits.
        value = 0.0
        denominator = base
        while k:
            value += permutation[k % base] / denominator
            denominator *= base
            k //= base
        if per_dim_shift:
            value = math.fmod(value + shift, 1.0)
        out.append(value)
    return out


def generate_sequence(
    num_samples: int,
    num_dims: int,
    *,
    skip: int = 100,
    per_dim_shift: bool = True,
    shuffle: bool = True,
    seed: int = 0,
    primes: Sequence[int] | None = None,
) -> list[tuple[float, ...]]:
    """``num_samples`` points of a ``num_dims``-dimensional scrambled Halton sequence.

    Args:
        num_samples: number of points returned.
        num_dims: dimensions per point; dimension ``d`` uses base ``primes[d]``
            (default :func:`default_primes`).
        skip: leading points dropped (reference default 100) to avoid their correlations.
        per_dim_shift: add the reference's random shift per dimension.
        shuffle: shuffle the rows with ``RandomState(seed)``; ``False`` returns the reference's
            pre-shuffle order.
        seed: seed of the row shuffle.

    Returns:
        a list of ``num_samples`` tuples of ``num_dims`` floats in ``[0, 1)``.
    """
    if skip < 0:
        raise ValueError(f"skip must be >= 0 (got {skip})")
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1 (got {num_dims})")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0 (got {num_samples})")
    if primes is None:
        primes = default_primes(num_dims)
    elif len(primes) != num_dims:
        raise ValueError(f"primes must have length num_dims={num_dims} (got {len(primes)})")
    columns = [
        van_der_corput(num_samples + skip, p, per_dim_shift=per_dim_shift)[skip:] for p in primes
    ]
    rows = list(zip(*columns))
    if shuffle:
        # RandomState.shuffle on a list equals the reference's np.random.shuffle after
        # np.random.seed(seed): both draw from a legacy MT19937 stream.
        np.random.RandomState(seed).shuffle(rows)
    return rows
