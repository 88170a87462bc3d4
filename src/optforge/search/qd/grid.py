"""A regular grid over a box in measure space (Mouret & Clune 2015)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from optforge._validation import check_integer, check_non_negative
from optforge.search.qd.archive import ArchiveBase, _as_batch, _check_finite

__all__ = ["GridArchive"]


class GridArchive(ArchiveBase):
    """MAP-Elites grid: ``dims[j]`` equal bins over ``ranges[j] = (low, high)`` per measure.

    Cell lookup is pyribs' rule: ``floor((dims * (b - low) + epsilon) / (high - low))`` per
    measure, clipped to ``[0, dims - 1]`` (measures outside the box land in the edge cells), then
    flattened in C order (``np.ravel_multi_index``). ``epsilon = 1e-6`` (pyribs' default) absorbs
    float error at cell boundaries.

    Args:
        solution_dim: length of a solution vector.
        dims: cells per measure, e.g. ``(100, 100)``.
        ranges: ``(low, high)`` per measure, ``low < high``, e.g. ``[(-256, 256)] * 2``.
        epsilon: boundary tolerance, >= 0.
        **kwargs: ``learning_rate``, ``threshold_min``, ``qd_score_offset`` (see
            :class:`ArchiveBase`).

    Example::

        archive = GridArchive(solution_dim=100, dims=(100, 100), ranges=[(-256, 256)] * 2)
    """

    def __init__(
        self,
        *,
        solution_dim: int,
        dims: Sequence[int],
        ranges: Sequence[tuple[float, float]],
        epsilon: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        if isinstance(dims, (int, np.integer)):
            dims = (int(dims),)
        dims = tuple(
            check_integer(f"dims[{j}]", d, low=1)
            for j, d in enumerate(dims)
        )
        if len(dims) == 0:
            raise ValueError("dims must name at least one measure (got an empty sequence)")
        ranges = [tuple(r) for r in ranges]
        if len(ranges) != len(dims):
            raise ValueError(
                f"ranges must have one (low, high) pair per entry of dims = {dims} "
                f"(got {len(ranges)} pairs)"
            )
        for j, r in enumerate(ranges):
            if len(r) != 2 or not all(math.isfinite(float(v)) for v in r) or not r[0] < r[1]:
                raise ValueError(
                    f"ranges[{j}] must be a finite (low, high) with low < high (got {r})"
                )
        self.dims = dims
        self.lower_bounds = np.array([r[0] for r in ranges], dtype=np.float64)
        self.upper_bounds = np.array([r[1] for r in ranges], dtype=np.float64)
        self.epsilon = check_non_negative("epsilon", epsilon)
        self._dims_arr = np.array(dims, dtype=np.int64)
        self._interval = self.upper_bounds - self.lower_bounds
        super().__init__(
            solution_dim=solution_dim,
            cells=int(np.prod(dims)),
            measure_dim=len(dims),
            **kwargs,
        )

    @property
    def boundaries(self) -> list[np.ndarray]:
        """Cell edges per measure: ``dims[j] + 1`` values from low to high."""
        return [
            np.linspace(lo, hi, d + 1)
            for lo, hi, d in zip(self.lower_bounds, self.upper_bounds, self.dims)
        ]

    def grid_index_of(self, measures: Any) -> np.ndarray:
        """``(n, m)`` integer grid coordinates of ``measures (n, m)``."""
        meas = _as_batch("measures", measures, self.measure_dim, "measure_dim")
        _check_finite("measures", meas)
        coords = np.floor(
            (self._dims_arr * (meas - self.lower_bounds) + self.epsilon) / self._interval
        ).astype(np.int64)
        return np.clip(coords, 0, self._dims_arr - 1)

    def index_of(self, measures: Any) -> np.ndarray:
        coords = self.grid_index_of(measures)
        return np.ravel_multi_index(tuple(coords.T), self.dims).astype(np.int64)

    def config(self) -> dict:
        config = super().config()
        config.update(
            dims=list(self.dims),
            ranges=[
                [lo, hi] for lo, hi in zip(self.lower_bounds.tolist(), self.upper_bounds.tolist())
            ],
        )
        return config

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["dims"] = list(self.dims)
        return state

    def load_state_dict(self, state: dict) -> None:
        if list(state.get("dims", [])) != list(self.dims):
            raise ValueError(
                f"state has dims = {state.get('dims')} but this archive has "
                f"dims = {list(self.dims)}"
            )
        super().load_state_dict(state)
