"""The ask/tell contract shared by every optforge search algorithm.

A search algorithm proposes :class:`Candidate` s with :meth:`SearchAlgorithm.ask`, the caller
evaluates them however it likes (inline, a process pool, a Dask cluster), and reports results back
with :meth:`SearchAlgorithm.tell` by candidate id, in any order and in any subset. Evaluations that
failed are forgotten with :meth:`SearchAlgorithm.discard`. The loop belongs to the caller;
:func:`optforge.search.run` is a convenience loop over a ``concurrent.futures`` executor.

State (``state_dict``) holds only torch tensors, plain numbers, strings and containers of those, so
it loads with ``torch.load(..., weights_only=True)``; resuming gives the same next ``ask()`` as an
uninterrupted run.

Example::

    search = MapElites(archive, emitters, seed=0)
    for _ in range(iterations):
        candidates = search.ask()
        search.tell([c.id for c in candidates], [evaluate(c.value) for c in candidates])
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "Candidate",
    "Candidates",
    "SearchAlgorithm",
    "array_from_state",
    "array_to_state",
    "check_config",
    "check_finite_number",
    "check_ids",
    "check_state_kind",
    "rng_from_state",
    "rng_to_state",
]


@dataclass(frozen=True)
class Candidate:
    """One proposal of a search algorithm.

    Args:
        id: unique per algorithm instance, increasing from 0 in the order of ``ask()``.
        value: what to evaluate: a float64 ``np.ndarray`` for vector spaces, a genotype object,
            or a ``dict`` configuration (Bayesian optimization).
    """

    id: int
    value: Any


class Candidates(Sequence):
    """A batch of candidates with consecutive ids, backed by one ``(k, d)`` array of values.

    What :meth:`MapElites.ask <optforge.search.qd.MapElites.ask>` returns: a read-only sequence of
    :class:`Candidate` (index it, iterate it, slice it into a list, ``+`` it to a list), built on
    first use, plus the whole batch as arrays, so a vectorized evaluation needs no object per
    row. Pass it (or ``.ids``) as the ``ids`` of ``tell``.

    Attributes:
        ids: ``(k,)`` int64 candidate ids, ``first, first + 1, ...``.
        values: ``(k, d)`` float64; ``self[i].value`` is the row ``values[i]`` (a view).
    """

    __slots__ = ("first", "values", "_items")

    def __init__(self, first: int, values: np.ndarray) -> None:
        self.first = int(first)
        self.values = values
        self._items: list[Candidate] | None = None

    @property
    def ids(self) -> np.ndarray:
        return np.arange(self.first, self.first + len(self.values), dtype=np.int64)

    def id_range(self) -> range:
        """The ids as a ``range`` (what ``check_ids`` reads without a look-up per id)."""
        return range(self.first, self.first + len(self.values))

    def _list(self) -> list[Candidate]:
        if self._items is None:
            self._items = list(map(Candidate, self.id_range(), self.values))
        return self._items

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: Any) -> Any:
        return self._list()[index]

    def __iter__(self) -> Any:
        return iter(self._list())

    def __add__(self, other: Any) -> list[Candidate]:
        return self._list() + list(other)

    def __radd__(self, other: Any) -> list[Candidate]:
        return list(other) + self._list()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Candidates):
            other = other._list()
        return isinstance(other, list) and self._list() == other

    __hash__ = None  # type: ignore[assignment]  # mutable values, as a list

    def __repr__(self) -> str:
        k = len(self)
        return f"Candidates(ids {self.first}..{self.first + k - 1}, values {self.values.shape})"


class SearchAlgorithm(ABC):
    """Abstract ask/tell search algorithm.

    Subclasses implement :meth:`ask`, :meth:`tell`, :meth:`discard`, :attr:`pending`,
    :meth:`state_dict` and :meth:`load_state_dict`, and document their result type (a float
    objective for most; ``(objective, measures)`` for MAP-Elites).

    ``tell`` accepts any order and any subset of the pending ids. It raises ``ValueError`` with a
    clear message, and leaves the algorithm's state untouched, for an unknown id, an id told twice,
    a non-finite objective or measure, or a result of the wrong shape. Validate everything before
    mutating anything (:func:`check_ids` helps).
    """

    seed: int
    #: Direction of the objective: ``run()``'s history reports the best result by it.
    maximize: bool = True

    @abstractmethod
    def ask(self, n: int | None = None) -> Sequence[Candidate]:
        """Propose ``n`` candidates (``None``: the algorithm's natural batch size): a list, or a
        :class:`Candidates` batch (MAP-Elites)."""

    @abstractmethod
    def tell(self, ids: Sequence[int], results: Sequence[Any]) -> None:
        """Report ``results[i]`` for the pending candidate ``ids[i]``."""

    @abstractmethod
    def discard(self, ids: Sequence[int]) -> None:
        """Forget pending ids whose evaluation failed (they are never told)."""

    @property
    @abstractmethod
    def pending(self) -> list[int]:
        """Ids asked but neither told nor discarded, in increasing order."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to resume; loads with ``torch.load(..., weights_only=True)``."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; the next ``ask()`` equals an uninterrupted run's."""

    def check_result(self, result: Any) -> None:
        """Raise ``ValueError``/``TypeError`` if ``tell`` would reject ``result``; never mutates.

        :func:`optforge.search.run` calls it on each result before ``tell``, so that one bad
        result (say a NaN objective) is handled by its failure policy instead of failing the whole
        batch. The default accepts everything; override it where ``tell`` validates results.
        """
        return None

    def objective_of(self, result: Any) -> float:
        """The scalar objective inside a result (for histories and ``best``).

        Default: the result itself if it is a number, its first element if it is a tuple or list
        (``(objective, measures)``), or ``result["objective"]`` for a dict.
        """
        if isinstance(result, (tuple, list)):
            result = result[0]
        elif isinstance(result, dict):
            result = result["objective"]
        return check_finite_number("objective", result)


def check_ids(ids: Sequence[int], pending: Any, results: Sequence[Any] | None = None) -> list[int]:
    """Validate ids against the pending set and return them as a list of ints.

    ``Candidate`` objects are accepted in place of ids. Raises ``ValueError`` for an id that is not
    pending (unknown, already told or discarded), an id repeated within the call, or a length
    mismatch with ``results``. Raises ``TypeError`` for a non-integer id.
    """
    if isinstance(ids, Candidates):
        ids = ids.id_range()
    if isinstance(ids, range):
        out = list(ids)  # ints by construction
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence | np.ndarray):
        raise TypeError(f"ids must be a sequence of ints (got {type(ids).__name__})")
    elif isinstance(ids, np.ndarray) and ids.dtype.kind in "iu" and ids.ndim == 1:
        out = ids.tolist()  # plain ints at once, not a numpy scalar check per id
    else:
        out = [i if type(i) is int else _as_id(i) for i in ids]
    if results is not None and len(results) != len(out):
        raise ValueError(
            f"results must have one entry per id: len(ids) = {len(out)} "
            f"(got len(results) = {len(results)})"
        )
    if len(set(out)) != len(out):
        seen: set[int] = set()
        dup = sorted({i for i in out if i in seen or seen.add(i)})
        raise ValueError(f"ids must be distinct within one call (got repeated ids {dup})")
    missing = [i for i in out if i not in pending]
    if missing:
        raise ValueError(
            f"id {missing[0]} is not pending: it was never asked, or was already told or "
            f"discarded ({len(missing)} such ids in this call)"
        )
    return out


def _as_id(i: Any) -> int:
    if isinstance(i, Candidate):
        i = i.id
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"ids must be ints (got {type(i).__name__}: {i!r})")
    return int(i)


def check_finite_number(name: str, value: Any) -> float:
    """A real, finite number (numpy and 0-d tensors accepted) as a Python float."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            shape = tuple(value.shape)
            raise ValueError(f"{name} must be a scalar (got a tensor of shape {shape})")
        value = value.item()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"{name} must be a scalar (got an array of shape {value.shape})")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a real number (got {type(value).__name__}: {value!r})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite (got {v})")
    return v


def check_state_kind(state: Any, kind: str, version: int, keys: Sequence[str] = ()) -> None:
    """Check that ``state`` is a ``state_dict`` saved by ``kind`` (a class name) at ``version``.

    States carry ``"saved_by"``; one saved by another algorithm (a BO state given to evolution)
    is refused by name instead of failing later on a missing key. ``keys`` must be present.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a {kind} state_dict (got {type(state).__name__})")
    saved_by = state.get("saved_by")
    if saved_by is not None and saved_by != kind:
        raise ValueError(f"state was saved by {saved_by}, not by {kind}")
    if state.get("version") != version:
        raise ValueError(
            f"state must be a {kind} state_dict of version {version} "
            f"(got version {state.get('version')!r})"
        )
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"state is not a {kind} state_dict: it lacks {missing}")


def check_config(what: str, saved: Mapping, here: Mapping) -> None:
    """Raise ``ValueError`` naming every setting where a saved configuration differs from ours."""
    diff = [k for k in dict.fromkeys([*here, *saved]) if saved.get(k) != here.get(k)]
    if diff:
        parts = ", ".join(f"{k} (saved {saved.get(k)!r}, here {here.get(k)!r})" for k in diff)
        raise ValueError(f"state belongs to another {what}: {parts}")


def rng_to_state(rng: np.random.Generator) -> dict:
    """The generator's bit-generator state (a dict of ints and strings: weights_only-safe)."""
    return _plain(rng.bit_generator.state)


def rng_from_state(state: dict) -> np.random.Generator:
    """A ``np.random.Generator`` restored from :func:`rng_to_state`."""
    name = state["bit_generator"]
    bitgen = getattr(np.random, name)()
    bitgen.state = _numpy(state)
    return np.random.Generator(bitgen)


def array_to_state(array: np.ndarray) -> torch.Tensor:
    """A numpy array as a tensor that owns its memory (numpy does not load with weights_only)."""
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def array_from_state(tensor: torch.Tensor) -> np.ndarray:
    """The inverse of :func:`array_to_state` (a writable copy)."""
    return tensor.detach().cpu().numpy().copy()


def _plain(obj: Any) -> Any:
    # Bit-generator states can hold numpy integers or arrays (MT19937's key); make them plain.
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return array_to_state(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _numpy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _numpy(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return array_from_state(obj)
    return obj
