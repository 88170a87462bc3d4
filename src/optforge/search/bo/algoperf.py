"""Bayesian optimization as a tuning strategy for AlgoPerf-format search spaces.

AlgoPerf's external-tuning ruleset describes a workload-agnostic search space in
``tuning_search_space.json`` as a mapping from hyperparameter name to either a range
``{"min": a, "max": b, "scaling": "linear" | "log"}`` or a discrete set
``{"feasible_points": [...]}`` (see the reference card ``bench.md`` §6.1; the official harness
draws 15 quasi-random Halton points from it). This module turns such a mapping into a
:class:`~optforge.search.bo.space.SearchSpace` and proposes configurations by Bayesian
optimization from the trials run so far, statelessly: the same ``(space, history, n, seed)``
always gives the same suggestions, so a harness can call it between trials without keeping a
sampler alive.

Mapping: a range becomes ``Real(min, max, log=scaling == "log")``; ``feasible_points`` becomes
``Categorical(points)`` (one-hot: the points may be unordered, and a single point is simply a
constant). The fixed-list format (a JSON list of complete configurations) has nothing to model
and is rejected.

Example::

    space = {"learning_rate": {"min": 1e-4, "max": 1e-2, "scaling": "log"},
             "warmup_factor": {"feasible_points": [0.05]}}
    history = [({"learning_rate": 3e-3, "warmup_factor": 0.05}, 0.41)]   # (config, loss)
    (config,) = suggest_hyperparameters(space, history, n=1, seed=0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optforge._validation import check_int
from optforge.search.bo.optimizer import BayesianOptimization
from optforge.search.bo.space import Categorical, Real, SearchSpace

__all__ = ["search_space_from_algoperf", "suggest_hyperparameters"]

_SCALINGS = ("linear", "log")


def search_space_from_algoperf(spec: Mapping[str, Mapping[str, Any]]) -> SearchSpace:
    """A :class:`SearchSpace` from an AlgoPerf ``tuning_search_space.json`` mapping.

    Raises:
        ValueError: a fixed list of points, an entry that is neither a range nor
            ``feasible_points``, an unknown scaling, or an invalid range (the message names
            the hyperparameter).
    """
    if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        raise ValueError(
            "search space must be a mapping name -> {min, max, scaling} | {feasible_points}; "
            "the fixed-list format (a list of configurations) has nothing for BO to search"
        )
    if not isinstance(spec, Mapping):
        raise TypeError(f"search space must be a mapping (got {type(spec).__name__})")
    dims: dict[str, Real | Categorical] = {}
    for name, entry in spec.items():
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"hyperparameter {name!r} must be a mapping with min/max/scaling or "
                f"feasible_points (got {entry!r})"
            )
        if "feasible_points" in entry:
            points = entry["feasible_points"]
            if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
                raise ValueError(
                    f"hyperparameter {name!r}: feasible_points must be a list (got {points!r})"
                )
            dims[name] = Categorical(points)
        elif "min" in entry and "max" in entry:
            scaling = entry.get("scaling", "linear")
            if scaling not in _SCALINGS:
                raise ValueError(
                    f"hyperparameter {name!r}: scaling must be one of {list(_SCALINGS)} "
                    f"(got {scaling!r})"
                )
            dims[name] = Real(entry["min"], entry["max"], log=scaling == "log")
        else:
            raise ValueError(
                f"hyperparameter {name!r} must have min and max, or feasible_points "
                f"(got keys {sorted(entry)})"
            )
    return SearchSpace(dims)


def suggest_hyperparameters(
    search_space: Mapping[str, Mapping[str, Any]] | SearchSpace,
    history: Sequence[tuple[Mapping[str, Any], float]],
    n: int,
    seed: int,
    *,
    maximize: bool = False,
    **options: Any,
) -> list[dict[str, Any]]:
    """``n`` configurations to try next, given the finished trials.

    Args:
        search_space: an AlgoPerf search-space mapping (or a ready :class:`SearchSpace`).
        history: ``(config, objective)`` pairs of finished trials (objective finite; leave
            failed trials out). Configs must lie in the space.
        n: how many suggestions (a batch is chosen with pending points believed).
        seed: makes the answer a pure function of the arguments.
        maximize: the objective is to be maximized (e.g. accuracy); default minimize.
        **options: passed to :class:`BayesianOptimization` (``n_initial``, ``acquisition``...).

    Returns:
        ``n`` dicts ``{name: value}``. While fewer than ``n_initial`` trials are known these
        continue one scrambled Sobol sequence (the ``k``-th trial gets point ``k``).
    """
    n = check_int("n", n, low=1)
    space = (
        search_space
        if isinstance(search_space, SearchSpace)
        else search_space_from_algoperf(search_space)
    )
    bo = BayesianOptimization(space, seed=seed, maximize=maximize, **options)
    if history:
        configs, values = zip(*history)
        bo.observe(list(configs), list(values))
    return [c.value for c in bo.ask(n)]
