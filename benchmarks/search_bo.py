"""Bayesian optimization: optforge vs Optuna (TPE, GPSampler) and random search, side by side.

Median simple regret (best observed - global minimum) over seeds on Branin after 50 evaluations
and Hartmann6 after 100 (reference card search.md §9, §12: targets <= 1e-3 and <= 1e-2 for a GP),
and seconds per suggestion. Every method gets 10 quasi-random/random start-up points (Optuna's
default ``n_startup_trials``) and treats the objective as noiseless
(``deterministic_objective=True``, as the card's Optuna reference numbers). Single-threaded BLAS
(``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``) for every method.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_bo.py                # full table
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_bo.py --seeds 2 --problems branin

Writes ``docs/search/bo_benchmark.json`` and the convergence plot
``docs/search/bo_convergence.png``, and prints the Markdown table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from optforge.search.bo import BayesianOptimization, DeepEnsemble, Real, SearchSpace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------ test functions
_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def branin(x: np.ndarray) -> float:
    x1, x2 = x
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return float((x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10)


def hartmann6(x: np.ndarray) -> float:
    return float(-(_ALPHA * np.exp(-(_A * (np.asarray(x) - _P) ** 2).sum(1))).sum())


PROBLEMS = {
    # name: (function, bounds, global minimum, evaluations) -- BoTorch's synthetic.py values
    "branin": (branin, [(-5.0, 10.0), (0.0, 15.0)], 0.397887357729738, 50),
    "hartmann6": (hartmann6, [(0.0, 1.0)] * 6, -3.32236801141551, 100),
}


# ------------------------------------------------------------------------------ methods
def run_optforge(
    f: Callable, bounds: list, n: int, seed: int, surrogate: str | object = "gp", det: bool = True
):
    space = SearchSpace({f"x{i}": Real(lo, hi) for i, (lo, hi) in enumerate(bounds)})
    bo = BayesianOptimization(
        space, seed=seed, n_initial=10, surrogate=surrogate, deterministic_objective=det
    )
    values, ask_times = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        (c,) = bo.ask(1)
        ask_times.append(time.perf_counter() - t0)
        v = f(np.array([c.value[f"x{i}"] for i in range(len(bounds))]))
        bo.tell([c.id], [v])
        values.append(v)
    return values, ask_times[10:]


def run_optuna(f: Callable, bounds: list, n: int, seed: int, kind: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=10, deterministic_objective=True
        )
    study = optuna.create_study(sampler=sampler)
    dists = {
        f"x{i}": optuna.distributions.FloatDistribution(lo, hi) for i, (lo, hi) in enumerate(bounds)
    }
    values, times = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        trial = study.ask(dists)
        times.append(time.perf_counter() - t0)
        v = f(np.array([trial.params[f"x{i}"] for i in range(len(bounds))]))
        study.tell(trial, v)
        values.append(v)
    return values, times[10:]


def run_random(f: Callable, bounds: list, n: int, seed: int):
    rng = np.random.default_rng(seed)
    lo, hi = np.array(bounds).T
    values, times = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        x = lo + (hi - lo) * rng.random(len(bounds))
        times.append(time.perf_counter() - t0)
        values.append(f(x))
    return values, times


METHODS = {
    "optforge GP (LogEI)": lambda f, b, n, s: run_optforge(f, b, n, s, "gp"),
    "optforge GP, noise fitted": lambda f, b, n, s: run_optforge(f, b, n, s, "gp", det=False),
    "optforge deep ensemble": lambda f, b, n, s: run_optforge(f, b, n, s, DeepEnsemble()),
    "Optuna GPSampler": lambda f, b, n, s: run_optuna(f, b, n, s, "gp"),
    "Optuna TPESampler": lambda f, b, n, s: run_optuna(f, b, n, s, "tpe"),
    "random": run_random,
}


def _fmt(x: float) -> str:
    return f"{x:.2g}" if x >= 0.01 or x == 0 else f"{x:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "search"))
    args = parser.parse_args()

    results: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": 1,
        },
        "runs": {},
    }
    for pname in args.problems:
        f, bounds, fmin, n = PROBLEMS[pname]
        for mname in args.methods:
            curves, times, walls = [], [], []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                values, step_times = METHODS[mname](f, bounds, n, seed)
                walls.append(time.perf_counter() - t0)
                curves.append((np.minimum.accumulate(values) - fmin).tolist())
                times += step_times
                print(
                    f"{pname:10s} {mname:24s} seed {seed}: regret {curves[-1][-1]:.3g} "
                    f"({walls[-1]:.1f} s)",
                    flush=True,
                )
            results["runs"].setdefault(pname, {})[mname] = {
                "n": n,
                "curves": [[float(f"{v:.4g}") for v in c] for c in curves],
                "seconds_per_suggestion": [round(t, 5) for t in times],
                "wall_per_run": [round(w, 3) for w in walls],
            }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bo_benchmark.json").write_text(json.dumps(results))
    print_table(results)
    plot(results, out / "bo_convergence.png")


def print_table(results: dict) -> None:
    runs = results["runs"]
    methods = list(next(iter(runs.values())))
    head = " | ".join(f"{p}, N = {next(iter(runs[p].values()))['n']}" for p in runs)
    print(f"\n| method | {head} | s / suggestion (median, p95, max) | s / run |")
    print("|---|" + "---:|" * (len(runs) + 2))
    for m in methods:
        cells, secs, walls = [], [], []
        for p in runs:
            r = runs[p].get(m)
            if r is None:
                cells.append("-")
                continue
            final = np.array([c[-1] for c in r["curves"]])
            cells.append(f"{_fmt(np.median(final))} [{_fmt(final.min())}, {_fmt(final.max())}]")
            secs += r["seconds_per_suggestion"]
            walls.append(f"{np.median(r['wall_per_run']):.1f}")
        q = np.percentile(secs, [50, 95, 100]) if secs else None
        mean_s = "-" if q is None else f"{q[0]:.3f}, {q[1]:.3f}, {q[2]:.3f}"
        print(f"| {m} | {' | '.join(cells)} | {mean_s} | {' / '.join(walls)} |")
    print(
        "\nmedian [min, max] simple regret over seeds; seconds per suggestion over the "
        "model-based steps (after the 10 start-up points), all problems pooled."
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, (pname, by_method) in zip(axes[0], runs.items()):
        for mname, r in by_method.items():
            curves = np.array(r["curves"])
            x = np.arange(1, curves.shape[1] + 1)
            med = np.median(curves, axis=0)
            ax.plot(x, med, label=mname)
            ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15)
        ax.set_yscale("log")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("simple regret (median, min-max band)")
        ax.set_title(f"{pname} ({len(next(iter(by_method.values()))['curves'])} seeds)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
