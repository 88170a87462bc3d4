"""Quality-diversity test problems.

``sphere`` is the linear-projection sphere of Fontaine et al. 2020 (arXiv 1912.02400, Sec. 4), as
in pyribs' ``examples/sphere.py``: the optimum moves to ``x_i = 0.4 * 5.12``, objectives are
rescaled to [0, 100] (100 at the optimum), and the two measures are sums of the clipped first and
second halves of ``x``, each within ``+-(d / 2) * 5.12`` (``+-256`` for ``d = 100``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["sphere", "sphere_measure_range", "sphere_one"]

_BOUND = 5.12
_SHIFT = 0.4 * _BOUND


def sphere(solutions: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(objectives (n,), measures (n, 2))`` of ``solutions (n, d)``, ``d`` even.

    ``f(x) = 100 (sum_i (x_i - s)^2 - W) / (0 - W)``, ``W = d (-5.12 - s)^2``, ``s = 2.048``
    (unclipped ``x``); ``clip(x_i) = x_i if |x_i| <= 5.12 else 5.12 / x_i``;
    measures ``= (sum_{i < d/2} clip(x_i), sum_{i >= d/2} clip(x_i))``.
    """
    x = np.asarray(solutions, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[1] % 2:
        raise ValueError(
            f"solutions must have shape (n, d) with d even and >= 2 (got shape {x.shape})"
        )
    d = x.shape[1]
    worst = d * (-_BOUND - _SHIFT) ** 2
    raw = np.sum((x - _SHIFT) ** 2, axis=1)
    objectives = (raw - worst) / (0.0 - worst) * 100.0
    clipped = x.copy()
    out = np.abs(x) > _BOUND
    clipped[out] = _BOUND / x[out]
    half = d // 2
    measures = np.stack([clipped[:, :half].sum(axis=1), clipped[:, half:].sum(axis=1)], axis=1)
    return objectives, measures


def sphere_one(x: Any) -> tuple[float, np.ndarray]:
    """One solution's ``(objective, measures)``: the result type :class:`MapElites` expects."""
    obj, meas = sphere(np.asarray(x, dtype=np.float64)[None])
    return float(obj[0]), meas[0]


def sphere_measure_range(d: int) -> tuple[float, float]:
    """The range of each sphere measure for dimension ``d``: ``(-d/2 * 5.12, d/2 * 5.12)``."""
    return (-d / 2 * _BOUND, d / 2 * _BOUND)
