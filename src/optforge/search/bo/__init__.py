"""Bayesian optimization: search spaces, GP and deep-ensemble surrogates, LogEI/UCB, ask/tell.

The math (``space``, ``gp``, ``ensemble``, ``acquisition``) is apart from the adapter
(``optimizer``), as in Optuna's ``optuna/_gp``; ``algoperf`` offers BO to the benchmark harness.
"""

from optforge.search.bo.acquisition import (
    UCB,
    Acquisition,
    LogEI,
    log_expected_improvement,
    optimize_acquisition,
    upper_confidence_bound,
)
from optforge.search.bo.algoperf import search_space_from_algoperf, suggest_hyperparameters
from optforge.search.bo.ensemble import DeepEnsemble
from optforge.search.bo.gp import GaussianProcess, GPHyperparameters
from optforge.search.bo.optimizer import BayesianOptimization
from optforge.search.bo.space import Categorical, Integer, Real, SearchSpace
from optforge.search.bo.surrogate import Surrogate

__all__ = [
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
