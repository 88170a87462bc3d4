"""Search spaces for Bayesian optimization: named Real, Integer and Categorical dimensions.

A :class:`SearchSpace` maps a configuration ``{name: value}`` to a point of the unit cube
``[0, 1]^D`` where the surrogate and the acquisition live, and back.

Encoding (one column per numeric dimension, one-hot block per categorical):

- ``Real(low, high)``: ``u = (x - low) / (high - low)``; with ``log=True`` the same in
  ``log x`` (needs ``low > 0``).
- ``Integer(low, high)``: the ``high - low + 1`` values own equal cells of ``[0, 1]`` and are
  encoded at their cell centres, ``u = (v - low + 0.5) / (high - low + 1)`` (in ``log v`` with
  edges ``log(low - 0.5)`` and ``log(high + 0.5)`` when ``log=True``): Optuna's convention
  (``optuna/_gp/search_space.py``), so every value gets the same share of a uniform draw.
- ``Categorical(choices)``: a one-hot block of ``len(choices)`` columns. One-hot rather than an
  index because an index invents an order between choices that a neural-network surrogate (the
  ensemble) would read into; with the GP's ARD Matérn kernel, two configurations that differ in
  one categorical are at squared distance ``1/l_a^2 + 1/l_b^2`` (the two columns that flip).

Decoding clips to the box, rounds integers to the nearest cell and takes the arg-max of a
one-hot block, so any point of ``[0, 1]^D`` decodes to a valid configuration
(:meth:`SearchSpace.project` snaps a point onto the set of encodings).

Example::

    space = SearchSpace({"lr": Real(1e-4, 1e-1, log=True), "layers": Integer(1, 8),
                         "act": Categorical(["relu", "gelu"])})
    u = space.encode({"lr": 1e-3, "layers": 3, "act": "gelu"})    # shape (space.encoded_dim,)
    space.decode(u)                                                # {"lr": 0.001, ...}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import qmc

__all__ = ["Categorical", "Dimension", "Integer", "Real", "SearchSpace"]


def _finite(name: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"dimension {name!r}: {field} must be a real number "
            f"(got {type(value).__name__}: {value!r})"
        )
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"dimension {name!r}: {field} must be finite (got {value})")
    return v


@dataclass(frozen=True)
class Real:
    """A real interval ``[low, high]``, uniform or (``log=True``) log-uniform."""

    low: float
    high: float
    log: bool = False

    def validate(self, name: str) -> None:
        low, high = _finite(name, "low", self.low), _finite(name, "high", self.high)
        if not low < high:
            raise ValueError(
                f"dimension {name!r}: Real needs low < high (got low={self.low}, high={self.high})"
            )
        if self.log and low <= 0:
            raise ValueError(f"dimension {name!r}: log=True needs low > 0 (got low={self.low})")

    @property
    def width(self) -> int:
        return 1

    def _edges(self) -> tuple[float, float]:
        if self.log:
            return math.log(self.low), math.log(self.high)
        return float(self.low), float(self.high)


@dataclass(frozen=True)
class Integer:
    """The integers ``low, low + 1, ..., high`` (``log=True``: cells equal in ``log``)."""

    low: int
    high: int
    log: bool = False

    def validate(self, name: str) -> None:
        for field, v in (("low", self.low), ("high", self.high)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(
                    f"dimension {name!r}: Integer {field} must be an int "
                    f"(got {type(v).__name__}: {v!r})"
                )
        if self.high < self.low:
            raise ValueError(
                f"dimension {name!r}: Integer needs low <= high "
                f"(got low={self.low}, high={self.high})"
            )
        if self.log and self.low < 1:
            raise ValueError(
                f"dimension {name!r}: log=True needs low >= 1 for an Integer (got low={self.low})"
            )

    @property
    def width(self) -> int:
        return 1

    @property
    def n_values(self) -> int:
        return int(self.high) - int(self.low) + 1

    def _edges(self) -> tuple[float, float]:
        lo, hi = self.low - 0.5, self.high + 0.5
        return (math.log(lo), math.log(hi)) if self.log else (lo, hi)

    def grid(self) -> np.ndarray:
        """The encodings of all values, increasing: shape ``(n_values,)``."""
        return self.encode_values(np.arange(self.low, self.high + 1))

    def encode_values(self, v: np.ndarray) -> np.ndarray:
        a, b = self._edges()
        t = np.log(v.astype(float)) if self.log else v.astype(float)
        return (t - a) / (b - a)

    def decode_values(self, u: np.ndarray) -> np.ndarray:
        a, b = self._edges()
        t = a + np.clip(u, 0.0, 1.0) * (b - a)
        v = np.exp(t) if self.log else t
        return np.clip(np.round(v), self.low, self.high).astype(np.int64)


@dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (any objects comparable with ``==``), one-hot encoded."""

    choices: Sequence[Any]

    def __post_init__(self) -> None:
        # A list argument would make the frozen dataclass unhashable; keep an immutable copy.
        if isinstance(self.choices, (str, bytes)) or not isinstance(
            self.choices, (Sequence, np.ndarray)
        ):
            raise TypeError(
                f"Categorical choices must be a sequence (got {type(self.choices).__name__})"
            )
        object.__setattr__(self, "choices", tuple(self.choices))

    def validate(self, name: str) -> None:
        if len(self.choices) == 0:
            raise ValueError(f"dimension {name!r}: Categorical needs at least one choice (got [])")

    @property
    def width(self) -> int:
        return len(self.choices)

    def index(self, name: str, value: Any) -> int:
        for i, c in enumerate(self.choices):
            if c is value or (type(c) is type(value) and c == value):
                return i
        for i, c in enumerate(self.choices):
            try:
                if c == value:
                    return i
            except Exception:  # noqa: BLE001 - an incomparable choice is simply not a match
                continue
        raise ValueError(
            f"dimension {name!r}: value must be one of {list(self.choices)} (got {value!r})"
        )


Dimension = Real | Integer | Categorical


class SearchSpace:
    """An ordered mapping of names to dimensions, encoded into ``[0, 1]^encoded_dim``.

    Args:
        dimensions: ``{name: Real | Integer | Categorical}``; the order is the column order.

    Raises:
        ValueError: an empty space, an empty or inverted range, ``log=True`` with
            ``low <= 0``, or a categorical without choices; the message names the dimension.
    """

    def __init__(self, dimensions: Mapping[str, Dimension]) -> None:
        if not isinstance(dimensions, Mapping):
            raise TypeError(
                f"dimensions must be a mapping name -> dimension (got {type(dimensions).__name__})"
            )
        if len(dimensions) == 0:
            raise ValueError("dimensions must hold at least one dimension (got an empty mapping)")
        self.dimensions: dict[str, Dimension] = {}
        for name, dim in dimensions.items():
            if not isinstance(name, str):
                raise TypeError(
                    f"dimension names must be str (got {type(name).__name__}: {name!r})"
                )
            if not isinstance(dim, (Real, Integer, Categorical)):
                raise TypeError(
                    f"dimension {name!r} must be Real, Integer or Categorical "
                    f"(got {type(dim).__name__})"
                )
            dim.validate(name)
            self.dimensions[name] = dim
        self.names: list[str] = list(self.dimensions)
        self._slices: list[slice] = []
        start = 0
        for dim in self.dimensions.values():
            self._slices.append(slice(start, start + dim.width))
            start += dim.width
        #: number of columns of an encoded point
        self.encoded_dim: int = start

    def __len__(self) -> int:
        return len(self.dimensions)

    def __repr__(self) -> str:
        return f"SearchSpace({self.dimensions!r})"

    def signature(self) -> str:
        """A string that identifies the space (stored in checkpoints to catch a mismatch)."""
        return repr([(n, repr(d)) for n, d in self.dimensions.items()])

    def items(self) -> list[tuple[str, Dimension, slice]]:
        """``(name, dimension, encoded column slice)`` in column order."""
        return [(n, d, s) for (n, d), s in zip(self.dimensions.items(), self._slices)]

    # ---------------------------------------------------------------- encode / decode
    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """A configuration as a float64 point of ``[0, 1]^encoded_dim``."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping name -> value (got {type(config).__name__})")
        missing = [n for n in self.names if n not in config]
        extra = [n for n in config if n not in self.dimensions]
        if missing or extra:
            raise ValueError(
                f"config must have exactly the keys {self.names} "
                f"(missing {missing}, unexpected {extra})"
            )
        u = np.zeros(self.encoded_dim)
        for name, dim, sl in self.items():
            value = config[name]
            if isinstance(dim, Categorical):
                u[sl.start + dim.index(name, value)] = 1.0
                continue
            if isinstance(dim, Integer):
                is_int = isinstance(value, (int, np.integer)) and not isinstance(
                    value, (bool, np.bool_)
                )
                whole = isinstance(value, (float, np.floating)) and float(value).is_integer()
                if not (is_int or whole):
                    raise TypeError(
                        f"dimension {name!r}: value must be an int "
                        f"(got {type(value).__name__}: {value!r})"
                    )
                v = int(value)
                if not dim.low <= v <= dim.high:
                    raise ValueError(
                        f"dimension {name!r}: value must be in [{dim.low}, {dim.high}] (got {v})"
                    )
                u[sl.start] = dim.encode_values(np.array([v]))[0]
                continue
            v = _finite(name, "value", value)
            if not dim.low <= v <= dim.high:
                raise ValueError(
                    f"dimension {name!r}: value must be in [{dim.low}, {dim.high}] (got {v})"
                )
            a, b = dim._edges()
            t = math.log(v) if dim.log else v
            u[sl.start] = min(max((t - a) / (b - a), 0.0), 1.0)
        return u

    def decode(self, u: np.ndarray) -> dict[str, Any]:
        """The configuration of an encoded point (clipped, rounded, arg-max of one-hot blocks)."""
        u = np.asarray(u, dtype=float)
        if u.shape != (self.encoded_dim,):
            raise ValueError(f"u must have shape ({self.encoded_dim},) (got {tuple(u.shape)})")
        config: dict[str, Any] = {}
        for name, dim, sl in self.items():
            if isinstance(dim, Categorical):
                config[name] = dim.choices[int(np.argmax(u[sl]))]
            elif isinstance(dim, Integer):
                config[name] = int(dim.decode_values(u[sl])[0])
            else:
                a, b = dim._edges()
                t = a + min(max(float(u[sl.start]), 0.0), 1.0) * (b - a)
                x = math.exp(t) if dim.log else t
                config[name] = min(max(x, float(dim.low)), float(dim.high))
        return config

    def project(self, U: np.ndarray) -> np.ndarray:
        """Snap points onto valid encodings: clip, integers to cell centres, one-hot blocks.

        Args:
            U: shape ``(n, encoded_dim)``. Returns a new array of the same shape.
        """
        U = np.clip(np.array(U, dtype=float, copy=True), 0.0, 1.0)
        for _, dim, sl in self.items():
            if isinstance(dim, Integer):
                U[:, sl.start] = dim.encode_values(dim.decode_values(U[:, sl.start]))
            elif isinstance(dim, Categorical):
                idx = np.argmax(U[:, sl], axis=1)
                U[:, sl] = 0.0
                U[np.arange(len(U)), sl.start + idx] = 1.0
        return U

    def from_unit(self, V: np.ndarray) -> np.ndarray:
        """Map uniform draws ``V`` of shape ``(n, len(space))`` (one column per dimension) to
        valid encodings ``(n, encoded_dim)``: each value gets its fair share of the cube."""
        V = np.asarray(V, dtype=float)
        U = np.zeros((len(V), self.encoded_dim))
        for j, (_, dim, sl) in enumerate(self.items()):
            if isinstance(dim, Categorical):
                idx = np.minimum((V[:, j] * dim.width).astype(np.int64), dim.width - 1)
                U[np.arange(len(V)), sl.start + idx] = 1.0
            elif isinstance(dim, Integer):
                U[:, sl.start] = dim.encode_values(dim.decode_values(V[:, j]))
            else:
                U[:, sl.start] = V[:, j]
        return U

    def sobol(self, n: int, seed: int, skip: int = 0) -> np.ndarray:
        """Points ``skip .. skip + n - 1`` of a scrambled Sobol sequence, as encodings.

        The sequence is a pure function of ``seed``, so a checkpoint needs only ``skip``.
        """
        engine = qmc.Sobol(d=len(self), scramble=True, seed=seed)
        if skip:
            engine.fast_forward(skip)
        # random() warns unless n is a power of two; the prefix of a Sobol sequence is still
        # far better spread than i.i.d. draws, which is all the initial design needs.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            V = engine.random(n)
        return self.from_unit(V)

    # ------------------------------------------------------- structure for the optimizer
    def gradient_columns(self, max_enumerate: int = 16) -> np.ndarray:
        """Encoded columns polished by gradient: every ``Real``, and every ``Integer`` with more
        than ``max_enumerate`` values (relaxed to a real, then snapped by :meth:`project`)."""
        cols = [
            sl.start
            for _, dim, sl in self.items()
            if isinstance(dim, Real) or (isinstance(dim, Integer) and dim.n_values > max_enumerate)
        ]
        return np.array(cols, dtype=np.int64)

    def categorical_blocks(self) -> list[list[int]]:
        """The encoded columns of each ``Categorical``'s one-hot block, in column order (for
        :class:`~optforge.search.bo.gp.GaussianProcess`'s Hamming kernel)."""
        return [
            list(range(sl.start, sl.stop))
            for _, dim, sl in self.items()
            if isinstance(dim, Categorical)
        ]

    def discrete_groups(self, max_enumerate: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
        """Dimensions searched by enumeration: each ``Categorical`` and each ``Integer`` with at
        most ``max_enumerate`` values (Optuna's threshold, ``optuna/_gp/optim_mixed.py``), as
        ``(columns, options)`` with ``options`` of shape ``(n_options, len(columns))`` listing the
        encodings of every value."""
        groups = []
        for _, dim, sl in self.items():
            cols = np.arange(sl.start, sl.stop)
            if isinstance(dim, Categorical):
                groups.append((cols, np.eye(dim.width)))
            elif isinstance(dim, Integer) and dim.n_values <= max_enumerate:
                groups.append((cols, dim.grid()[:, None]))
        return groups
