"""Running a benchmark: trials through any executor, one JSON record per trial, resumable.

A run is a list of :class:`~optforge.bench.rulesets.PlannedTrial` (from
:func:`~optforge.bench.rulesets.plan_trials`) executed through any object with a
``concurrent.futures``-style ``submit`` — by default a local process pool with
``min(cores, jobs)`` workers, each trial pinned to ``torch_threads`` threads (1 by default), or a
Dask ``Client(...).get_executor()`` to use a cluster. Each finished trial is written to
``OUT/trials/<trial_id>.json`` at once (atomically); rerunning the same command skips every trial
whose record exists, so an interrupted run resumes where it stopped. ``OUT/run.json`` holds the
configuration, the workloads' fixed settings and, per session, how the trials ran (executor,
concurrent trials, threads per trial, machine).

Example::

    from optforge.bench.study import BenchConfig, run_benchmark
    cfg = BenchConfig(workloads=["digits_cnn"], submissions=["adamw", "lion"], ruleset="self",
                      num_studies=1)
    result = run_benchmark(cfg, "bench-out", jobs=2)
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import json
import multiprocessing
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from optforge.bench.algoperf.loader import is_submission_ref
from optforge.bench.algoperf.protocol import get_protocol
from optforge.bench.executors import RayExecutor
from optforge.bench.hparam_check import check_search_space
from optforge.bench.lock import FolderInUse, OutLock
from optforge.bench.plugins import load_plugins
from optforge.bench.preflight import check_configurations, probe_configs
from optforge.bench.progress import PROGRESS_DIR, StepFile, read_fraction
from optforge.bench.records import load_records, scan_records, set_aside_damaged
from optforge.bench.rulesets import PlannedTrial, get_ruleset, plan_trials, submission_space
from optforge.bench.search_space import SearchSpace, parse_search_space
from optforge.bench.tuners import BayesianTuner, check_tuner

__all__ = [
    "BenchConfig",
    "BenchError",
    "InlineExecutor",
    "RunResult",
    "available_cores",
    "default_executor",
    "load_records",
    "machine_info",
    "run_benchmark",
    "run_rounds",
    "run_trials",
]

TrialFn = Callable[[Any], Mapping[str, Any]]


class BenchError(RuntimeError):
    """A benchmark run cannot proceed (bad configuration, unusable output folder, ...)."""


# ---------------------------------------------------------------------------- executors


class InlineExecutor(cf.Executor):
    """Runs each submitted call at once, in this process (tests, debugging, ``--jobs 0``)."""

    def submit(self, fn, /, *args, **kwargs):  # noqa: D102 - Executor API
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - delivered through the future
            fut.set_exception(e)
        # KeyboardInterrupt / SystemExit propagate at once, as they would in the caller.
        return fut


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _init_worker(torch_threads: int) -> None:
    # Set before torch is imported in the worker so OpenMP/MKL pools start at this size.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(torch_threads)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int, period_s: float = 0.5) -> None:
    """Ends this worker once its parent is gone (``kill -9`` of the run): an orphaned worker
    would finish its trial for nobody, load the machine and keep the resource tracker alive."""
    while os.getppid() == parent:
        time.sleep(period_s)
    os._exit(1)


def default_executor(jobs: int | None = None, torch_threads: int = 1) -> cf.ProcessPoolExecutor:
    """A local process pool with ``min(cores // torch_threads, jobs)`` workers (at least 1).

    Workers are started with ``spawn`` so that none inherits the parent's torch thread pools.
    """
    cores = available_cores()
    cap = max(1, cores // max(1, torch_threads))
    workers = cap if jobs is None else max(1, min(jobs, cap))
    return cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(torch_threads,),
    )


def _describe_executor(executor: Any) -> tuple[str, int | None]:
    """A readable name and, where it can be found, the number of concurrent trials."""
    kind = f"{type(executor).__module__}.{type(executor).__qualname__}"
    if isinstance(executor, InlineExecutor):
        return "inline (this process)", 1
    if isinstance(executor, cf.ProcessPoolExecutor):
        return "local process pool (spawn)", getattr(executor, "_max_workers", None)
    if isinstance(executor, RayExecutor):
        return "ray", executor.concurrency()
    client = getattr(executor, "_client", None)
    if client is not None:  # distributed.cfexecutor.ClientExecutor
        try:
            workers = client.scheduler_info()["workers"].values()
            return "dask distributed", int(sum(w.get("nthreads", 1) for w in workers))
        except Exception:  # noqa: BLE001 - description only
            return "dask distributed", None
    return kind, getattr(executor, "_max_workers", None)


# ---------------------------------------------------------------------------- trials


def _error_record(spec_kwargs: Mapping[str, Any], error: BaseException) -> dict[str, Any]:
    return {
        **{k: spec_kwargs[k] for k in ("workload", "submission", "hparams", "seed")},
        "status": "error",
        "error": f"{type(error).__name__}: {error}",
        "reached_target": False,
        "time_to_target_s": None,
        "steps_to_target": None,
        "final_metric": None,
        "best_metric": None,
        "curve": [],
        "torch_threads": spec_kwargs.get("torch_threads"),
    }


def _execute(trial_fn: TrialFn | None, spec_kwargs: dict[str, Any],
             plugins: Sequence[str] = (), progress_file: str | None = None) -> dict[str, Any]:
    """Runs in the worker: load the user's ``module:attr`` submissions and workloads, build the
    TrialSpec, run it; a raised error becomes an error record (a trial that fails the same way
    every time must not be rerun on resume)."""
    from optforge.bench.trial import TrialSpec, run_trial

    load_plugins(plugins)  # a worker that cannot import them records nothing: rerun later
    try:
        if trial_fn is None and progress_file is not None:
            return dict(run_trial(TrialSpec(**spec_kwargs), progress=StepFile(progress_file)))
        return dict((trial_fn or run_trial)(TrialSpec(**spec_kwargs)))
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        return _error_record(spec_kwargs, e)


def _normalized(x: Any) -> Any:
    return json.loads(json.dumps(x))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a crash never leaves half a record behind


def _check_matches(rec: Mapping[str, Any], t: PlannedTrial, path: Path) -> None:
    for key, want in (("hparams", t.hparams), ("seed", t.seed), ("max_steps", t.max_steps),
                      ("budget_scale", t.budget_scale)):
        if key in rec and _normalized(rec[key]) != _normalized(want):
            raise BenchError(
                f"{path} was recorded with {key}={rec[key]!r}, this run plans {want!r}; "
                "use a fresh --out folder or delete that record"
            )


def run_trials(
    trials: Sequence[PlannedTrial],
    out_dir: str | Path,
    *,
    executor: Any | None = None,
    jobs: int | None = None,
    trial_fn: TrialFn | None = None,
    progress: bool = False,
    priority: Callable[[PlannedTrial], float] | None = None,
    plugins: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], int]:
    """Run every planned trial whose record is missing; return ``(records in plan order,
    number of trials run now)``.

    Args:
        trials: the plan.
        out_dir: records go to ``out_dir/trials/<trial_id>.json``.
        executor: anything with ``submit(fn, *args) -> Future`` (default
            :func:`default_executor`, shut down at the end; a given executor is left open).
        jobs: concurrent trials for the default executor (capped at the cores).
        trial_fn: ``TrialSpec -> record`` (default :func:`optforge.bench.trial.run_trial`);
            must be picklable for process executors.
        progress: show a tqdm bar on stderr, moved by the running trials' steps too
            (:mod:`optforge.bench.progress`).
        priority: submission order key (lower first); records keep the plan order.
        plugins: ``module:attr`` submissions and workloads each worker loads before its trial.
    """
    trials_dir = Path(out_dir) / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)
    done, damaged = scan_records(out_dir)
    for line in set_aside_damaged(damaged):
        print(f"optforge bench: {line}", file=sys.stderr)
    for t in trials:
        if t.trial_id in done:
            _check_matches(done[t.trial_id], t, trials_dir / f"{t.trial_id}.json")
    todo = [t for t in trials if t.trial_id not in done]
    if priority is not None:
        todo.sort(key=priority)

    own = executor is None and bool(todo)
    if own:
        executor = default_executor(jobs, max(t.torch_threads for t in todo))
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="trials", unit="trial", file=sys.stderr,
                   dynamic_ncols=True)
    futures: dict[cf.Future, PlannedTrial] = {}
    broken: list[str] = []
    steps_dir = Path(out_dir).resolve() / PROGRESS_DIR  # absolute: workers run elsewhere
    if bar is not None:
        steps_dir.mkdir(exist_ok=True)

    def step_file(t: PlannedTrial) -> str | None:
        return None if bar is None else str(steps_dir / t.trial_id)

    n_finished = 0

    def show_steps() -> None:
        running = sum(read_fraction(step_file(t)) for t in futures.values())
        bar.n = round(n_finished + running, 2)
        bar.refresh()

    def collect(fut: cf.Future) -> None:
        nonlocal n_finished
        t = futures.pop(fut)
        try:
            rec = fut.result()
        except Exception as e:  # noqa: BLE001 - a dead worker: not recorded, rerun later
            broken.append(f"{t.trial_id} ({type(e).__name__}: {e})")
            return
        rec.update(trial_id=t.trial_id, study=t.study, trial=t.trial,
                   budget_scale=t.budget_scale, max_steps=t.max_steps)
        _write_json(trials_dir / f"{t.trial_id}.json", rec)
        done[t.trial_id] = rec
        if bar is not None:
            n_finished += 1
            Path(step_file(t)).unlink(missing_ok=True)
            bar.set_postfix_str(f"{t.workload}/{t.submission} {rec.get('status')}",
                                refresh=False)
            show_steps()

    try:
        for t in todo:
            futures[executor.submit(_execute, trial_fn, t.spec_kwargs(), tuple(plugins),
                                    step_file(t))] = t
            for fut in [f for f in futures if f.done()]:  # record as early as possible
                collect(fut)
        while futures:
            finished, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED,
                                  timeout=None if bar is None else 0.5)
            for fut in finished:
                collect(fut)
            if bar is not None and not finished:
                show_steps()
    except BaseException:
        for fut in futures:
            fut.cancel()
        if own:
            _stop_workers(executor)
        raise
    finally:
        if bar is not None:
            bar.close()
        if own:
            executor.shutdown(wait=not futures, cancel_futures=True)
    if broken:
        raise BenchError(
            f"{len(broken)} trial(s) did not finish, e.g. {broken[0]}; "
            "rerun the same command to resume"
        )
    return [done[t.trial_id] for t in trials], len(todo)


def run_rounds(
    next_round: Callable[[dict[str, dict[str, Any]]], Sequence[PlannedTrial]],
    trial_ids: Sequence[str],
    out_dir: str | Path,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], int]:
    """Run trials whose configurations depend on earlier results (e.g. BO): repeatedly ask
    ``next_round(recorded trials)`` for the next trials and run them with :func:`run_trials`
    (``kwargs``), until it returns none; return ``(records of trial_ids, trials run now)``.

    The records are read back from ``out_dir`` before each round, so a resumed run and an
    uninterrupted one hand ``next_round`` the same data.
    """
    ran = 0
    while True:
        done = load_records(out_dir)
        batch = next_round(done)
        if not batch:
            break
        _, n = run_trials(batch, out_dir, **kwargs)
        if n == 0:  # every proposed trial was recorded already: the tuner would loop forever
            raise BenchError("the tuner proposed only trials that are already recorded")
        ran += n
    missing = [i for i in trial_ids if i not in done]
    if missing:
        raise BenchError(f"{len(missing)} planned trial(s) were never proposed, e.g. "
                         f"{missing[0]}")
    return [done[i] for i in trial_ids], ran


# ---------------------------------------------------------------------------- runs


@dataclass
class BenchConfig:
    """What a run measures; two runs with equal configs share their trial records.

    Attributes:
        workloads: workload names.
        submissions: submission names.
        ruleset: ``"external"`` (tuned by ``tuner``) or ``"self"`` (defaults, budget x1.5).
        num_trials: trials per study (external tuning).
        num_studies: independent studies; the per-workload time is their median.
        seed: master seed (Halton shuffle, trial seeds).
        search_space: AlgoPerf search space overriding every submission's own (decoded JSON).
        torch_threads: torch threads per trial.
        max_steps: optional cap on steps per trial (smoke tests).
        tuner: external tuning's ``"halton"`` (AlgoPerf) or ``"bo"`` (Bayesian optimization,
            :mod:`optforge.bench.tuners`).
        tuner_batch: BO suggestions per round and study (the CLI passes ``--jobs``, or 1).
        time_budgets: False: trials stop at their target or step budget only, so steps to
            target do not depend on the machine (CI, papers); times are still measured.
        plugins: ``"module:attr"`` names of user submissions and workloads, loaded in every
            worker before its trial (:mod:`optforge.bench.plugins`).
        protocol: ``"optforge"`` or ``"algoperf"`` (AlgoPerf's seeds, evaluation cadence and
            scoring, :mod:`optforge.bench.algoperf.protocol`; what the CLI's ``run`` uses).
    """

    workloads: list[str]
    submissions: list[str]
    ruleset: str = "external"
    num_trials: int = 5
    num_studies: int = 3
    seed: int = 0
    search_space: Any = None
    torch_threads: int = 1
    max_steps: int | None = None
    label: str = field(default="", compare=False)
    tuner: str = "halton"
    tuner_batch: int = 1
    time_budgets: bool = True
    plugins: list[str] = field(default_factory=list)
    protocol: str = "optforge"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.protocol == "optforge":
            del d["protocol"]  # runs recorded before protocols existed resume as optforge
        if self.ruleset == "self":
            d["num_trials"] = 1
        if self.tuner == "halton":
            # Halton runs keep the run.json they had before tuners existed (and resume).
            del d["tuner"], d["tuner_batch"]
        # Likewise for the later options, at their defaults.
        if self.time_budgets:
            del d["time_budgets"]
        if not self.plugins:
            del d["plugins"]
        return d


@dataclass
class RunResult:
    """The outcome of :func:`run_benchmark`."""

    out_dir: Path
    records: list[dict[str, Any]]
    ran: int
    skipped: int
    info: dict[str, Any]


def machine_info() -> dict[str, Any]:
    """Platform, CPU model and count, Python, torch and numpy versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "available_cores": available_cores(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        info["torch"] = None
    import numpy

    info["numpy"] = numpy.__version__
    return info


def _load_avg() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine inflates trial times."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _resolve(cfg: BenchConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Workload settings and submission objects by name; unknown names -> BenchError."""
    from optforge.bench.submission import get_submission, list_submissions
    from optforge.bench.workloads import get_workload, list_workloads

    known_w = list_workloads(include_held_out=True)
    known_s = list_submissions()
    for kind, names, known in (("workload", cfg.workloads, known_w),
                               ("submission", cfg.submissions, known_s)):
        if not names:
            raise BenchError(f"no {kind}s selected (known: {', '.join(known)})")
        for n in names:
            if n not in known and not (kind == "submission" and is_submission_ref(n)):
                raise BenchError(f"unknown {kind} '{n}' (known: {', '.join(known)})")
        if len(set(names)) != len(names):
            raise BenchError(f"{kind}s must not repeat (got {', '.join(names)})")
    workloads = {}
    for n in cfg.workloads:
        w = get_workload(n)
        workloads[n] = w.describe() if hasattr(w, "describe") else {
            k: getattr(w, k, None) for k in ("name", "metric_name", "higher_is_better",
                                            "target", "step_budget", "time_budget_s",
                                            "held_out", "base")
        }
    try:
        return workloads, {n: get_submission(n) for n in cfg.submissions}
    except ValueError as e:  # a submission file that cannot be loaded
        raise BenchError(str(e)) from None


def run_benchmark(
    cfg: BenchConfig,
    out_dir: str | Path,
    *,
    executor: Any | None = None,
    jobs: int | None = None,
    trial_fn: TrialFn | None = None,
    progress: bool = False,
    command: str | None = None,
) -> RunResult:
    """Plan, run (or resume) and record every trial of ``cfg`` under ``out_dir``.

    ``command`` is recorded in ``run.json`` (default ``sys.argv``).

    Raises:
        BenchError: unknown names, a bad search space, an output folder that cannot be written
            or that holds a different configuration, or trials whose worker died.
    """
    out = Path(out_dir)
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned worker is importing a script that calls run_benchmark at top level.
        raise BenchError("run_benchmark was called while a worker process was starting; "
                         "in a script, call it under `if __name__ == \"__main__\":`")
    try:
        check_tuner(cfg.tuner, cfg.ruleset)
        load_plugins(cfg.plugins)
    except ValueError as e:
        raise BenchError(str(e)) from None
    ruleset = get_ruleset(cfg.ruleset, num_trials=cfg.num_trials, num_studies=cfg.num_studies)
    try:
        protocol = get_protocol(cfg.protocol)
    except ValueError as e:
        raise BenchError(str(e)) from None
    if protocol.name == "algoperf" and cfg.tuner != "halton":
        raise BenchError(f"--tuner {cfg.tuner} is not AlgoPerf's procedure; use --protocol "
                         "optforge with it")
    space: SearchSpace | None = None
    if cfg.search_space is not None:
        if cfg.ruleset != "external":
            raise BenchError("a search space applies to the external-tuning ruleset only")
        space = parse_search_space(cfg.search_space)
    if executor is None and cfg.torch_threads > available_cores():
        raise BenchError(f"torch threads per trial must be <= {available_cores()}, the cores "
                         f"available here (got {cfg.torch_threads})")
    workloads, submissions = _resolve(cfg)
    tuner: BayesianTuner | None = None
    plan: list[PlannedTrial] = []
    try:
        if ruleset.name == "external":  # refuse a bad space before any trial runs
            for name, sub in submissions.items():
                check_search_space(name, sub, submission_space(name, sub, space),
                                   where=f"search space of '{name}'")
        if cfg.tuner == "bo":
            tuner = BayesianTuner(cfg.workloads, submissions, ruleset, workloads, seed=cfg.seed,
                                  search_space=space, batch_size=cfg.tuner_batch,
                                  torch_threads=cfg.torch_threads, max_steps=cfg.max_steps)
            trial_ids = tuner.trial_ids()
            configs = {n: probe_configs(space or parse_search_space(s.search_space),
                                        s.default_hparams) for n, s in submissions.items()}
        else:
            plan = plan_trials(cfg.workloads, submissions, ruleset, seed=cfg.seed,
                               search_space=space, torch_threads=cfg.torch_threads,
                               max_steps=cfg.max_steps, protocol=protocol.name)
            trial_ids = [t.trial_id for t in plan]
            configs = {n: [t.hparams for t in plan if t.submission == n] for n in submissions}
        if trial_fn is None:  # a stand-in trial function decides what it accepts
            check_configurations(configs, submissions)
    except ValueError as e:
        raise BenchError(str(e)) from None
    next_round = None
    if tuner is not None:
        next_round = tuner.next_round
        if not cfg.time_budgets:
            def next_round(done, _ask=tuner.next_round):  # noqa: E306
                return [replace(t, time_budget=False) for t in _ask(done)]
    elif not cfg.time_budgets:
        plan = [replace(t, time_budget=False) for t in plan]
    prepare_out_dir(out)
    lock = OutLock(out, command if command is not None else " ".join(sys.argv))
    try:
        lock.acquire()
    except FolderInUse as e:
        raise BenchError(str(e)) from None
    try:
        return _run_locked(cfg, out, plan, next_round, trial_ids, workloads, ruleset, tuner,
                           executor=executor, jobs=jobs, trial_fn=trial_fn,
                           progress=progress, command=command)
    finally:
        lock.release()


def _run_locked(cfg, out, plan, next_round, trial_ids, workloads, ruleset, tuner, *,
                executor, jobs, trial_fn, progress, command) -> RunResult:
    """The part of :func:`run_benchmark` that writes into ``out`` (under its lock)."""
    protocol = get_protocol(cfg.protocol)  # checked by run_benchmark already
    run_path = out / "run.json"
    config = cfg.to_json()
    if run_path.exists():
        try:
            info = json.loads(run_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise BenchError(f"{run_path} is unreadable ({e}); use a fresh --out") from None
        old = {k: v for k, v in info.get("config", {}).items() if k != "label"}
        new = {k: v for k, v in _normalized(config).items() if k != "label"}
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise BenchError(
                f"{out} holds a run with a different configuration ({', '.join(diff)}); "
                "use a fresh --out folder to start a new run"
            )
    else:
        info = {"config": config, "sessions": []}
    info["workloads"] = workloads
    info["ruleset"] = asdict(ruleset)
    if protocol.name != "optforge":
        from optforge.bench.workloads import list_workloads

        info["protocol"] = {**protocol.to_json(),
                            "base_workloads": list_workloads(include_held_out=False)}
    if tuner is not None:
        info["tuner"] = tuner.describe()
    info["trial_ids"] = trial_ids

    recorded_before = len(set(load_records(out)) & set(trial_ids))
    n_todo = len(trial_ids) - recorded_before
    own = executor is None
    if own:
        cap = max(1, available_cores() // cfg.torch_threads)
        if jobs is not None and jobs > cap and n_todo:
            print(f"optforge bench: --jobs {jobs} is more than the {cap} trial(s) this machine "
                  f"runs at once ({available_cores()} cores // {cfg.torch_threads} thread(s) "
                  f"per trial); running {cap}", file=sys.stderr)
        executor = (InlineExecutor() if jobs == 0 or not n_todo
                    else default_executor(jobs, cfg.torch_threads))
    name, concurrency = _describe_executor(executor)
    session = {
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "executor": name,
        "concurrent_trials": concurrency,
        "torch_threads_per_trial": cfg.torch_threads,
        "jobs_requested": jobs,
        "command": command if command is not None else " ".join(sys.argv),
        "machine": machine_info(),
        "load_avg_start": _load_avg(),
    }
    info["sessions"].append(session)
    _write_json(run_path, info)
    t0 = time.perf_counter()
    outcome = "interrupted"
    try:
        # Longest budgets first (LPT scheduling) so the long trials do not finish last alone.
        run_kwargs = dict(
            executor=executor, trial_fn=trial_fn, progress=progress, plugins=cfg.plugins,
            priority=lambda t: -float(workloads[t.workload].get("time_budget_s") or 0.0),
        )
        if next_round is None:
            records, ran = run_trials(plan, out, **run_kwargs)
        else:
            records, ran = run_rounds(next_round, trial_ids, out, **run_kwargs)
        outcome = "finished"
    except KeyboardInterrupt:
        raise
    except BaseException:
        outcome = "failed"
        raise
    finally:
        session["wall_s"] = round(time.perf_counter() - t0, 3)
        session["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        # Counted from the records, so an interrupted session says what it did finish.
        session["trials_run"] = len(set(load_records(out)) & set(trial_ids)) - recorded_before
        session["outcome"] = outcome
        session["load_avg_end"] = _load_avg()
        if own:
            if outcome != "finished":  # do not wait for running trials: they are discarded
                _stop_workers(executor)
            executor.shutdown(wait=outcome == "finished", cancel_futures=True)
        _write_json(run_path, info)
    return RunResult(out, records, ran, len(trial_ids) - ran, info)


def _stop_workers(executor: Any) -> None:
    """Kill a local pool's workers at once; otherwise interpreter exit joins them, which
    waits for the running trials to end (tens of seconds after Ctrl-C)."""
    for p in list((getattr(executor, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, AttributeError):
            p.kill()


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` and check it is writable; a clear BenchError otherwise."""
    try:
        (out / "trials").mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise BenchError(f"cannot write to output folder {out}: {e.strerror or e}") from None
