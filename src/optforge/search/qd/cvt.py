"""A centroidal Voronoi tessellation of measure space (Vassiliades et al. 2018, CVT-MAP-Elites).

Centroids come from seeded k-means (Lloyd's iterations) on points drawn uniformly in the measure
box, as in pyribs (``cells`` centroids from 100,000 samples, one initialisation); a candidate's
cell is the nearest centroid, found with a k-d tree (``scipy.spatial.cKDTree``, O(log C)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from optforge._validation import check_int, check_non_negative
from optforge.search.base import array_from_state, array_to_state
from optforge.search.qd.archive import ArchiveBase, _as_batch, _check_finite

__all__ = ["CVTArchive", "kmeans_centroids"]


def kmeans_centroids(
    points: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-5,
) -> np.ndarray:
    """Lloyd's k-means on ``points (N, m)``: ``(k, m)`` centroids.

    Initial centroids are ``k`` distinct points drawn with ``np.random.default_rng(seed)``.
    Iterates assign-to-nearest (k-d tree) / move-to-mean until the relative drop of the mean
    squared distance is below ``tol`` or ``max_iter`` iterations; a centroid that loses all its
    points stays where it is.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"points must have shape (N, m) (got shape {points.shape})")
    check_int("k", k, low=1)
    if k > len(points):
        raise ValueError(f"k must be <= the number of points {len(points)} (got {k})")
    check_int("max_iter", max_iter, low=0)
    check_non_negative("tol", tol)
    rng = np.random.default_rng(seed)
    centroids = points[rng.choice(len(points), size=k, replace=False)].copy()
    prev = math.inf
    for _ in range(max_iter):
        from scipy.spatial import cKDTree  # lazily: a grid-archive user never imports scipy

        dist, assign = cKDTree(centroids).query(points)
        distortion = float(np.mean(dist**2))
        counts = np.bincount(assign, minlength=k)
        filled = counts > 0
        for j in range(points.shape[1]):
            sums = np.bincount(assign, weights=points[:, j], minlength=k)
            centroids[filled, j] = sums[filled] / counts[filled]
        if prev - distortion <= tol * distortion:
            break
        prev = distortion
    return centroids


class CVTArchive(ArchiveBase):
    """CVT-MAP-Elites archive: ``cells`` Voronoi cells over a box in measure space.

    Args:
        solution_dim: length of a solution vector.
        centroids: the number of cells ``C`` (centroids computed by k-means), or a ``(C, m)``
            array of precomputed centroids (generate once, reuse), as in pyribs.
        ranges: ``(low, high)`` per measure; samples for k-means are drawn uniformly in this box.
        samples: uniform samples for k-means, default 100,000 (pyribs' default).
        seed: seeds the samples and k-means (the archive is a pure function of its arguments).
        max_iter: Lloyd iterations at most (default 100).
        **kwargs: ``learning_rate``, ``threshold_min``, ``qd_score_offset``.

    Example::

        archive = CVTArchive(solution_dim=10, centroids=1000, ranges=[(-1, 1)] * 2, seed=0)
    """

    def __init__(
        self,
        *,
        solution_dim: int,
        centroids: Any,
        ranges: Sequence[tuple[float, float]],
        samples: int = 100_000,
        seed: int = 0,
        max_iter: int = 100,
        **kwargs: Any,
    ) -> None:
        ranges = [tuple(r) for r in ranges]
        if not ranges:
            raise ValueError("ranges must name at least one measure (got an empty sequence)")
        for j, r in enumerate(ranges):
            if len(r) != 2 or not all(math.isfinite(float(v)) for v in r) or not r[0] < r[1]:
                raise ValueError(
                    f"ranges[{j}] must be a finite (low, high) with low < high (got {r})"
                )
        self.lower_bounds = np.array([r[0] for r in ranges], dtype=np.float64)
        self.upper_bounds = np.array([r[1] for r in ranges], dtype=np.float64)
        m = len(ranges)
        if isinstance(centroids, (int, np.integer)) and not isinstance(centroids, bool):
            cells = int(centroids)
            check_int("centroids", cells, low=1)
            check_int("samples", samples, low=1)
            if samples < cells:
                raise ValueError(f"samples must be >= centroids = {cells} (got {samples})")
            rng = np.random.default_rng(seed)
            pts = rng.uniform(self.lower_bounds, self.upper_bounds, size=(samples, m))
            c = kmeans_centroids(pts, cells, seed=seed, max_iter=max_iter)
        else:
            c = np.array(centroids, dtype=np.float64)
            if c.ndim != 2 or c.shape[1] != m or len(c) == 0:
                raise ValueError(
                    f"centroids must be an int or an array of shape (cells, {m}) "
                    f"({m} = number of ranges) "
                    f"(got shape {c.shape})"
                )
            _check_finite("centroids", c)
        self.centroids = c
        from scipy.spatial import cKDTree  # lazily: a grid-archive user never imports scipy

        self._tree = cKDTree(c)
        super().__init__(solution_dim=solution_dim, cells=len(c), measure_dim=m, **kwargs)

    def index_of(self, measures: Any) -> np.ndarray:
        meas = _as_batch("measures", measures, self.measure_dim, "measure_dim")
        _check_finite("measures", meas)
        _, idx = self._tree.query(meas)
        return np.asarray(idx, dtype=np.int64)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["centroids"] = array_to_state(self.centroids)
        return state

    def load_state_dict(self, state: dict) -> None:
        c = state.get("centroids")
        if c is None or not np.array_equal(array_from_state(c), self.centroids):
            raise ValueError(
                "state['centroids'] does not match this archive's centroids "
                "(build the archive with the same arguments, or centroids=)"
            )
        super().load_state_dict(state)
