"""AlgoPerf's two tuning rulesets: which trials to run, and how their times become one number.

- **External tuning**: the harness draws ``N x M`` configurations from the submission's search
  space by scrambled Halton sampling and deals them to ``M`` independent studies of ``N``
  trials; a study's time is its best trial's time to target; a workload's time is the
  **median over studies** (AlgoPerf v0.6: N = 5, M = 3).
- **Self-tuning**: no exposed hyperparameters (the submission's defaults), one trial per study,
  ``M`` studies (AlgoPerf: 3), and a runtime budget of **1.5x** the external-tuning budget.

A study that has no trial reaching the target counts as infinite time. Reference:
mlcommons/algorithmic-efficiency ``docs/DOCUMENTATION.md`` (tuning rulesets) and
``scoring/performance_profile.py`` (``get_workloads_time_to_target``).

Example::

    >>> rs = external_tuning(num_trials=5, num_studies=3)
    >>> rs.budget_scale, self_tuning().budget_scale
    (1.0, 1.5)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from optforge._seeding import derive_seed
from optforge.bench.search_space import SearchSpace, parse_search_space
from optforge.bench.trial import TrialSpec

__all__ = [
    "SELF_TUNING_BUDGET_SCALE",
    "PlannedTrial",
    "Ruleset",
    "aggregate",
    "external_tuning",
    "get_ruleset",
    "plan_trials",
    "self_tuning",
    "study_bests",
    "submission_space",
]

#: AlgoPerf's self-tuning runtime budget relative to the external-tuning budget.
SELF_TUNING_BUDGET_SCALE = 1.5

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Ruleset:
    """How many trials and studies, and the budget multiplier.

    Attributes:
        name: ``"external"`` or ``"self"``.
        num_trials: trials per study (``1`` under self-tuning).
        num_studies: independent studies; the workload time is the median over them.
        budget_scale: multiplier on each workload's time and step budgets.
    """

    name: str
    num_trials: int
    num_studies: int
    budget_scale: float

    def __post_init__(self) -> None:
        if self.name not in ("external", "self"):
            raise ValueError(f"ruleset must be 'external' or 'self' (got {self.name!r})")
        if self.num_trials < 1:
            raise ValueError(f"num_trials must be >= 1 (got {self.num_trials})")
        if self.num_studies < 1:
            raise ValueError(f"num_studies must be >= 1 (got {self.num_studies})")
        if self.name == "self" and self.num_trials != 1:
            raise ValueError(
                f"num_trials must be 1 under the self-tuning ruleset (got {self.num_trials})"
            )


def external_tuning(num_trials: int = 5, num_studies: int = 3) -> Ruleset:
    """External tuning; defaults are AlgoPerf v0.6's 5 trials x 3 studies."""
    return Ruleset("external", num_trials, num_studies, 1.0)


def self_tuning(num_studies: int = 3) -> Ruleset:
    """Self-tuning: default hyperparameters, one trial per study, budget x1.5 (AlgoPerf)."""
    return Ruleset("self", 1, num_studies, SELF_TUNING_BUDGET_SCALE)


def get_ruleset(name: str, *, num_trials: int = 5, num_studies: int = 3) -> Ruleset:
    """The ruleset called ``name`` (``"external"`` or ``"self"``; ``num_trials`` is ignored for
    ``"self"``)."""
    if name == "external":
        return external_tuning(num_trials, num_studies)
    if name == "self":
        return self_tuning(num_studies)
    raise ValueError(f"ruleset must be 'external' or 'self' (got {name!r})")


@dataclass(frozen=True)
class PlannedTrial:
    """One trial to run: a workload, a submission, a configuration and a seed.

    ``trial_id`` names the record file (``trials/<trial_id>.json``) and is stable across
    reruns of the same command, which is what resuming relies on.
    """

    trial_id: str
    workload: str
    submission: str
    study: int
    trial: int
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    budget_scale: float = 1.0
    torch_threads: int = 1
    max_steps: int | None = None
    time_budget: bool = True
    eval_period_s: float | None = None

    def spec_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`optforge.bench.trial.TrialSpec` (its fields, read here)."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(TrialSpec)}
        kwargs["hparams"] = dict(self.hparams)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trial_seed(seed: int, study: int, trial: int) -> int:
    """The seed of trial ``trial`` of study ``study``: a mix of the three (31 bits).

    It does not depend on the workload or the submission, so every submission sees the same
    model initialization and batch order in the same (study, trial) slot.
    """
    return derive_seed(seed, study, trial) % (2**31)


def _trial_id(workload: str, submission: str, study: int, trial: int) -> str:
    return f"{_SAFE.sub('_', workload)}--{_SAFE.sub('_', submission)}--s{study}-t{trial}"


def submission_space(name: str, submission: Any, override: SearchSpace | None) -> SearchSpace:
    """The space external tuning searches for ``submission``: ``override`` if given, else the
    submission's own ``search_space`` (ValueError if it has none)."""
    if override is not None:
        return override
    raw = getattr(submission, "search_space", None)
    if not raw:
        raise ValueError(
            f"submission '{name}' has no search space; use the self-tuning "
            "ruleset or pass a search-space file"
        )
    return parse_search_space(raw, where=f"search space of '{name}'")


def plan_trials(
    workloads: Sequence[str],
    submissions: Mapping[str, Any],
    ruleset: Ruleset,
    *,
    seed: int = 0,
    search_space: SearchSpace | None = None,
    torch_threads: int = 1,
    max_steps: int | None = None,
    protocol: str = "optforge",
) -> list[PlannedTrial]:
    """Every trial of a run, in a fixed order (workload, submission, study, trial).

    Args:
        workloads: workload names.
        submissions: name -> submission object with ``search_space`` (AlgoPerf JSON) and
            ``default_hparams`` (see :mod:`optforge.bench.submission`).
        ruleset: :func:`external_tuning` or :func:`self_tuning`.
        seed: master seed; fixes the Halton shuffle (hence the study assignment) and each
            trial's seed.
        search_space: overrides every submission's built-in space (external tuning only).
        torch_threads: torch intra-op threads of each trial.
        max_steps: optional cap on steps per trial (smoke tests; recorded).
        protocol: ``"algoperf"`` gives the trials of a study one seed and evaluates by
            training time (:mod:`optforge.bench.algoperf.protocol`); ``"optforge"`` one seed
            per trial and evaluations by steps.

    Under external tuning a sampled configuration is laid over the submission's defaults, so a
    space may tune a subset of the hyperparameters.
    """
    from optforge.bench.algoperf.protocol import get_protocol

    rules = get_protocol(protocol)
    periods: dict[str, float | None] = {w: None for w in workloads}
    if rules.eval_by_time:
        from optforge.bench.algoperf.workload import eval_period_time_sec

        for w in workloads:
            try:
                periods[w] = eval_period_time_sec(w)
            except ValueError:  # a user's own workload: no AlgoPerf cadence, evaluate by steps
                periods[w] = None
    plan: list[PlannedTrial] = []
    for sub_name, sub in submissions.items():
        defaults = dict(getattr(sub, "default_hparams", {}) or {})
        if ruleset.name == "external":
            space = submission_space(sub_name, sub, search_space)
            studies = space.assign_studies(ruleset.num_trials, ruleset.num_studies, seed=seed)
        else:
            studies = [[{}] for _ in range(ruleset.num_studies)]
        for j, configs in enumerate(studies):
            for i, cfg in enumerate(configs):
                for wl in workloads:
                    plan.append(
                        PlannedTrial(
                            trial_id=_trial_id(wl, sub_name, j, i),
                            workload=wl,
                            submission=sub_name,
                            study=j,
                            trial=i,
                            hparams={**defaults, **cfg},
                            # AlgoPerf's runner draws one seed per study for all its trials
                            seed=trial_seed(seed, j, 0 if rules.shared_study_seed else i),
                            budget_scale=ruleset.budget_scale,
                            torch_threads=torch_threads,
                            max_steps=max_steps,
                            eval_period_s=periods[wl],
                        )
                    )
    order = {w: k for k, w in enumerate(workloads)}
    plan.sort(key=lambda t: (order[t.workload], list(submissions).index(t.submission),
                             t.study, t.trial))
    return plan


def _value(record: Mapping[str, Any], key: str) -> float:
    """A record's time (or steps) to target; ``inf`` unless it ran fine and reached it."""
    if record.get("status", "ok") != "ok" or not record.get("reached_target", False):
        return math.inf
    v = record.get(key)
    if v is None:
        return math.inf
    v = float(v)
    return v if math.isfinite(v) else math.inf


def study_bests(
    records: Iterable[Mapping[str, Any]], key: str = "time_to_target_s"
) -> dict[tuple[str, str], dict[int, float]]:
    """``(submission, workload) -> {study: best trial's value}`` (``inf`` if none reached).

    AlgoPerf picks the trial that reaches the target at the earliest evaluation; with
    evaluations at a regular period that is the trial with the least time, used here, which
    also serves for ``steps_to_target``.
    """
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in records:
        cell = out.setdefault((r["submission"], r["workload"]), {})
        s = int(r.get("study", 0))
        cell[s] = min(cell.get(s, math.inf), _value(r, key))
    return out


def aggregate(
    records: Iterable[Mapping[str, Any]], key: str = "time_to_target_s"
) -> dict[str, dict[str, float]]:
    """``submission -> workload -> median over studies of the best trial's value``.

    ``np.median`` as in the reference: with 3 studies one failed study is tolerated, two are
    not (the median is then ``inf``).
    """
    out: dict[str, dict[str, float]] = {}
    for (sub, wl), per_study in study_bests(records, key).items():
        out.setdefault(sub, {})[wl] = float(np.median(list(per_study.values())))
    return out
