"""How external tuning picks configurations: AlgoPerf's Halton draws, or Bayesian optimization.

- ``"halton"`` (AlgoPerf, the default): every configuration is drawn up front
  (:func:`optforge.bench.rulesets.plan_trials`).
- ``"bo"``: each (workload, submission, study) is tuned on its own by
  :func:`optforge.search.bo.suggest_hyperparameters`. Trials are proposed in rounds of
  ``batch_size``; round ``r`` holds trials ``r q .. (r+1) q - 1`` of the study and is proposed
  from the study's trials of the earlier rounds only. The suggestion is a pure function of that
  history, so a resumed run proposes exactly what an uninterrupted one would.

The objective (minimized) of a trial, for time-to-target tuning, with ``T`` the trial's time
budget (scaled by the ruleset):

- reached the target after ``t`` s: ``log t``;
- missed it: ``log T + log1p(gap)``, ``gap`` the distance from the best metric to the target
  divided by ``|target|`` (``>= 0``), so every miss ranks after every hit and nearer misses
  rank first; it is continuous at the boundary (a miss by 0 counts as reaching at ``T``);
- diverged, error, or no evaluation: ``max(log T, worst value of the study's other trials) +``
  :data:`FAILURE_MARGIN`, worse than everything seen, never NaN.

Example::

    >>> trial_objective({"status": "ok", "reached_target": True, "time_to_target_s": 1.0,
    ...                  "time_budget_s": 60.0})
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from optforge._seeding import derive_seed
from optforge.bench.rulesets import (
    PlannedTrial,
    Ruleset,
    _trial_id,
    submission_space,
    trial_seed,
)
from optforge.bench.search_space import SearchSpace

__all__ = [
    "FAILURE_MARGIN",
    "TUNERS",
    "BayesianTuner",
    "check_tuner",
    "initial_trials",
    "study_objectives",
    "trial_objective",
]

TUNERS = ("halton", "bo")

#: A failed trial counts as ``e`` times slower than the worst trial of its study (log units).
FAILURE_MARGIN = 1.0

# Floor on a time to target before the log: a trial reaching its target at its first
# evaluation after ~0 s must not give -inf.
_MIN_TIME_S = 1e-6

# Separates the BO seed stream from the trial seeds derived from the same (seed, study).
_BO_STREAM = 0xB0


def check_tuner(tuner: str, ruleset: str) -> None:
    """ValueError unless ``tuner`` is known and fits ``ruleset`` (BO needs external tuning)."""
    if tuner not in TUNERS:
        raise ValueError(f"tuner must be one of {', '.join(TUNERS)} (got {tuner!r})")
    if tuner != "halton" and ruleset != "external":
        raise ValueError(
            f"--tuner {tuner} applies to --ruleset external only (got --ruleset {ruleset})"
        )


def initial_trials(num_trials: int) -> int:
    """Quasi-random (Sobol) trials before the GP takes over: a third of the study, between 2
    (the fewest a GP is fitted on) and 10 (``BayesianOptimization``'s default, Optuna's)."""
    return max(2, min(10, num_trials // 3))


def _time_budget(record: Mapping[str, Any], workload: Mapping[str, Any] | None) -> float:
    budget = record.get("time_budget_s")  # run_trial records it already scaled
    if budget is None and workload and workload.get("time_budget_s") is not None:
        budget = float(workload["time_budget_s"]) * float(record.get("budget_scale") or 1.0)
    if budget is None or not budget > 0:
        raise ValueError(
            f"trial {record.get('trial_id', '?')}: time budget unknown (got {budget!r}); "
            "the BO objective needs the workload's time_budget_s"
        )
    return float(budget)


def trial_objective(
    record: Mapping[str, Any], workload: Mapping[str, Any] | None = None
) -> float | None:
    """The value BO minimizes for one trial record, or ``None`` for a failed trial (diverged,
    error, or no evaluation), whose value depends on its study (:func:`study_objectives`).

    ``workload`` (the workload's ``describe()``) fills in ``target``, ``higher_is_better`` and
    ``time_budget_s`` where the record lacks them.
    """
    if record.get("status", "ok") != "ok":
        return None
    log_budget = math.log(_time_budget(record, workload))
    t = record.get("time_to_target_s")
    if record.get("reached_target") and t is not None and math.isfinite(float(t)):
        return min(math.log(max(float(t), _MIN_TIME_S)), log_budget)
    meta = workload or {}
    best = record.get("best_metric")
    target = record.get("target", meta.get("target"))
    higher = record.get("higher_is_better", meta.get("higher_is_better"))
    if best is None or target is None or higher is None or not math.isfinite(float(best)):
        return None
    gap = (float(target) - float(best)) if higher else (float(best) - float(target))
    gap = max(0.0, gap) / max(abs(float(target)), 1e-12)
    return log_budget + math.log1p(gap)


def study_objectives(
    records: Sequence[Mapping[str, Any]], workload: Mapping[str, Any] | None = None
) -> list[float]:
    """:func:`trial_objective` of each record of one study, failures valued at
    ``max(log T, worst other value) + FAILURE_MARGIN`` (always finite)."""
    values = [trial_objective(r, workload) for r in records]
    if all(v is not None for v in values):
        return values  # type: ignore[return-value]
    worst = max([math.log(_time_budget(r, workload)) for r in records]
                + [v for v in values if v is not None])
    return [worst + FAILURE_MARGIN if v is None else v for v in values]


class BayesianTuner:
    """External tuning by Bayesian optimization, one round of trials at a time.

    Args:
        workloads: workload names.
        submissions: name -> submission (``search_space``, ``default_hparams``).
        ruleset: an external-tuning :class:`~optforge.bench.rulesets.Ruleset` (trials per
            study = BO budget per study, studies = independent BO runs).
        workload_info: name -> the workload's ``describe()`` (target, direction, budget).
        seed: master seed; study ``j`` runs BO with seed ``derive_seed(seed, j, 0xB0)`` on every
            workload and submission, and its trials keep the Halton path's trial seeds.
        search_space: overrides every submission's own space.
        batch_size: suggestions per round and study (the CLI passes ``--jobs``, or 1).
        torch_threads, max_steps: copied into every planned trial.

    Raises:
        ValueError: a submission without a search space, a list-form space (nothing to
            model), or a space BO cannot use (message names the hyperparameter).
    """

    def __init__(
        self,
        workloads: Sequence[str],
        submissions: Mapping[str, Any],
        ruleset: Ruleset,
        workload_info: Mapping[str, Mapping[str, Any]],
        *,
        seed: int = 0,
        search_space: SearchSpace | None = None,
        batch_size: int = 1,
        torch_threads: int = 1,
        max_steps: int | None = None,
    ) -> None:
        from optforge.search.bo.algoperf import search_space_from_algoperf

        if ruleset.name != "external":
            raise ValueError(f"BO tunes the external-tuning ruleset only (got {ruleset.name!r})")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
        self.workloads, self.ruleset, self.seed = list(workloads), ruleset, seed
        self.submissions = dict(submissions)
        self.workload_info = {w: dict(workload_info.get(w) or {}) for w in self.workloads}
        self.batch_size, self.torch_threads, self.max_steps = batch_size, torch_threads, max_steps
        self.n_initial = initial_trials(ruleset.num_trials)
        self._spaces: dict[str, dict[str, Any]] = {}
        for name, sub in self.submissions.items():
            space = submission_space(name, sub, search_space)
            if space.ranges is None:
                raise ValueError(
                    f"--tuner bo needs a search space of ranges (name -> {{min, max, scaling}} "
                    f"or {{feasible_points}}); the space for '{name}' is a list of fixed "
                    "configurations"
                )
            try:
                search_space_from_algoperf(space.ranges)  # fail now, not after some trials
            except ValueError as e:
                raise ValueError(f"search space for '{name}' cannot be used by BO: {e}") from None
            self._spaces[name] = space.ranges

    def describe(self) -> dict[str, Any]:
        """Plain data for ``run.json``."""
        return {"name": "bo", "batch_size": self.batch_size, "n_initial": self.n_initial,
                "objective": "log time to target; miss: log budget + log1p(normalized gap); "
                             f"failure: worst of study + {FAILURE_MARGIN:g}"}

    def _cells(self):
        for wl in self.workloads:
            for sub in self.submissions:
                for j in range(self.ruleset.num_studies):
                    yield wl, sub, j

    def trial_ids(self) -> list[str]:
        """Every trial id of the run, in the Halton plan's order (workload, submission, study,
        trial)."""
        return [_trial_id(wl, sub, j, i) for wl, sub, j in self._cells()
                for i in range(self.ruleset.num_trials)]

    def next_round(self, records: Mapping[str, Mapping[str, Any]]) -> list[PlannedTrial]:
        """The trials of each study's first round that is not fully in ``records`` (trial_id ->
        record), proposed from that study's earlier rounds; ``[]`` when every study is done.

        Trials of that round that are already recorded are planned again, with the same
        configuration, so that the runner can check them and skip them.
        """
        n, q = self.ruleset.num_trials, self.batch_size
        out: list[PlannedTrial] = []
        for wl, sub, j in self._cells():
            ids = [_trial_id(wl, sub, j, i) for i in range(n)]
            start = next((s for s in range(0, n, q)
                          if not all(i in records for i in ids[s:s + q])), None)
            if start is None:
                continue
            configs = self._propose(sub, wl, j, [records[i] for i in ids[:start]],
                                    min(q, n - start))
            defaults = dict(getattr(self.submissions[sub], "default_hparams", {}) or {})
            out += [
                PlannedTrial(
                    trial_id=ids[start + k], workload=wl, submission=sub, study=j,
                    trial=start + k, hparams={**defaults, **cfg},
                    seed=trial_seed(self.seed, j, start + k),
                    budget_scale=self.ruleset.budget_scale, torch_threads=self.torch_threads,
                    max_steps=self.max_steps,
                )
                for k, cfg in enumerate(configs)
            ]
        return out

    def _propose(self, sub: str, wl: str, study: int, history: list[Mapping[str, Any]],
                 n: int) -> list[dict[str, Any]]:
        import torch

        from optforge.search.bo.algoperf import suggest_hyperparameters

        space = self._spaces[sub]
        values = study_objectives(history, self.workload_info[wl])
        pairs = []
        for rec, v in zip(history, values):
            hp = rec.get("hparams") or {}
            missing = [k for k in space if k not in hp]
            if missing:
                raise ValueError(f"trial {rec.get('trial_id', '?')} has no value for "
                                 f"{', '.join(missing)}; use a fresh --out folder")
            pairs.append(({k: hp[k] for k in space}, v))
        # One thread: the proposal must not depend on the machine's thread count, or a resumed
        # run on another machine could propose different bits.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return suggest_hyperparameters(
                space, pairs, n, derive_seed(self.seed, study, _BO_STREAM) % (2**31),
                n_initial=self.n_initial,
            )
        finally:
            torch.set_num_threads(threads)
