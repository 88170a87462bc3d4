"""AlgoPerf-style benchmark harness: time training algorithms to a validation target.

- workloads (``workload``, ``workloads``): model, data, loss, validation metric, committed target;
- submissions (``submission``): AlgoPerf's submission API, and any registered optimizer plus a
  search space (``RegistrySubmission``);
- one timed trial (``trial``); Halton search spaces and tuning rulesets (``halton``,
  ``search_space``, ``rulesets``); trials through any executor with resume (``study``);
- performance profiles and the benchmark score (``scoring``); Markdown reports (``report``);
  the trials as a CSV or a pandas DataFrame (``results``);
- safety of a run: the output folder's lock (``lock``), damaged records (``records``), checks
  before any trial (``preflight``), per-trial step progress (``progress``);
- where trials run (``executors``: local pool, Dask, Ray) and user code by ``module:attr``
  (``plugins``);
- the command ``optforge bench`` (``cli``).

Example:
    >>> from optforge.bench import TrialSpec, run_trial
    >>> rec = run_trial(TrialSpec("digits_cnn", "nadamw", max_steps=10))  # doctest: +SKIP
"""

from optforge.bench.halton import generate_sequence
from optforge.bench.report import summarize, write_report
from optforge.bench.results import load_results
from optforge.bench.rulesets import Ruleset, aggregate, external_tuning, plan_trials, self_tuning
from optforge.bench.scoring import (
    Profile,
    benchmark_scores,
    geometric_mean_speedup,
    performance_profile,
)
from optforge.bench.search_space import (
    SearchSpace,
    SearchSpaceError,
    load_search_space,
    parse_search_space,
)
from optforge.bench.study import BenchConfig, BenchError, InlineExecutor, run_benchmark, run_trials
from optforge.bench.submission import (
    RegistrySubmission,
    Submission,
    cosine_warmup_factor,
    get_submission,
    list_submissions,
    register_submission,
)
from optforge.bench.trial import TrialSpec, run_trial
from optforge.bench.workload import Workload, reached
from optforge.bench.workloads import get_workload, list_workloads

__all__ = [
    "BenchConfig",
    "BenchError",
    "InlineExecutor",
    "Profile",
    "RegistrySubmission",
    "Ruleset",
    "SearchSpace",
    "SearchSpaceError",
    "Submission",
    "TrialSpec",
    "Workload",
    "aggregate",
    "benchmark_scores",
    "cosine_warmup_factor",
    "external_tuning",
    "generate_sequence",
    "geometric_mean_speedup",
    "get_submission",
    "get_workload",
    "list_submissions",
    "list_workloads",
    "load_results",
    "load_search_space",
    "parse_search_space",
    "performance_profile",
    "plan_trials",
    "reached",
    "register_submission",
    "run_benchmark",
    "run_trial",
    "run_trials",
    "self_tuning",
    "summarize",
    "write_report",
]
