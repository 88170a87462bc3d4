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

from optforge.search.base import Candidate, SearchAlgorithm
from optforge.search.bo import (
    UCB,
    Acquisition,
    BayesianOptimization,
    Categorical,
    DeepEnsemble,
    GaussianProcess,
    GPHyperparameters,
    Integer,
    LogEI,
    Real,
    SearchSpace,
    Surrogate,
    log_expected_improvement,
    optimize_acquisition,
    search_space_from_algoperf,
    suggest_hyperparameters,
    upper_confidence_bound,
)
from optforge.search.evolution import RegularizedEvolution, tournament_select
from optforge.search.hashing import (
    FitnessCache,
    FunctionalHash,
    FunctionalHashing,
    ProgramProbe,
    fingerprint,
    round_significant,
)
from optforge.search.programs import OPS, Instruction, Op, Program, ProgramSpace
from optforge.search.qd import (
    CMAES,
    AddResult,
    AddStatus,
    ArchiveBase,
    ArchiveStats,
    CVTArchive,
    EmitterBase,
    EvolutionStrategyEmitter,
    GaussianEmitter,
    GridArchive,
    IsoLineEmitter,
    MapElites,
    archive_heatmap,
)
from optforge.search.run import Evaluation, EvaluationError, SearchHistory, SerialExecutor, run

__all__ = [
    # contract and loop
    "Candidate",
    "Evaluation",
    "EvaluationError",
    "SearchAlgorithm",
    "SearchHistory",
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
