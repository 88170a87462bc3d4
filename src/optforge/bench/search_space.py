"""AlgoPerf tuning search spaces: parsing, validation and quasi-random sampling.

A search space is AlgoPerf's ``tuning_search_space.json`` in either of its two forms:

- a mapping from hyperparameter name to a range ``{"min": a, "max": b, "scaling": "linear" |
  "log"}`` or a discrete set ``{"feasible_points": [...]}``; configurations are drawn with the
  scrambled Halton sequence of :mod:`optforge.bench.halton` (AlgoPerf's ``generate_search``);
- a list of fixed configurations (each a mapping name -> value, all with the same names), as in
  AlgoPerf's NadamW baseline, from which each study samples without replacement.

Example::

    >>> space = parse_search_space({
    ...     "learning_rate": {"min": 1e-4, "max": 1e-2, "scaling": "log"},
    ...     "warmup_factor": {"feasible_points": [0.02, 0.05, 0.1]}})
    >>> [(round(p["learning_rate"], 6), p["warmup_factor"]) for p in space.sample(2, seed=0)]
    [(0.009601, 0.1), (0.000353, 0.02)]
    >>> [len(study) for study in space.assign_studies(5, 3, seed=0)]  # 3 studies x 5 trials
    [5, 5, 5]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optforge.bench.halton import generate_sequence

__all__ = ["SearchSpace", "SearchSpaceError", "load_search_space", "parse_search_space"]

_RANGE_KEYS = {"min", "max", "scaling"}
_SCALINGS = ("linear", "log")


class SearchSpaceError(ValueError):
    """A search space that does not follow the AlgoPerf format."""


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _plain(x: Any) -> Any:
    """numpy scalars -> Python scalars, so every sampled configuration is JSON-serialisable."""
    return x.item() if isinstance(x, np.generic) else x


@dataclass(frozen=True)
class SearchSpace:
    """A validated AlgoPerf search space.

    ``ranges`` maps names to ``{"min", "max", "scaling"}`` or ``{"feasible_points"}`` (dict
    form; insertion order is the Halton dimension order, as in the reference); ``points`` holds
    the configurations of the list form. Exactly one of the two is set.
    """

    ranges: dict[str, dict[str, Any]] | None = None
    points: list[dict[str, Any]] | None = None

    @property
    def names(self) -> list[str]:
        if self.ranges is not None:
            return list(self.ranges)
        return list(self.points[0]) if self.points else []

    def to_json(self) -> dict[str, Any] | list[dict[str, Any]]:
        return dict(self.ranges) if self.ranges is not None else list(self.points or [])

    def _map(self, u: Sequence[float]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (name, spec), x in zip(self.ranges.items(), u):
            if "feasible_points" in spec:
                pts = spec["feasible_points"]
                out[name] = _plain(pts[int(math.floor(x * len(pts)))])
            elif spec["scaling"] == "log":
                lo, hi = spec["min"], spec["max"]
                out[name] = lo * math.exp(x * math.log(hi / lo))
            else:
                lo, hi = spec["min"], spec["max"]
                out[name] = x * (hi - lo) + lo
        return out

    def sample(self, num_trials: int, *, seed: int = 0, shuffle: bool = True) -> list[dict]:
        """``num_trials`` configurations (AlgoPerf ``generate_search``).

        Dict form: Halton points mapped to each range (``linear``: ``lo + u (hi - lo)``;
        ``log``: ``lo exp(u ln(hi / lo))``; discrete: ``points[floor(u n)]``), rows shuffled
        with ``seed``. List form: the first ``num_trials`` configurations (fewer if the list is
        shorter), as the reference does.
        """
        if num_trials < 0:
            raise ValueError(f"num_trials must be >= 0 (got {num_trials})")
        if self.points is not None:
            return [dict(p) for p in self.points[:num_trials]]
        if not self.ranges:
            return [{} for _ in range(num_trials)]
        u = generate_sequence(num_trials, len(self.ranges), shuffle=shuffle, seed=seed)
        return [self._map(row) for row in u]

    def assign_studies(
        self, num_trials: int, num_studies: int, *, seed: int = 0
    ) -> list[list[dict[str, Any]]]:
        """Configurations for ``num_studies`` studies of ``num_trials`` trials each.

        Dict form: ``num_trials * num_studies`` Halton draws, shuffled with ``seed`` and dealt
        out in order (study ``j`` gets draws ``j N .. (j+1) N - 1``), AlgoPerf's "15 points, 3
        studies x 5 trials". List form: each study samples ``min(N, len)`` configurations
        without replacement with ``RandomState(seed + j)``.
        """
        if num_trials < 1:
            raise ValueError(f"num_trials must be >= 1 (got {num_trials})")
        if num_studies < 1:
            raise ValueError(f"num_studies must be >= 1 (got {num_studies})")
        if self.points is None:
            draws = self.sample(num_trials * num_studies, seed=seed)
            return [draws[j * num_trials : (j + 1) * num_trials] for j in range(num_studies)]
        n = min(num_trials, len(self.points))
        studies = []
        for j in range(num_studies):
            idx = np.random.RandomState(seed + j).choice(len(self.points), n, replace=False)
            studies.append([dict(self.points[int(i)]) for i in idx])
        return studies


def _parse_range(name: str, spec: object, where: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(
            f"{where}: '{name}' must be an object with min/max/scaling or feasible_points "
            f"(got {type(spec).__name__})"
        )
    if "feasible_points" in spec:
        extra = set(spec) - {"feasible_points"}
        if extra:
            raise SearchSpaceError(
                f"{where}: '{name}' mixes feasible_points with {sorted(extra)}; use one form"
            )
        pts = spec["feasible_points"]
        if not isinstance(pts, list) or not pts:
            raise SearchSpaceError(
                f"{where}: '{name}'.feasible_points must be a non-empty list (got {pts!r})"
            )
        return {"feasible_points": list(pts)}
    missing = _RANGE_KEYS - set(spec)
    if missing:
        raise SearchSpaceError(
            f"{where}: '{name}' needs min, max and scaling, or feasible_points "
            f"(missing {', '.join(sorted(missing))})"
        )
    extra = set(spec) - _RANGE_KEYS
    if extra:
        raise SearchSpaceError(f"{where}: '{name}' has unknown keys {sorted(extra)}")
    lo, hi, scaling = spec["min"], spec["max"], spec["scaling"]
    for key, v in (("min", lo), ("max", hi)):
        if not _is_real(v):
            raise SearchSpaceError(
                f"{where}: '{name}'.{key} must be a finite number (got {v!r})"
            )
    if scaling not in _SCALINGS:
        raise SearchSpaceError(
            f"{where}: '{name}'.scaling must be 'linear' or 'log' (got {scaling!r})"
        )
    if lo > hi:
        raise SearchSpaceError(f"{where}: '{name}' needs min <= max (got min={lo}, max={hi})")
    if scaling == "log" and lo <= 0:
        raise SearchSpaceError(f"{where}: '{name}' with log scaling needs min > 0 (got {lo})")
    return {"min": lo, "max": hi, "scaling": scaling}


def parse_search_space(obj: object, *, where: str = "search space") -> SearchSpace:
    """Validate an AlgoPerf search space (the decoded JSON) and return a :class:`SearchSpace`.

    Raises:
        SearchSpaceError: naming ``where``, the hyperparameter and the offending value.
    """
    if isinstance(obj, Mapping):
        ranges = {}
        for name, spec in obj.items():
            if not isinstance(name, str) or not name:
                raise SearchSpaceError(f"{where}: names must be non-empty strings (got {name!r})")
            ranges[name] = _parse_range(name, spec, where)
        return SearchSpace(ranges=ranges)
    if isinstance(obj, list):
        if not obj:
            raise SearchSpaceError(f"{where}: a list of configurations must not be empty")
        names = None
        for i, point in enumerate(obj):
            if not isinstance(point, Mapping):
                raise SearchSpaceError(
                    f"{where}: configuration {i} must be an object (got {type(point).__name__})"
                )
            if names is None:
                names = set(point)
            elif set(point) != names:
                raise SearchSpaceError(
                    f"{where}: configuration {i} has names {sorted(point)}, "
                    f"configuration 0 has {sorted(names)}"
                )
        return SearchSpace(points=[dict(p) for p in obj])
    raise SearchSpaceError(
        f"{where}: must be a JSON object (name -> range) or a list of configurations "
        f"(got {type(obj).__name__})"
    )


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space JSON file.

    Raises:
        SearchSpaceError: the file is missing, unreadable, not JSON, or not a valid space.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SearchSpaceError(f"cannot read search space {p}: {e.strerror or e}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SearchSpaceError(
            f"{p}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    return parse_search_space(obj, where=str(p))
