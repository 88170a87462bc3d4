"""``optforge bench``: run the AlgoPerf-style benchmark, write and print its report.

Commands::

    optforge bench [--out DIR] [--jobs K] ...        # the quick suite (same as `bench quick`)
    optforge bench run --workloads a,b --submissions x,y --ruleset external|self
                       --trials N --studies M --out DIR [--jobs K] [--seed S]
                       [--search-space FILE] [--threads T] [--max-steps S]
                       [--tuner halton|bo] [--no-time-budget]
                       [--protocol algoperf|optforge]
                       [--executor local|dask:ADDRESS|ray|ray:ADDRESS]
    optforge bench report DIR [--baseline S] [--reference S] [--out OUT]
    optforge bench list

The quick suite runs every base (non-held-out) workload with ``adamw`` and ``lion`` at their
default hyperparameters under the self-tuning ruleset (budget x1.5), one study, and writes the
report to ``./bench-out``. Bad input gets one line on stderr and exit status 2; an interrupted
run exits 130 and resumes when the same command is run again.

``run`` scores by AlgoPerf's rules (``--protocol algoperf``) unless ``--protocol optforge`` is
given (or ``--tuner bo``); ``--submissions`` also takes AlgoPerf submission files
(``path/to/submission.py`` or ``module:attribute``). ``report DIR`` also reads an AlgoPerf
submission or experiment directory (``eval_measurements.csv`` logs) and writes the report into
``--out`` (default ``DIR-optforge-report`` beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["QUICK_SUBMISSIONS", "add_bench_parser", "bench_main"]

QUICK_SUBMISSIONS = ("adamw", "lion")
COMMANDS = ("quick", "run", "report", "list")
DEFAULT_OUT = "bench-out"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(message)


def _positive_int(name: str, low: int = 1):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer (got {s!r})") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{name} must be >= {low} (got {v})")
        return v

    return parse


def _executor(s: str) -> str:
    from optforge.bench.executors import parse_executor

    try:
        parse_executor(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


def _names(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _add_common(p: argparse.ArgumentParser, default_out: str | None) -> None:
    p.add_argument("--out", default=default_out, required=default_out is None,
                   help=f"output folder (default: {default_out})" if default_out
                   else "output folder (trial records, report)")
    p.add_argument("--jobs", type=_positive_int("--jobs", 0), default=None,
                   help="concurrent trials (default and cap: cores // threads; 0: one at a "
                   "time in this process)")
    p.add_argument("--threads", type=_positive_int("--threads"), default=1,
                   help="torch threads per trial (default 1)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    p.add_argument("--max-steps", type=_positive_int("--max-steps"), default=None,
                   help="cap on steps per trial, for smoke tests (a capped trial may miss its "
                   "target)")
    p.add_argument("--no-time-budget", dest="time_budgets", action="store_false",
                   help="step-only budgets: trials stop at the target or the step budget, never "
                   "on time, so steps to target do not depend on the machine (CI, papers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--executor", type=_executor, default="local",
                   help="where trials run: local (a process pool, default), dask:ADDRESS (a "
                   "running Dask scheduler), ray (Ray on this machine) or ray:ADDRESS (a running "
                   "Ray cluster, e.g. ray:auto)")


def add_bench_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench`` and its subcommands on a subparsers object."""
    bench = sub.add_parser(
        "bench", help="AlgoPerf-style benchmark of training algorithms",
        description="Time training algorithms to a validation target, AlgoPerf-style, and "
        "score them with performance profiles. Bare `optforge bench` runs the quick suite: "
        f"every base workload x {', '.join(QUICK_SUBMISSIONS)} at default hyperparameters "
        f"(self-tuning ruleset, 1 study), report in ./{DEFAULT_OUT}.",
    )
    cmds = bench.add_subparsers(dest="bench_command", metavar="{quick,run,report,list}",
                                parser_class=_Parser)
    q = cmds.add_parser("quick", help="the quick suite (default)")
    _add_common(q, DEFAULT_OUT)
    q.add_argument("--studies", type=_positive_int("--studies"), default=1,
                   help="studies (default 1)")

    r = cmds.add_parser("run", help="run a benchmark configuration")
    r.add_argument("--workloads", type=_names, required=True,
                   help="comma-separated workload names (see `optforge bench list`) or "
                   "module:attr of your own Workload")
    r.add_argument("--submissions", type=_names, required=True,
                   help="comma-separated submission names, AlgoPerf submission files "
                   "(path/to/submission.py) or module:attr of your own Submission")
    r.add_argument("--ruleset", choices=("external", "self"), default="external",
                   help="external: search over the search space (see --tuner); self: default "
                   "hyperparameters, budget x1.5 (default external)")
    r.add_argument("--trials", type=_positive_int("--trials"), default=5,
                   help="trials per study under external tuning (default 5)")
    r.add_argument("--studies", type=_positive_int("--studies"), default=3,
                   help="independent studies (default 3)")
    r.add_argument("--search-space", default=None,
                   help="AlgoPerf search-space JSON (default: each submission's own)")
    r.add_argument("--tuner", choices=("halton", "bo"), default="halton",
                   help="external tuning: halton draws every configuration up front (AlgoPerf); "
                   "bo runs Bayesian optimization per study, in rounds of --jobs (or 1) "
                   "trials (default halton)")
    r.add_argument("--protocol", choices=("algoperf", "optforge"), default=None,
                   help="algoperf: AlgoPerf's seeds, evaluation cadence and scoring exactly; "
                   "optforge: one seed per trial, evaluations by steps, least time per study "
                   "(default algoperf; optforge with --tuner bo)")
    _add_common(r, None)

    rep = cmds.add_parser("report", help="(re)write DIR/report.md from DIR's trial records")
    rep.add_argument("dir")
    rep.add_argument("--baseline", default=None,
                     help="submission for the speed-up column (default adamw if present)")
    rep.add_argument("--reference", default=None,
                     help="divide times by this submission's instead of the per-workload best "
                     "(AlgoPerf's reference submission)")
    rep.add_argument("--out", default=None,
                     help="where the report of AlgoPerf logs goes (default DIR-optforge-report)")
    cmds.add_parser("list", help="list workloads and submissions")
    return bench


def _cmd_list() -> int:
    from optforge.bench.submission import get_submission, list_submissions
    from optforge.bench.workloads import get_workload, list_workloads

    print("workloads: (target; step and time budgets, x1.5 under --ruleset self; evaluated "
          "every)")
    for n in list_workloads(include_held_out=True):
        w = get_workload(n)
        direction = ">=" if w.higher_is_better else "<="
        tag = f"  (held-out variant of {w.base})" if w.held_out else ""
        print(f"  {n:30s} {w.metric_name} {direction} {w.target}; {w.step_budget:,} steps, "
              f"{w.time_budget_s:g} s; every {w.eval_every_steps} steps{tag}")
        if w.description:
            print(f"  {'':30s} {w.description}")
    print("submissions: (default hyperparameters; what --ruleset external tunes)")
    for n in list_submissions():
        s = get_submission(n)
        defaults = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in s.default_hparams.items()) or "-"
        kind = "self-tuning" if s.self_tuning else f"tunes {', '.join(s.search_space) or '-'}"
        print(f"  {n:30s} {defaults}")
        print(f"  {'':30s} {kind}")
    return 0


def _run(args: argparse.Namespace, cfg) -> int:
    from optforge.bench.executors import open_executor
    from optforge.bench.report import format_table, summarize, write_report
    from optforge.bench.study import BenchError, run_benchmark

    out = Path(args.out)
    with contextlib.ExitStack() as stack:
        try:
            executor = stack.enter_context(
                open_executor(args.executor, jobs=args.jobs, torch_threads=args.threads))
        except ValueError as e:
            raise BenchError(str(e)) from None
        result = run_benchmark(cfg, out, executor=executor, jobs=args.jobs,
                               progress=not args.no_progress, command=args.command_line)
    path = write_report(out)
    print(format_table(summarize(out)))
    print(f"{result.ran} trial(s) run, {result.skipped} already recorded; report: {path}")
    errors = sum(r.get("status") == "error" for r in result.records)
    if errors:
        print(f"optforge bench: {errors} trial(s) failed with an error; see {path}",
              file=sys.stderr)
    return 0


def _cmd_quick(args: argparse.Namespace) -> int:
    from optforge.bench.study import BenchConfig
    from optforge.bench.workloads import list_workloads

    cfg = BenchConfig(
        workloads=list_workloads(include_held_out=False),
        submissions=list(QUICK_SUBMISSIONS),
        ruleset="self",
        num_trials=1,
        num_studies=args.studies,
        seed=args.seed,
        torch_threads=args.threads,
        max_steps=args.max_steps,
        label="quick",
        time_budgets=args.time_budgets,
    )
    return _run(args, cfg)


def _cmd_run(args: argparse.Namespace) -> int:
    from optforge.bench.plugins import is_plugin, load_plugin
    from optforge.bench.search_space import load_search_space
    from optforge.bench.study import BenchConfig, BenchError

    if args.tuner != "halton" and args.ruleset != "external":
        raise BenchError(f"--tuner {args.tuner} applies to --ruleset external only "
                         f"(got --ruleset {args.ruleset})")
    plugins: list[str] = []
    for kind in ("workload", "submission"):
        names = getattr(args, f"{kind}s")
        for i, name in enumerate(names):
            if is_plugin(name):
                try:
                    got, names[i] = load_plugin(name)
                except ValueError as e:
                    raise BenchError(str(e)) from None
                if got != kind:
                    raise BenchError(f"--{kind}s {name} is a {got}, not a {kind}")
                plugins.append(name)
    space = None
    if args.search_space is not None:
        if args.ruleset != "external":
            raise BenchError("--search-space applies to --ruleset external only")
        space = load_search_space(args.search_space).to_json()
    cfg = BenchConfig(
        workloads=args.workloads,
        submissions=args.submissions,
        ruleset=args.ruleset,
        num_trials=args.trials if args.ruleset == "external" else 1,
        num_studies=args.studies,
        seed=args.seed,
        search_space=space,
        torch_threads=args.threads,
        max_steps=args.max_steps,
        time_budgets=args.time_budgets,
        plugins=plugins,
        # BO's rounds hold --jobs trials per study: part of the configuration, since it
        # changes which trials are proposed.
        **({"tuner": "bo", "tuner_batch": args.jobs or 1} if args.tuner == "bo" else {}),
        protocol=args.protocol or ("optforge" if args.tuner == "bo" else "algoperf"),
    )
    _batch_size_notices(cfg)
    return _run(args, cfg)


def _batch_size_notices(cfg) -> None:
    """One line per submission file and workload whose batch size the CPU workload cannot run
    (and a clear error for a file that cannot be loaded) before any trial starts."""
    from optforge.bench.algoperf.loader import is_submission_ref
    from optforge.bench.study import BenchError
    from optforge.bench.submission import get_submission, list_submissions
    from optforge.bench.workloads import list_workloads

    for name in cfg.submissions:
        if name in list_submissions() or not is_submission_ref(name):
            continue
        try:
            sub = get_submission(name)
            for w in cfg.workloads:
                if w in list_workloads():
                    notice = sub.batch_size_notice(w)
                    if notice:
                        print(f"optforge bench: note: {notice}", file=sys.stderr)
        except ValueError as e:
            raise BenchError(str(e)) from None


def _cmd_report(args: argparse.Namespace) -> int:
    from optforge.bench.algoperf.logs import LogsError, import_logs, is_algoperf_logs
    from optforge.bench.report import format_table, summarize, write_report
    from optforge.bench.study import BenchError

    run_dir = args.dir
    if is_algoperf_logs(args.dir):
        try:
            # beside DIR: inside, AlgoPerf's scorer would take the report for a submission
            logs = Path(args.dir).resolve()
            default = logs.parent / f"{logs.name}-optforge-report"
            run_dir = import_logs(args.dir, args.out or default)
        except (LogsError, OSError) as e:
            raise BenchError(str(e)) from None
    elif args.out is not None:
        raise BenchError("--out applies to AlgoPerf logs only (an optforge run's report is "
                         "written into its own folder)")
    path = write_report(run_dir, baseline=args.baseline, reference=args.reference)
    print(format_table(summarize(run_dir, baseline=args.baseline, reference=args.reference)))
    print(f"report: {path}")
    return 0


def bench_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``optforge bench`` (``argv`` excludes ``bench`` itself)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    typed = shlex.join(["optforge", "bench", *argv])
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["quick", *argv]  # bare `optforge bench [options]` is the quick suite
    top = _Parser(prog="optforge")
    add_bench_parser(top.add_subparsers(dest="command", parser_class=_Parser))
    return run_cli(top, ["bench", *argv], command_line=typed)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str],
            command_line: str | None = None) -> int:
    """Parse and dispatch; every expected failure is one line on stderr, never a traceback."""
    from optforge.bench.search_space import SearchSpaceError
    from optforge.bench.study import BenchError

    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"optforge: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    if args.command != "bench":
        parser.print_help()
        return 0
    args.command_line = command_line or shlex.join(["optforge", *argv])
    handler = {"quick": _cmd_quick, "run": _cmd_run, "report": _cmd_report,
               "list": lambda a: _cmd_list()}[args.bench_command or "quick"]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("optforge bench: interrupted; finished trials are saved, run the same command "
              "again to resume", file=sys.stderr)
        return 130
    except (BenchError, SearchSpaceError) as e:
        print(f"optforge bench: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line, never a traceback (OPTFORGE_DEBUG=1 shows it)
        if os.environ.get("OPTFORGE_DEBUG"):
            raise
        print(f"optforge bench: error: {type(e).__name__}: {e} (set OPTFORGE_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return 1
