"""Bayesian optimization suite: optforge's GP against Optuna's GPSampler, side by side.

Ten test functions (8 continuous in 2-10 dimensions, 2 mixed continuous + integer +
categorical), N evaluations, several seeds. Each job (function, seed) runs both libraries in
one process, one suggestion each in turn (which goes first alternates every step), so both see
the same load; their per-suggestion times are compared within the job. Each library uses its
own defaults (optforge: 10 scrambled-Sobol start-up points, noise fitted; Optuna: 10 random
start-up trials, noise fitted). Single-threaded BLAS and torch for both.

Results are appended to a JSON-lines file, one line per (function, seed, method) as soon as it
ends, so a crash loses nothing; ``--table`` builds the Markdown tables from that file.

Usage::

    nice -n 5 python benchmarks/search_bo_suite.py --out bo_suite.jsonl &   # as many workers
    nice -n 5 python benchmarks/search_bo_suite.py --out bo_suite.jsonl &   # as there are cores
    python benchmarks/search_bo_suite.py --out bo_suite.jsonl --table
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optforge.search.bo import (  # noqa: E402
    BayesianOptimization,
    Categorical,
    GaussianProcess,
    Integer,
    Real,
    SearchSpace,
)
from search_bo import branin, hartmann6  # noqa: E402

# ------------------------------------------------------------------------ test functions
_A3 = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
_P3 = 1e-4 * np.array(
    [[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]]
)
_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_ST_MIN_1D = -39.16616570377142  # Styblinski-Tang per coordinate, at x = -2.903534


def six_hump_camel(x: np.ndarray) -> float:
    x1, x2 = x
    return float((4 - 2.1 * x1**2 + x1**4 / 3) * x1**2 + x1 * x2 + (-4 + 4 * x2**2) * x2**2)


def hartmann3(x: np.ndarray) -> float:
    return float(-(_ALPHA * np.exp(-(_A3 * (np.asarray(x) - _P3) ** 2).sum(1))).sum())


def rosenbrock(x: np.ndarray) -> float:
    x = np.asarray(x)
    return float((100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum())


def ackley(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    d = len(x)
    return float(
        -20 * math.exp(-0.2 * math.sqrt((x * x).sum() / d))
        - math.exp(np.cos(2 * math.pi * x).sum() / d)
        + 20
        + math.e
    )


def styblinski_tang(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    return float(0.5 * (x**4 - 16 * x**2 + 5 * x).sum())


def levy(x: np.ndarray) -> float:
    w = 1 + (np.asarray(x, dtype=float) - 1) / 4
    head = math.sin(math.pi * w[0]) ** 2
    mid = ((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(math.pi * w[:-1] + 1) ** 2)).sum()
    tail = (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2)
    return float(head + mid + tail)


_CAT_OFFSET = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0}


def mixed_ackley(p: dict) -> float:
    """Ackley-5D on 3 reals and 2 integers in [-10, 10], plus a categorical offset."""
    x = [p["x0"], p["x1"], p["x2"], p["i0"], p["i1"]]
    return ackley(np.array(x, dtype=float)) + _CAT_OFFSET[p["c"]]


_ST_PENALTY = {"x": 0.0, "y": 5.0, "z": 10.0}


def mixed_styblinski_tang(p: dict) -> float:
    """Styblinski-Tang on 4 reals in [-5, 5] and 2 integers in [-5, 5], plus a categorical."""
    x = [p["x0"], p["x1"], p["x2"], p["x3"], p["i0"], p["i1"]]
    return styblinski_tang(np.array(x, dtype=float)) + _ST_PENALTY[p["c"]]


def _continuous(f: Callable, bounds: list) -> tuple[dict, Callable]:
    dims = {f"x{i}": ("real", lo, hi) for i, (lo, hi) in enumerate(bounds)}
    return dims, lambda p: f(np.array([p[f"x{i}"] for i in range(len(bounds))]))


def _problems() -> dict:
    probs = {}
    for name, f, bounds, fmin in [
        ("branin-2d", branin, [(-5.0, 10.0), (0.0, 15.0)], 0.397887357729738),
        ("six-hump-camel-2d", six_hump_camel, [(-3.0, 3.0), (-2.0, 2.0)], -1.0316284534898774),
        ("hartmann-3d", hartmann3, [(0.0, 1.0)] * 3, -3.86278214782076),
        ("rosenbrock-4d", rosenbrock, [(-5.0, 10.0)] * 4, 0.0),
        ("ackley-5d", ackley, [(-32.768, 32.768)] * 5, 0.0),
        ("hartmann-6d", hartmann6, [(0.0, 1.0)] * 6, -3.32236801141551),
        ("styblinski-tang-8d", styblinski_tang, [(-5.0, 5.0)] * 8, 8 * _ST_MIN_1D),
        ("levy-10d", levy, [(-10.0, 10.0)] * 10, 0.0),
    ]:
        dims, obj = _continuous(f, bounds)
        probs[name] = (dims, obj, fmin)
    probs["mixed-ackley-5d"] = (
        {
            **{f"x{i}": ("real", -32.768, 32.768) for i in range(3)},
            "i0": ("int", -10, 10),
            "i1": ("int", -10, 10),
            "c": ("cat", list(_CAT_OFFSET)),
        },
        mixed_ackley,
        0.0,
    )
    probs["mixed-styblinski-tang-7d"] = (
        {
            **{f"x{i}": ("real", -5.0, 5.0) for i in range(4)},
            "i0": ("int", -5, 5),
            "i1": ("int", -5, 5),
            "c": ("cat", list(_ST_PENALTY)),
        },
        mixed_styblinski_tang,
        4 * _ST_MIN_1D - 78.0,  # integers at -3: 0.5 (81 - 144 - 15) = -39 each
    )
    return probs


def _cat_heavy_tables() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)  # fixed: part of the problem's definition
    return rng.uniform(0, 1, (8, 4)), rng.uniform(0, 1, (7, 4, 4))


_T, _W = _cat_heavy_tables()


def cat_heavy(p: dict) -> float:
    """8 categoricals of 4 choices, chained pairwise interactions, plus 2 reals in [0, 1]."""
    c = [int(p[f"c{j}"]) for j in range(8)]
    v = sum(_T[j, c[j]] for j in range(8)) + sum(_W[j, c[j], c[j + 1]] for j in range(7))
    return float(v + 4 * (p["x0"] - 0.3) ** 2 + 4 * (p["x1"] - 0.7) ** 2)


def _cat_heavy_min() -> float:
    grids = np.meshgrid(*[np.arange(4)] * 8, indexing="ij")
    c = np.stack([g.ravel() for g in grids], 1)  # all 4^8 combinations
    v = _T[np.arange(8), c].sum(1) + _W[np.arange(7), c[:, :-1], c[:, 1:]].sum(1)
    return float(v.min())


PROBLEMS = _problems()
#: not in the default suite: where a deep ensemble might beat the GP (categorical-heavy, 20-D)
EXTRA = {
    "cat-heavy-10d": (
        {
            **{f"c{j}": ("cat", [0, 1, 2, 3]) for j in range(8)},
            "x0": ("real", 0.0, 1.0),
            "x1": ("real", 0.0, 1.0),
        },
        cat_heavy,
        _cat_heavy_min(),
    ),
    "levy-20d": (*_continuous(levy, [(-10.0, 10.0)] * 20), 0.0),
}


# ------------------------------------------------------------------------------ stepping
def optuna_startup(dims: dict, seed: int, n: int = 10) -> list[dict]:
    """The ``n`` start-up configurations ``GPSampler(seed=seed)`` evaluates first: its
    independent sampler is ``RandomSampler(seed=seed)``, asked in the same order."""
    import optuna

    dists = _OptunaStepper(dims, seed).dists  # also quiets Optuna's logging
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [dict(study.ask(dists).params) for _ in range(n)]


class _OptforgeStepper:
    """``startup``: configurations to evaluate first (told through ``observe``) instead of
    optforge's own Sobol design, e.g. Optuna's random start-up points for a paired comparison."""

    def __init__(self, dims: dict, seed: int, kwargs: dict, startup: list | None = None) -> None:
        self.startup = list(startup or [])
        spec = {}
        for name, (kind, *a) in dims.items():
            spec[name] = (
                {"real": Real, "int": Integer}[kind](*a) if kind != "cat" else Categorical(a[0])
            )
        kwargs = dict(kwargs)
        if "gp" in kwargs:  # GaussianProcess options, e.g. {"gp": {"n_restarts": 1}}
            kwargs["surrogate"] = GaussianProcess(**kwargs.pop("gp"))
        self.bo = BayesianOptimization(SearchSpace(spec), seed=seed, **kwargs)

    def ask(self) -> tuple[object, dict]:
        if self.startup:
            params = self.startup.pop(0)
            return ("observe", params), params
        (c,) = self.bo.ask(1)
        return c.id, c.value

    def tell(self, token: object, value: float) -> None:
        if isinstance(token, tuple):
            self.bo.observe([token[1]], [value])
        else:
            self.bo.tell([token], [value])


class _OptunaStepper:
    def __init__(self, dims: dict, seed: int) -> None:
        import optuna
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.study = optuna.create_study(sampler=optuna.samplers.GPSampler(seed=seed))
        self.dists = {}
        for name, (kind, *a) in dims.items():
            if kind == "real":
                self.dists[name] = FloatDistribution(*a)
            elif kind == "int":
                self.dists[name] = IntDistribution(*a)
            else:
                self.dists[name] = CategoricalDistribution(a[0])

    def ask(self) -> tuple[object, dict]:
        trial = self.study.ask(self.dists)
        return trial, dict(trial.params)

    def tell(self, token: object, value: float) -> None:
        self.study.tell(token, value)


def run_job(
    problem: str, seed: int, n: int, methods: list[str], kwargs: dict, startup: str = "own"
) -> dict:
    dims, obj, fmin = {**PROBLEMS, **EXTRA}[problem]
    first = optuna_startup(dims, seed) if startup == "optuna" else None
    steppers: dict = {}
    for m in methods:
        steppers[m] = (
            _OptforgeStepper(dims, seed, kwargs, first)
            if m == "optforge"
            else _OptunaStepper(dims, seed)
        )
    values = {m: [] for m in methods}
    times = {m: [] for m in methods}
    for step in range(n):
        order = methods if step % 2 == 0 else methods[::-1]
        for m in order:
            t0 = time.perf_counter()
            token, params = steppers[m].ask()
            times[m].append(time.perf_counter() - t0)
            v = obj(params)
            steppers[m].tell(token, v)
            values[m].append(v)
    return {
        m: {
            "regret": (np.minimum.accumulate(values[m]) - fmin).tolist(),
            "ask_s": [round(t, 5) for t in times[m]],
        }
        for m in methods
    }


def _git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "src"], capture_output=True, text=True
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------ the table
def load(path: Path) -> dict:
    """``{(problem, label): {seed: record}}`` from the JSON-lines file (Optuna's label is
    ``"optuna"``)."""
    runs: dict = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        runs.setdefault((r["problem"], r["label"]), {})[r["seed"]] = r
    return runs


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def table(path: Path, label: str, against: str, ns: list[int]) -> None:
    """Median regret of ``label`` and ``against`` per function at each N, seeds won, and the
    per-suggestion time ratio of jobs that ran both interleaved."""
    runs = load(path)
    head = " | ".join(f"{label} N={n} | {against} N={n} | seeds won N={n}" for n in ns)
    print(f"| function | {head} |")
    print("|---|" + "---:|" * (3 * len(ns)))
    losers, ratios = [], []
    for p in [*PROBLEMS, *EXTRA]:
        ours, theirs = runs.get((p, label), {}), runs.get((p, against), {})
        seeds = sorted(set(ours) & set(theirs))
        if not seeds:
            continue
        cells = []
        for n in ns:
            a = np.array([ours[s]["regret"][n - 1] for s in seeds])
            b = np.array([theirs[s]["regret"][n - 1] for s in seeds])
            won, tied = int((a < b).sum()), int((a == b).sum())
            cells += [
                _fmt(np.median(a)),
                _fmt(np.median(b)),
                f"{won}/{len(seeds)}" + (f" ({tied} tied)" if tied else ""),
            ]
            if np.median(a) > np.median(b):
                losers.append(f"{p} N={n}")
        for s in seeds:
            if ours[s].get("together") and theirs[s].get("together"):
                ta, tb = np.median(ours[s]["ask_s"][10:]), np.median(theirs[s]["ask_s"][10:])
                ratios.append((p, ta / tb, ours[s]["load"]))
        print(f"| {p} ({len(seeds)} seeds) | " + " | ".join(cells) + " |")
    print(f"\nmedian simple regret over seeds; seeds won: {label}'s regret lower than {against}'s")
    print(f"{label} behind on:", ", ".join(losers) or "none")
    if ratios:
        r = np.array([x[1] for x in ratios])
        print(
            f"\ntime per suggestion {label} / {against} (per job: median over the model-based "
            f"steps): min {r.min():.2f}, median {np.median(r):.2f}, max {r.max():.2f} over "
            f"{len(r)} jobs; load average {min(x[2] for x in ratios):.1f}-"
            f"{max(x[2] for x in ratios):.1f}"
        )
        for p in [*PROBLEMS, *EXTRA]:
            rp = [x[1] for x in ratios if x[0] == p]
            if rp:
                print(f"- {p}: median {np.median(rp):.2f} (min {min(rp):.2f}, max {max(rp):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bo_suite.jsonl")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument(
        "--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS) + list(EXTRA)
    )
    parser.add_argument(
        "--methods", nargs="+", default=["optforge", "optuna"], choices=["optforge", "optuna"]
    )
    parser.add_argument("--label", default="default", help="names the optforge configuration")
    parser.add_argument("--kwargs", default="{}", help="JSON: extra BayesianOptimization kwargs")
    parser.add_argument(
        "--startup",
        default="own",
        choices=["own", "optuna"],
        help="optforge's first 10 points: its own Sobol design, or the random points Optuna's "
        "GPSampler evaluates first for the same seed (a paired comparison of the model steps)",
    )
    parser.add_argument(
        "--claims",
        default=None,
        help="folder of claim files: any number of workers share the job list, each job "
        "runs once (a worker claims a job by creating its file); default: <out>.claims",
    )
    parser.add_argument("--reverse", action="store_true", help="take jobs from the end")
    parser.add_argument("--table", action="store_true", help="print the tables from --out")
    parser.add_argument("--ns", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--against", default="optuna", help="the label --table compares with")
    args = parser.parse_args()
    path = Path(args.out)
    if args.table:
        table(path, args.label, args.against, args.ns)
        return
    kwargs = json.loads(args.kwargs)
    jobs = [(p, s) for s in args.seeds for p in args.problems]  # seed-major: early coverage
    if args.reverse:
        jobs.reverse()
    claims = Path(args.claims or f"{args.out}.claims")
    claims.mkdir(parents=True, exist_ok=True)
    sha = _git_sha()
    for p, s in jobs:
        try:  # atomic: exactly one worker creates the file
            os.close(os.open(claims / f"{args.label}-{p}-{s}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        t0 = time.time()
        res = run_job(p, s, args.n, args.methods, kwargs, args.startup)
        load1 = os.getloadavg()[0]
        with path.open("a") as fh:
            for m, r in res.items():
                rec = {
                    "problem": p,
                    "seed": s,
                    "method": m,
                    "label": args.label if m == "optforge" else "optuna",
                    "kwargs": kwargs if m == "optforge" else {},
                    "startup": args.startup if m == "optforge" else "own",
                    "git": sha,
                    "n": args.n,
                    "together": len(args.methods) > 1,
                    "load": round(load1, 2),
                    **r,
                }
                fh.write(json.dumps(rec) + "\n")
        print(
            f"{p} seed {s}: "
            + ", ".join(f"{m} {res[m]['regret'][-1]:.4g}" for m in res)
            + f" ({time.time() - t0:.0f} s, load {load1:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
