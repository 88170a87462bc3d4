"""One trial: train one workload with one submission and one configuration, timed to target.

``run_trial`` follows AlgoPerf's ``submission_runner.train_once`` (bench card §5):

- model initialization and ``init_optimizer_state`` run before the clock starts;
- ``data_selection``, ``update_params`` and ``prepare_for_eval`` are on the clock; evaluation
  (validation metric and train-eval loss) and logging are not;
- evaluation happens every ``eval_every_steps`` steps and after the last step, but never once
  the time budget is spent (no free evaluation past ``max_runtime``, fixed in AlgoPerf v0.6);
- the target is sticky: the trial's time is the submission time at the first evaluation that
  meets it, and the run stops there;
- a run also stops when the step budget, ``max_steps`` or the time budget is spent; a
  non-finite loss or metric ends it with status ``"diverged"``.

Budgets are the workload's ``step_budget`` and ``time_budget_s`` times ``budget_scale`` (1.5 for
the self-tuning ruleset). The function is top level and its arguments and result are plain data,
so it runs in process pools and on Dask workers.

Example:
    >>> rec = run_trial(TrialSpec("digits_cnn", "nadamw", {}, max_steps=20))  # doctest: +SKIP
    >>> rec["status"], rec["steps"]  # doctest: +SKIP
    ('ok', 20)
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from optforge._seeding import derive_seed, generator_for
from optforge._validation import check_positive

__all__ = ["TrialSpec", "run_trial"]

# Per-step streams, as AlgoPerf splits the step's key (card §2): data selection, update,
# prepare-for-eval, evaluation. Data selection uses the workload's (seed, step) order itself.
_RNG_INIT, _RNG_UPDATE = 0, 1
_RNG_GLOBAL = 0x44524F50  # "DROP": torch's global RNG during the trial (dropout)


@dataclass
class TrialSpec:
    """What to run: plain data, so it pickles and serializes.

    Attributes:
        workload: a name from ``list_workloads()``.
        submission: a name from ``list_submissions()``.
        hparams: the configuration; an empty dict means the submission's ``default_hparams``.
        seed: model initialization, batch order and submission randomness all derive from it.
        torch_threads: ``torch.set_num_threads`` for the trial (recorded with the result).
        budget_scale: multiplies the step and time budgets (1.5 in the self-tuning ruleset).
        max_steps: an extra cap on steps (quick runs, tests); None: the step budget only.
        time_budget: False turns the time budget off, so that a trial stops at its target or
            step budget only and its steps to target do not depend on the machine's speed.
        eval_period_s: evaluate once this much training time has passed since the last
            evaluation (AlgoPerf's cadence, ``eval_period_time_sec``; the first step is always
            evaluated); None: every ``eval_every_steps`` steps.
    """

    workload: str
    submission: str
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    torch_threads: int = 1
    budget_scale: float = 1.0
    max_steps: int | None = None
    time_budget: bool = True
    eval_period_s: float | None = None


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and 0-dim tensors become numbers, tuples lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item"):  # numpy scalar or 0-dim tensor
        return _jsonable(value.item())
    return str(value)


def _finite(x: float | None) -> float | None:
    """A JSON-safe number: NaN and infinities become None."""
    return x if x is not None and math.isfinite(x) else None


def _environment(threads: int) -> dict[str, Any]:
    return {
        "torch_threads": threads,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_trial(spec: TrialSpec, clock: Callable[[], float] = time.perf_counter,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run one trial and return its JSON-able record (never raises for a failed trial).

    Args:
        spec: the trial.
        clock: seconds as a float; injectable so tests can drive time (``time.perf_counter``).
        progress: called as ``progress(step, step_limit)`` after every step, off the clock.

    Returns:
        A dict with every ``TrialSpec`` field (as given), ``hparams_used`` (the submission's
        ``default_hparams`` when ``hparams`` is empty), ``data_hash``, ``status`` (``"ok"``,
        ``"diverged"`` or ``"error"``), ``error`` (message or None), ``reached_target``,
        ``time_to_target_s`` and ``steps_to_target`` (None when not reached),
        ``train_time_s`` (submission time, evaluation excluded), ``eval_time_s``,
        ``final_metric``, ``best_metric``, ``curve`` (one ``{"step", "train_time_s", "metric",
        "train_loss"}`` per evaluation), ``steps``, ``stop_reason`` (``"target"``,
        ``"step_budget"``, ``"time_budget"``, ``"max_steps"``, ``"complete"`` (the submission
        ended the run), ``"diverged"`` or ``"error"``),
        ``stop_detail`` (what diverged, else None), the workload's
        ``metric_name``, ``higher_is_better``, ``target`` and budgets (``time_budget_s`` None when
        the time budget is off), ``batch_size`` and the
        environment (``torch_threads``, ``torch_version``, ``python``, ``platform``).
        Non-finite numbers are written as None so the record is strict JSON.
    """
    record: dict[str, Any] = {k: _jsonable(v) for k, v in dataclasses.asdict(spec).items()}
    record.update({
        "hparams_used": None, "data_hash": None, "status": "error", "error": None,
        "reached_target": False, "time_to_target_s": None, "steps_to_target": None,
        "train_time_s": 0.0, "eval_time_s": 0.0, "final_metric": None, "best_metric": None,
        "curve": [], "steps": 0, "stop_reason": "error", "metric_name": None,
        "higher_is_better": None, "target": None, "step_limit": None, "time_budget_s": None,
        "batch_size": None, "stop_detail": None,
    })
    previous_threads = torch.get_num_threads()
    try:
        if not isinstance(spec.torch_threads, int) or spec.torch_threads < 1:
            raise ValueError(f"torch_threads must be an integer >= 1 (got {spec.torch_threads!r})")
        torch.set_num_threads(spec.torch_threads)
        record.update(_environment(torch.get_num_threads()))
        # Dropout draws from the global RNG: seed it per trial (and restore it afterwards).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(spec.seed, _RNG_GLOBAL))
            _train(spec, clock, record, progress)
    except Exception as exc:  # a failed trial is a result, not a crash of the whole study
        record["status"], record["stop_reason"] = "error", "error"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=8)
    finally:
        torch.set_num_threads(previous_threads)
    return record


def _rate(hparams: Mapping[str, Any] | None, name: str) -> float | None:
    """A workload-side dropout rate from the configuration (AlgoPerf's runner reads
    ``hyperparameters.dropout_rate`` where it exists)."""
    return None if not hparams or hparams.get(name) is None else float(hparams[name])


def _train(spec: TrialSpec, clock: Callable[[], float], record: dict[str, Any],
           progress: Callable[[int, int], None] | None = None) -> None:
    from optforge.bench.submission import TrainingComplete, get_submission
    from optforge.bench.workload import reached
    from optforge.bench.workloads import get_workload

    check_positive("budget_scale", spec.budget_scale)
    if spec.max_steps is not None and spec.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None (got {spec.max_steps})")
    if spec.eval_period_s is not None:
        check_positive("eval_period_s", spec.eval_period_s)
    workload = get_workload(spec.workload)
    submission = get_submission(spec.submission)
    # empty hparams: the submission's defaults (self-tuning, quick runs)
    hparams = dict(spec.hparams) if spec.hparams else dict(submission.default_hparams)
    record["hparams_used"] = _jsonable(hparams)
    budget_steps = math.ceil(workload.step_budget * spec.budget_scale)
    step_limit = budget_steps if spec.max_steps is None else min(budget_steps, spec.max_steps)
    time_budget = workload.time_budget_s * spec.budget_scale if spec.time_budget else math.inf
    record.update({
        "data_hash": workload.data_hash(), "metric_name": workload.metric_name,
        "higher_is_better": workload.higher_is_better, "target": workload.target,
        "step_limit": step_limit, "time_budget_s": _finite(time_budget),
        "batch_size": submission.get_batch_size(workload.name),
    })

    # Off the clock: model initialization and optimizer state (AlgoPerf's init phase).
    model = workload.init_model(spec.seed, dropout_rate=_rate(hparams, "dropout_rate"),
                                aux_dropout_rate=_rate(hparams, "aux_dropout_rate"))
    opt_state = submission.init_optimizer_state(
        workload, model, hparams, generator_for("cpu", spec.seed, _RNG_INIT))

    train_time = eval_time = 0.0
    best: float | None = None
    curve: list[dict[str, Any]] = []
    status, stop_reason = "ok", "step_budget"
    step = 0
    complete = False  # the submission ended the run (AlgoPerf's TrainingCompleteError)
    last_eval_time = -math.inf  # training time at the last evaluation (time cadence)
    last_end = clock()
    while True:
        batch = submission.data_selection(workload, hparams, opt_state, step, spec.seed)
        try:
            opt_state = submission.update_params(
                workload, model, hparams, batch, opt_state, step,
                generator_for("cpu", spec.seed, step, _RNG_UPDATE))
        except FloatingPointError as exc:  # optforge optimizers refuse non-finite gradients
            train_time += clock() - last_end
            step += 1
            status, stop_reason = "diverged", "diverged"
            record["stop_detail"] = f"step {step}: {exc}"
            break
        except TrainingComplete:
            complete = True
        step_end = clock()
        train_time += step_end - last_end
        step += 1
        submission.observe(opt_state, step=step, train_time_s=train_time)
        if progress is not None:
            progress(step, step_limit)

        loss = opt_state.get("loss") if isinstance(opt_state, dict) else None
        if loss is not None and not math.isfinite(float(loss)):
            status, stop_reason = "diverged", "diverged"
            record["stop_detail"] = f"step {step}: training loss {float(loss)}"
            break
        out_of_time = train_time >= time_budget
        last = step >= step_limit or out_of_time or complete
        if spec.eval_period_s is None:
            due = step % workload.eval_every_steps == 0
        else:
            due = train_time - last_eval_time >= spec.eval_period_s
        if due or last:
            t0 = clock()
            opt_state = submission.prepare_for_eval(workload, model, hparams, opt_state, step)
            train_time += clock() - t0
            if train_time >= time_budget:  # no evaluation once the budget is spent
                stop_reason = "time_budget"
                break
            t0 = clock()  # --- clock paused: evaluation and logging
            eval_model = submission.model_for_eval(model, opt_state)
            metric = workload.evaluate(eval_model)
            train_loss = workload.train_eval_loss(eval_model)
            curve.append({"step": step, "train_time_s": train_time,
                          "metric": _finite(metric), "train_loss": _finite(train_loss)})
            last_eval_time = train_time
            submission.observe(opt_state, step=step, train_time_s=train_time,
                               evaluation=curve[-1])
            eval_time += clock() - t0
            if not (math.isfinite(metric) and math.isfinite(train_loss)):
                status, stop_reason = "diverged", "diverged"
                record["stop_detail"] = (f"step {step}: {workload.metric_name} {metric}, "
                                         f"train-eval loss {train_loss}")
                break
            record["final_metric"] = metric
            if best is None or (metric > best if workload.higher_is_better else metric < best):
                best = metric
            if reached(workload, metric):  # sticky: the first time counts, then stop
                record.update(reached_target=True, time_to_target_s=train_time,
                              steps_to_target=step)
                stop_reason = "target"
                break
        if last:
            if complete:
                stop_reason = "complete"
            elif out_of_time:
                stop_reason = "time_budget"
            elif step < budget_steps:
                stop_reason = "max_steps"
            break
        last_end = clock()

    record.update({
        "status": status, "stop_reason": stop_reason, "steps": step,
        "train_time_s": train_time, "eval_time_s": eval_time, "best_metric": best,
        "curve": curve,
    })
    record["final_metric"] = _finite(record["final_metric"])
