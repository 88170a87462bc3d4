"""Emitters: where MAP-Elites' new candidates come from.

An emitter proposes ``n`` solutions from the archive with a random generator it is handed
(:class:`~optforge.search.qd.MapElites` owns the one generator, so a run is a function of its seed),
and may learn from the archive's feedback in :meth:`EmitterBase.tell`. Proposals are clipped to
optional per-dimension bounds.

- :class:`GaussianEmitter`: ``x + sigma N(0, I)``, ``x`` a uniform elite; ``sigma`` required
  (as in pyribs).
- :class:`IsoLineEmitter`: ``x1 + s_iso N(0, I) + s_line N(0, 1) (x2 - x1)``; defaults 0.01, 0.2
  (the paper's).

With an empty archive, both start from ``x0`` (default: zeros), or return ``initial_solutions``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from optforge._validation import check_int, check_non_negative
from optforge.search.qd.archive import AddResult, ArchiveBase

__all__ = ["EmitterBase", "GaussianEmitter", "IsoLineEmitter"]


def _bounds(bounds: Any, d: int) -> tuple[np.ndarray, np.ndarray] | None:
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(
            f"bounds must be a pair (lower, upper) of scalars or ({d},) arrays (got {bounds!r})"
        )
    lo = np.broadcast_to(np.asarray(bounds[0], dtype=np.float64), (d,)).copy()
    hi = np.broadcast_to(np.asarray(bounds[1], dtype=np.float64), (d,)).copy()
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(lo > hi):
        raise ValueError(f"bounds must satisfy lower <= upper in every dimension (got {bounds!r})")
    return lo, hi


def _sigma(name: str, value: Any, d: int) -> np.ndarray | float:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return check_non_negative(name, float(arr))
    if arr.shape != (d,):
        raise ValueError(
            f"{name} must be a scalar or an array of shape ({d},) (got shape {arr.shape})"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0 in every dimension (got {arr})")
    return arr


class EmitterBase(ABC):
    """Proposes solutions from an archive.

    Args:
        archive: the archive it reads elites from.
        batch_size: its share of :meth:`MapElites.ask` with ``n=None`` (>= 1).
        x0: start point while the archive is empty (``(d,)``; default zeros).
        initial_solutions: ``(k, d)`` solutions returned (cycled) while the archive is empty,
            instead of perturbing ``x0``.
        bounds: ``(lower, upper)``, scalars or ``(d,)`` arrays; proposals are clipped to them.
    """

    def __init__(
        self,
        archive: ArchiveBase,
        *,
        batch_size: int = 64,
        x0: Any = None,
        initial_solutions: Any = None,
        bounds: Any = None,
    ) -> None:
        if not isinstance(archive, ArchiveBase):
            raise TypeError(f"archive must be an ArchiveBase (got {type(archive).__name__})")
        self.archive = archive
        d = archive.solution_dim
        self.batch_size = check_int("batch_size", batch_size, low=1)
        if x0 is not None and initial_solutions is not None:
            raise ValueError("pass x0 or initial_solutions, not both")
        self.x0 = np.zeros(d) if x0 is None else np.array(x0, dtype=np.float64)
        if self.x0.shape != (d,):
            raise ValueError(
                f"x0 must have shape ({d},) (d = archive.solution_dim) (got shape {self.x0.shape})"
            )
        self.initial_solutions = None
        if initial_solutions is not None:
            init = np.array(initial_solutions, dtype=np.float64)
            if init.ndim != 2 or init.shape[1] != d or len(init) == 0:
                raise ValueError(
                    f"initial_solutions must have shape (k, {d}) with k >= 1 "
                    f"(got shape {init.shape})"
                )
            self.initial_solutions = init
        self.bounds = _bounds(bounds, d)

    @abstractmethod
    def ask(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, d)`` new solutions."""

    def tell(
        self,
        solutions: np.ndarray,
        objectives: np.ndarray,
        measures: np.ndarray,
        feedback: AddResult,
        ids: np.ndarray | None = None,
    ) -> None:
        """Feedback on this emitter's evaluated solutions, with their candidate ids (stateless
        emitters ignore it)."""
        return None

    def asked(self, ids: np.ndarray) -> None:
        """The candidate ids :class:`MapElites` gave to the rows of the last :meth:`ask`."""
        return None

    def forget(self, ids: np.ndarray) -> None:
        """Candidates of this emitter that were discarded (never told)."""
        return None

    def config(self) -> dict:
        """The settings a saved state must share with this emitter (plain data)."""
        return {"kind": type(self).__name__, "batch_size": self.batch_size}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def _start(self, n: int) -> np.ndarray | None:
        if self.initial_solutions is not None and self.archive.empty:
            return self._clip(np.resize(self.initial_solutions, (n, self.archive.solution_dim)))
        return None

    def _clip(self, x: np.ndarray) -> np.ndarray:
        if self.bounds is None:
            return x
        return np.clip(x, self.bounds[0], self.bounds[1])


class GaussianEmitter(EmitterBase):
    """MAP-Elites' variation: a uniform random elite plus isotropic Gaussian noise.

    ``x' = clip(x + sigma * N(0, I))`` with ``x`` drawn uniformly (with replacement) from the
    archive's elites, or ``x = x0`` while it is empty (Mouret & Clune 2015; pyribs'
    ``GaussianEmitter``). ``sigma`` (scalar or ``(d,)``, >= 0) has no universal default; the
    sphere benchmark uses 0.5.

    Example::

        emitter = GaussianEmitter(archive, sigma=0.5, batch_size=540)
    """

    def __init__(self, archive: ArchiveBase, *, sigma: Any, **kwargs: Any) -> None:
        super().__init__(archive, **kwargs)
        self.sigma = _sigma("sigma", sigma, archive.solution_dim)

    def config(self) -> dict:
        return {**super().config(), "sigma": np.asarray(self.sigma).tolist()}

    def ask(self, n: int, rng: np.random.Generator) -> np.ndarray:
        start = self._start(n)
        if start is not None:
            return start
        d = self.archive.solution_dim
        if self.archive.empty:
            parents = np.broadcast_to(self.x0, (n, d))
        else:
            parents = self.archive.sample_elites(n, rng)
        noise = rng.normal(scale=self.sigma, size=(n, d))
        noise += parents  # in place: one (n, d) temporary fewer per ask
        return self._clip(noise)


class IsoLineEmitter(EmitterBase):
    """Iso+LineDD variation (Vassiliades & Mouret, GECCO 2018, arXiv 1804.03906).

    ``x' = clip(x1 + iso_sigma * N(0, I) + line_sigma * N(0, 1) * (x2 - x1))`` for two elites
    ``x1, x2`` drawn uniformly; the line term moves along the direction between elites, which
    exploits correlations among elites' genotypes. Defaults ``iso_sigma = 0.01``,
    ``line_sigma = 0.2`` are the paper's (and pyribs'); the sphere benchmark uses (0.5, 0.2).

    Example::

        emitter = IsoLineEmitter(archive, iso_sigma=0.5, line_sigma=0.2, batch_size=540)
    """

    def __init__(
        self,
        archive: ArchiveBase,
        *,
        iso_sigma: Any = 0.01,
        line_sigma: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(archive, **kwargs)
        self.iso_sigma = _sigma("iso_sigma", iso_sigma, archive.solution_dim)
        self.line_sigma = check_non_negative("line_sigma", line_sigma)

    def config(self) -> dict:
        iso = np.asarray(self.iso_sigma).tolist()
        return {**super().config(), "iso_sigma": iso, "line_sigma": self.line_sigma}

    def ask(self, n: int, rng: np.random.Generator) -> np.ndarray:
        start = self._start(n)
        if start is not None:
            return start
        d = self.archive.solution_dim
        if self.archive.empty:
            x1 = np.broadcast_to(self.x0, (n, d))
            direction = np.zeros((n, d))
        else:
            pairs = self.archive.sample_elites(2 * n, rng)
            x1 = pairs[:n]
            direction = pairs[n:] - x1
        iso = rng.normal(scale=self.iso_sigma, size=(n, d))
        line = rng.normal(scale=self.line_sigma, size=(n, 1))
        direction *= line  # in place, same arithmetic as x1 + iso + line * direction
        iso += x1
        iso += direction
        return self._clip(iso)
