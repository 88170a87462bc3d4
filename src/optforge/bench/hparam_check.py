"""Checking a search space against a submission before any trial runs.

AlgoPerf hands every sampled configuration to the submission and lets a bad one fail inside its
trial; here a space whose names a submission cannot take, or whose values no trial could use,
is refused up front with one line (the CLI exits with status 2):

- **names**: a built-in submission (:class:`~optforge.bench.submission.RegistrySubmission`)
  takes its recipe's names, the optimizer's constructor arguments and AlgoPerf's workload-side
  names (``dropout_rate``, ``aux_dropout_rate``, ``label_smoothing``); a submission file reads
  whatever names it likes, so only the values of names with a known meaning are checked;
- **values** of names with a known meaning (:data:`DOMAINS`) must be numbers inside their
  domain, at both ends of a range and at every feasible point;
- **a dry run**: for a built-in submission, the optimizer is built on a one-parameter model
  with the defaults overlaid by each end of each range (and each feasible point, and each
  fixed configuration), so the optimizer's own checks run now, not in every trial.

Example::

    >>> from optforge.bench.search_space import parse_search_space
    >>> from optforge.bench.submission import get_submission
    >>> space = parse_search_space({"label_smoothing": {"min": 0.0, "max": 1.5,
    ...                                                 "scaling": "linear"}})
    >>> try:
    ...     check_search_space("adamw", get_submission("adamw"), space)
    ... except SearchSpaceError as e:
    ...     print(e)
    search space: 'label_smoothing'.max must be in [0, 1) (got 1.5)
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from optforge.bench.search_space import SearchSpace, SearchSpaceError

__all__ = ["DOMAINS", "check_search_space"]

_INF = math.inf
#: name -> (low, high, low included, high included): AlgoPerf's baseline and workload names.
DOMAINS: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, _INF, False, False),
    "weight_decay": (0.0, _INF, True, False),
    "warmup_factor": (0.0, 1.0, True, True),
    "one_minus_beta1": (0.0, 1.0, False, True),
    "beta1": (0.0, 1.0, True, False),
    "beta2": (0.0, 1.0, True, False),
    "grad_clip_norm": (0.0, _INF, True, False),
    "step_hint_factor": (0.0, _INF, False, False),
    "dropout_rate": (0.0, 1.0, True, False),
    "aux_dropout_rate": (0.0, 1.0, True, False),
    "label_smoothing": (0.0, 1.0, True, False),
}


#: names that go to the model and loss (AlgoPerf's), accepted by every built-in submission.
_WORKLOAD_SIDE = frozenset({"dropout_rate", "aux_dropout_rate", "label_smoothing"})


def _interval(name: str) -> str:
    lo, hi, lo_in, hi_in = DOMAINS[name]
    return f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def _check_value(name: str, value: Any, what: str, where: str) -> None:
    if name not in DOMAINS:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SearchSpaceError(f"{where}: {what} must be a finite number (got {value!r})")
    lo, hi, lo_in, hi_in = DOMAINS[name]
    if not ((value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)):
        raise SearchSpaceError(f"{where}: {what} must be in {_interval(name)} (got {value!r})")


def _corners(space: SearchSpace) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(description, partial configuration)`` for each value a trial can be handed."""
    if space.points is not None:
        for i, point in enumerate(space.points):
            yield f"configuration {i}", dict(point)
        return
    for name, spec in (space.ranges or {}).items():
        if "feasible_points" in spec:
            for v in spec["feasible_points"]:
                yield f"'{name}' = {v!r}", {name: v}
        else:
            yield f"'{name}'.min", {name: spec["min"]}
            yield f"'{name}'.max", {name: spec["max"]}


def _check_values(space: SearchSpace, where: str) -> None:
    if space.points is not None:
        for i, point in enumerate(space.points):
            for name, v in point.items():
                _check_value(name, v, f"configuration {i}: '{name}'", where)
        return
    for name, spec in (space.ranges or {}).items():
        if "feasible_points" in spec:
            for v in spec["feasible_points"]:
                _check_value(name, v, f"'{name}' feasible point", where)
        else:
            _check_value(name, spec["min"], f"'{name}'.min", where)
            _check_value(name, spec["max"], f"'{name}'.max", where)


def _dry_run(sub_name: str, submission: Any, hparams: Mapping[str, Any], what: str,
             where: str) -> None:
    model = torch.nn.Linear(1, 1)
    stand_in = types.SimpleNamespace(step_budget=100, name="dry_run")
    try:
        submission.init_optimizer_state(stand_in, model, dict(hparams),
                                        torch.Generator().manual_seed(0))
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            bad = str(e).split("unexpected keyword argument")[-1].strip(" '\"")
            raise SearchSpaceError(
                f"{where}: '{bad}' is not a hyperparameter of submission '{sub_name}'"
            ) from None
        raise SearchSpaceError(f"{where}: {what} is refused by '{sub_name}': {e}") from None
    except (ValueError, KeyError) as e:
        raise SearchSpaceError(f"{where}: {what} is refused by '{sub_name}': {e}") from None


def check_search_space(sub_name: str, submission: Any, space: SearchSpace, *,
                       where: str = "search space") -> None:
    """Refuse ``space`` for ``submission`` before any trial runs (see the module docstring).

    Raises:
        SearchSpaceError: one line naming ``where``, the hyperparameter and the value.
    """
    from optforge.bench.preflight import check_names
    from optforge.bench.submission import RegistrySubmission

    names = set(space.ranges or {}) | {n for p in (space.points or []) for n in p}
    check_names(sub_name, submission, names, also_known=_WORKLOAD_SIDE)
    _check_values(space, where)
    if not isinstance(submission, RegistrySubmission):
        return  # a submission file may read any name; its values were checked above
    defaults = dict(submission.default_hparams)
    for what, partial in _corners(space):
        _dry_run(sub_name, submission, {**defaults, **partial}, what, where)
