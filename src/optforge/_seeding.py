"""Counter-based randomness: a generator seeded from a tuple of integer keys.

Stochastic components (gradient noise, zeroth-order directions) draw from
``generator_for(device, seed, step, index)`` instead of a stateful global RNG. The stream is a
pure function of its keys, so a checkpoint needs only the keys (plain integers), resuming is
exact, and data-parallel ranks that share the keys draw identical samples.
"""

from __future__ import annotations

import torch

__all__ = ["derive_seed", "generator_for"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that mixes every key (order matters); stable across platforms."""
    h = 0
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h >> 1  # torch seeds must fit in a signed 64-bit integer


def generator_for(device: torch.device | str, *keys: int) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded by ``derive_seed(*keys)``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*keys))
    return gen
