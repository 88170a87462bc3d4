"""Regularized (aging) evolution over any genotype, ask/tell.

Real, Aggarwal, Huang & Le, "Regularized Evolution for Image Classifier Architecture Search",
AAAI 2019 (arXiv 1802.01548), Algorithm 1::

    population <- P random individuals (a FIFO queue, oldest first)
    repeat:
        sample  <- S individuals drawn uniformly (with replacement) from population
        parent  <- best of sample
        child   <- mutate(parent); evaluate(child)
        append child to population; remove the OLDEST individual (not the worst)

Aging means a good genotype survives only by being re-discovered through its descendants, which
filters lucky noisy evaluations. The same loop drives AutoML-Zero (google-research
``automl_zero/regularized_evolution.cc``, tournament with replacement).

Ask/tell: ``ask()`` first returns the ``population_size`` random initial individuals, then
``batch_size`` children, each from its own tournament over the individuals told so far. A
result arrives in the population when it is told (arrival order is age), so ``tell`` in any order
works and a steady-state asynchronous loop needs nothing special.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from optforge._validation import check_int
from optforge.search.base import (
    Candidate,
    SearchAlgorithm,
    check_finite_number,
    check_ids,
    check_state_kind,
    rng_from_state,
    rng_to_state,
)

__all__ = ["RegularizedEvolution", "tournament_select"]

_STATE_VERSION = 1


def tournament_select(
    fitness: Sequence[float], sample_size: int, rng: np.random.Generator, maximize: bool = True
) -> int:
    """Index of the best of ``sample_size`` indices drawn uniformly with replacement.

    Ties go to the earliest draw. This is the tournament of Real et al. 2019 (Algorithm 1) and of
    AutoML-Zero's ``BestFitnessTournament``.
    """
    draws = rng.integers(len(fitness), size=sample_size)
    values = np.asarray(fitness, dtype=np.float64)[draws]
    k = int(np.argmax(values) if maximize else np.argmin(values))
    return int(draws[k])


def _is_plain(x: Any) -> bool:
    if x is None or isinstance(x, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(x, (list, tuple)):
        return all(_is_plain(v) for v in x)
    if isinstance(x, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in x.items())
    return False


class RegularizedEvolution(SearchAlgorithm):
    """Regularized (aging) evolution (Real et al., AAAI 2019) over a user genotype.

    Args:
        init: ``init(rng) -> genotype``, a random individual; ``rng`` is the algorithm's
            ``np.random.Generator`` (draw only from it, so that runs are reproducible).
        mutate: ``mutate(genotype, rng) -> genotype``, a new child; must not modify its argument.
        population_size: P, >= 1 (default 100, the headline setting of Real et al. 2019 per the
            reference card, unverified; AutoML-Zero's demo uses 1000).
        sample_size: S, tournament size, >= 1 (default 25, same source; AutoML-Zero's demo: 10).
            Drawn with replacement, so S may exceed P.
        batch_size: children per ``ask()`` once the initial population is out (default 1, the
            paper's steady state; set it to the number of workers for a batch-synchronous
            :func:`~optforge.search.run`).
        maximize: ``True`` (default): higher fitness is better (accuracy, −loss);
            ``False``: lower is better (a loss).
        to_state, from_state: genotype ↔ plain data (lists, dicts, str, int, float, bool, None,
            tensors), used by :meth:`state_dict`. Needed when genotypes are objects, e.g.
            ``to_state=Program.to_state, from_state=Program.from_state``; when omitted, genotypes
            must already be plain data (checked when saving).
        seed: seeds the ``np.random.Generator`` behind every draw (default 0).

    Results (``tell``) are float fitnesses. ``ask(n)`` returns exactly ``n`` candidates; once the
    initial individuals are all out, it needs at least one told individual to select a parent and
    raises ``RuntimeError`` until then. Discarded initial individuals are redrawn later.

    Example::

        space = ProgramSpace(inputs=("g", "m"))
        evo = RegularizedEvolution(space.init, space.mutate, population_size=50, sample_size=10,
                                   to_state=Program.to_state, from_state=Program.from_state)
        for _ in range(1000):
            (c,) = evo.ask(1)
            evo.tell([c.id], [fitness(c.value)])
        evo.best  # (Candidate, fitness)
    """

    def __init__(
        self,
        init: Callable[[np.random.Generator], Any],
        mutate: Callable[[Any, np.random.Generator], Any],
        *,
        population_size: int = 100,
        sample_size: int = 25,
        batch_size: int = 1,
        maximize: bool = True,
        to_state: Callable[[Any], Any] | None = None,
        from_state: Callable[[Any], Any] | None = None,
        seed: int = 0,
    ) -> None:
        if not callable(init):
            raise TypeError(f"init must be callable init(rng) (got {type(init).__name__})")
        if not callable(mutate):
            raise TypeError(
                f"mutate must be callable mutate(genotype, rng) (got {type(mutate).__name__})"
            )
        if (to_state is None) != (from_state is None):
            raise ValueError(
                "to_state and from_state must be given together "
                f"(got to_state={to_state!r}, from_state={from_state!r})"
            )
        for name, fn in (("to_state", to_state), ("from_state", from_state)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable (got {type(fn).__name__})")
        if not isinstance(maximize, bool):
            raise TypeError(f"maximize must be a bool (got {type(maximize).__name__})")
        self.init = init
        self.mutate = mutate
        self.population_size = check_int("population_size", population_size, low=1)
        self.sample_size = check_int("sample_size", sample_size, low=1)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.maximize = maximize
        self.to_state = to_state
        self.from_state = from_state
        self.seed = check_int("seed", seed, low=0)
        self._rng = np.random.default_rng(seed)
        self._next_id = 0
        self._n_init_out = 0  # initial individuals asked and not discarded
        # (id, genotype, fitness), oldest first; the deque never exceeds population_size.
        self._population: deque[tuple[int, Any, float]] = deque()
        # id -> (genotype, parent id or -1 for an initial individual)
        self._pending: dict[int, tuple[Any, int]] = {}
        self._best: tuple[int, Any, float] | None = None
        self.n_told = 0
        self.n_discarded = 0

    # -- ask/tell ------------------------------------------------------------------------------

    def ask(self, n: int | None = None) -> list[Candidate]:
        """``n`` candidates (``None``: the rest of the initial population if any is left to ask,
        else ``batch_size`` children)."""
        n_init_left = self.population_size - self._n_init_out
        if n is None:
            n = n_init_left if n_init_left > 0 else self.batch_size
        check_int("n", n, low=1)
        n_children = n - min(n, n_init_left)
        if n_children > 0 and not self._population:
            raise RuntimeError(
                f"ask: {n_children} children requested but no individual has been told yet "
                f"(pending: {self.pending}); tell the initial population's results first"
            )
        out = []
        for _ in range(n):
            if self._n_init_out < self.population_size:
                genotype, parent = self.init(self._rng), -1
                self._n_init_out += 1
            else:
                fitness = [f for _, _, f in self._population]
                k = tournament_select(fitness, self.sample_size, self._rng, self.maximize)
                parent_id, parent_genotype, _ = self._population[k]
                genotype, parent = self.mutate(parent_genotype, self._rng), parent_id
            cand = Candidate(self._next_id, genotype)
            self._pending[cand.id] = (genotype, parent)
            self._next_id += 1
            out.append(cand)
        return out

    def check_result(self, result: Any) -> None:
        check_finite_number("fitness", result)

    def tell(self, ids: Sequence[int], results: Sequence[Any]) -> None:
        """Report float fitnesses; each told individual joins the population as its youngest
        member (in the order given), and the oldest leave beyond ``population_size``."""
        ids = check_ids(ids, self._pending, results)
        values = [check_finite_number(f"results[{k}]", r) for k, r in enumerate(results)]
        for i, f in zip(ids, values):
            genotype, _ = self._pending.pop(i)
            self._population.append((i, genotype, f))
            if len(self._population) > self.population_size:
                self._population.popleft()
            if self._best is None or self._better(f, self._best[2]):
                self._best = (i, genotype, f)
            self.n_told += 1

    def discard(self, ids: Sequence[int]) -> None:
        """Forget pending ids; discarded initial individuals are redrawn by a later ``ask``."""
        ids = check_ids(ids, self._pending)
        for i in ids:
            _, parent = self._pending.pop(i)
            if parent < 0:
                self._n_init_out -= 1
            self.n_discarded += 1

    @property
    def pending(self) -> list[int]:
        return sorted(self._pending)

    def parent_of(self, id: int) -> int | None:
        """The parent's id of a pending candidate (``None`` for an initial individual)."""
        if id not in self._pending:
            raise ValueError(f"id {id} is not pending")
        parent = self._pending[id][1]
        return None if parent < 0 else parent

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    # -- inspection ----------------------------------------------------------------------------

    @property
    def population(self) -> list[tuple[Candidate, float]]:
        """The current population, oldest first, as ``(Candidate, fitness)``."""
        return [(Candidate(i, g), f) for i, g, f in self._population]

    @property
    def best(self) -> tuple[Candidate, float] | None:
        """The best individual ever told (first one on ties), or ``None``."""
        if self._best is None:
            return None
        i, g, f = self._best
        return Candidate(i, g), f

    # -- state ---------------------------------------------------------------------------------

    def _dump(self, genotype: Any) -> Any:
        state = genotype if self.to_state is None else self.to_state(genotype)
        if not _is_plain(state):
            raise TypeError(
                f"genotype of type {type(genotype).__name__} is not plain data; pass "
                "to_state= and from_state= to RegularizedEvolution (e.g. Program.to_state, "
                "Program.from_state)"
            )
        return state

    def _load(self, state: Any) -> Any:
        return state if self.from_state is None else self.from_state(state)

    def state_dict(self) -> dict:
        """Population, pending individuals, best, counters and the RNG state (plain data)."""
        return {
            "saved_by": type(self).__name__,
            "version": _STATE_VERSION,
            "population_size": self.population_size,
            "sample_size": self.sample_size,
            "batch_size": self.batch_size,
            "maximize": self.maximize,
            "seed": self.seed,
            "rng": rng_to_state(self._rng),
            "next_id": self._next_id,
            "n_init_out": self._n_init_out,
            "n_told": self.n_told,
            "n_discarded": self.n_discarded,
            "population": [[i, self._dump(g), f] for i, g, f in self._population],
            "pending": [[i, self._dump(g), p] for i, (g, p) in sorted(self._pending.items())],
            "best": None
            if self._best is None
            else [self._best[0], self._dump(self._best[1]), self._best[2]],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; hyperparameters must match this instance's."""
        keys = ("population_size", "sample_size", "batch_size", "maximize", "population")
        check_state_kind(state, type(self).__name__, _STATE_VERSION, keys)
        for key in ("population_size", "sample_size", "batch_size", "maximize"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"state has {key}={state[key]!r} but this instance has "
                    f"{key}={getattr(self, key)!r}"
                )
        population = deque((int(i), self._load(g), float(f)) for i, g, f in state["population"])
        pending = {int(i): (self._load(g), int(p)) for i, g, p in state["pending"]}
        best = state["best"]
        self._rng = rng_from_state(state["rng"])
        self.seed = int(state["seed"])
        self._next_id = int(state["next_id"])
        self._n_init_out = int(state["n_init_out"])
        self.n_told = int(state["n_told"])
        self.n_discarded = int(state["n_discarded"])
        self._population = population
        self._pending = pending
        self._best = None if best is None else (int(best[0]), self._load(best[1]), float(best[2]))

    def __repr__(self) -> str:
        best = None if self._best is None else self._best[2]
        fitness = "nan" if best is None or not math.isfinite(best) else f"{best:.6g}"
        return (
            f"RegularizedEvolution(population_size={self.population_size}, "
            f"sample_size={self.sample_size}, told={self.n_told}, best={fitness})"
        )
