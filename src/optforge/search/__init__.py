"""optforge.search: gradient-free search with one ask/tell contract.

Every algorithm is a :class:`SearchAlgorithm`: ``ask()`` returns :class:`Candidate` s (id, value),
you evaluate them anywhere, and ``tell(ids, results)`` reports back by id, in any order and any
subset. :func:`run` is the convenience loop over any ``concurrent.futures``-style executor
(inline, a local process pool, a Dask ``Client.get_executor()``).

- Quality diversity (``optforge.search.qd``): :class:`MapElites` with grid and CVT archives,
  Gaussian, Iso+LineDD and CMA-ES emitters (MAP-Elites, CMA-ME, CMA-MAE).
- Evolution (``optforge.search.evolution``, ``programs``, ``hashing``): regularized evolution,
  program search, functional hashing.
- Bayesian optimization (``optforge.search.bo``).
"""

from __future__ import annotations

import importlib
from typing import Any

from optforge.search.base import Candidate, Candidates, SearchAlgorithm

# Eager, or importing the module optforge.search.run first would shadow the function run.
from optforge.search.run import Evaluation, EvaluationError, SearchHistory, SerialExecutor, run

# Lazy: ``import optforge.search`` (or its QD part) must not import scipy and the whole of BO;
# each name is imported from its module on first use.
_LAZY = {
    "RayExecutor": "optforge.search.ray_executor",
    "UCB": "optforge.search.bo",
    "Acquisition": "optforge.search.bo",
    "BayesianOptimization": "optforge.search.bo",
    "Categorical": "optforge.search.bo",
    "DeepEnsemble": "optforge.search.bo",
    "GaussianProcess": "optforge.search.bo",
    "GPHyperparameters": "optforge.search.bo",
    "Integer": "optforge.search.bo",
    "LogEI": "optforge.search.bo",
    "Real": "optforge.search.bo",
    "SearchSpace": "optforge.search.bo",
    "Surrogate": "optforge.search.bo",
    "log_expected_improvement": "optforge.search.bo",
    "optimize_acquisition": "optforge.search.bo",
    "search_space_from_algoperf": "optforge.search.bo",
    "suggest_hyperparameters": "optforge.search.bo",
    "upper_confidence_bound": "optforge.search.bo",
    "RegularizedEvolution": "optforge.search.evolution",
    "tournament_select": "optforge.search.evolution",
    "FitnessCache": "optforge.search.hashing",
    "FunctionalHash": "optforge.search.hashing",
    "FunctionalHashing": "optforge.search.hashing",
    "ProgramProbe": "optforge.search.hashing",
    "fingerprint": "optforge.search.hashing",
    "round_significant": "optforge.search.hashing",
    "OPS": "optforge.search.programs",
    "Instruction": "optforge.search.programs",
    "Op": "optforge.search.programs",
    "Program": "optforge.search.programs",
    "ProgramSpace": "optforge.search.programs",
    "CMAES": "optforge.search.qd",
    "AddResult": "optforge.search.qd",
    "AddStatus": "optforge.search.qd",
    "ArchiveBase": "optforge.search.qd",
    "ArchiveStats": "optforge.search.qd",
    "CVTArchive": "optforge.search.qd",
    "EmitterBase": "optforge.search.qd",
    "EvolutionStrategyEmitter": "optforge.search.qd",
    "GaussianEmitter": "optforge.search.qd",
    "GridArchive": "optforge.search.qd",
    "IsoLineEmitter": "optforge.search.qd",
    "MapElites": "optforge.search.qd",
    "archive_heatmap": "optforge.search.qd",
}

__all__ = [
    # contract and loop
    "Candidate",
    "Candidates",
    "Evaluation",
    "EvaluationError",
    "SearchAlgorithm",
    "SearchHistory",
    "RayExecutor",
    "SerialExecutor",
    "run",
    # quality diversity
    "CMAES",
    "AddResult",
    "AddStatus",
    "ArchiveBase",
    "ArchiveStats",
    "CVTArchive",
    "EmitterBase",
    "EvolutionStrategyEmitter",
    "GaussianEmitter",
    "GridArchive",
    "IsoLineEmitter",
    "MapElites",
    "archive_heatmap",
    # evolution, programs, functional hashing
    "OPS",
    "FitnessCache",
    "FunctionalHash",
    "FunctionalHashing",
    "Instruction",
    "Op",
    "Program",
    "ProgramProbe",
    "ProgramSpace",
    "RegularizedEvolution",
    "fingerprint",
    "round_significant",
    "tournament_select",
    # Bayesian optimization
    "UCB",
    "Acquisition",
    "BayesianOptimization",
    "Categorical",
    "DeepEnsemble",
    "GPHyperparameters",
    "GaussianProcess",
    "Integer",
    "LogEI",
    "Real",
    "SearchSpace",
    "Surrogate",
    "log_expected_improvement",
    "optimize_acquisition",
    "search_space_from_algoperf",
    "suggest_hyperparameters",
    "upper_confidence_bound",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'optforge.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
