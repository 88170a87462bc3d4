"""MAP-Elites on the sphere benchmark and archive insert throughput: optforge vs pyribs.

Sphere (reference card search.md section 5; pyribs ``examples/sphere.py``): 100-D linear-projection
sphere, 100x100 grid over [-256, 256]^2, one emitter of 540 solutions per iteration starting at
x0 = 0, offset 0. MAP-Elites uses a Gaussian emitter with sigma = 0.5; Line MAP-Elites uses
Iso+LineDD with (iso_sigma, line_sigma) = (0.5, 0.2). Each row is the median over seeds of the QD
score, coverage and wall time per iteration (ask + evaluate + tell), ours and pyribs with the same
settings in the same process. Targets at 1,000 iterations: MAP-Elites QD >= 2.8e5 and coverage
>= 33%; Iso+LineDD >= 3.9e5 and >= 47%.

Insert throughput: batches of 10,000 random 100-D solutions added to a 100x100 grid (and a
10,000-cell CVT, the same centroids for both libraries), solutions per second, median over
repeats after a warm-up (pyribs compiles with numba on first use). Target >= 500k/s.

CMA-ME and CMA-MAE (15 emitters x 36, pyribs' sphere configurations) run for --cma-iterations
(300 by default, the card's single-run reference: CMA-ME 331,621 / 38.9%, CMA-MAE 386,325 /
46.1%); pyribs' numba kernels are compiled by a short untimed run before the timed ones.

Run single-threaded (the card's numbers are single-threaded BLAS):

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/search_qd.py --iterations 1000 --seeds 5 \\
        --heatmap docs/search/map_elites_heatmap.png
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from optforge.search.qd import (
    CVTArchive,
    EvolutionStrategyEmitter,
    GaussianEmitter,
    GridArchive,
    IsoLineEmitter,
    MapElites,
    archive_heatmap,
    sphere,
)

DIM = 100
RANGE = (-256.0, 256.0)
BATCH = 540
ALGORITHMS = {
    "map_elites": ("MAP-Elites (Gaussian, sigma=0.5)", {"sigma": 0.5}),
    "line_map_elites": ("Iso+LineDD (0.5, 0.2)", {"iso_sigma": 0.5, "line_sigma": 0.2}),
}
# pyribs examples/sphere.py: 15 emitters x 36, sigma0 = 0.5. CMA-ME: 2imp ranker, filter
# selection, no-improvement restarts. CMA-MAE: archive learning_rate 0.01, threshold_min 0,
# imp ranker, mu selection, basic restarts, scores read from an elitist result archive.
CMA = {
    "cma_me": ("CMA-ME (2imp, 15x36)", {}, {}),
    "cma_mae": (
        "CMA-MAE (alpha=0.01, 15x36)",
        {"learning_rate": 0.01, "threshold_min": 0.0},
        {"ranker": "imp", "selection_rule": "mu", "restart_rule": "basic"},
    ),
}


def run_ours(name: str, seed: int, iterations: int) -> tuple[dict, MapElites]:
    archive = GridArchive(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2)
    kwargs = ALGORITHMS[name][1]
    emitter_cls = GaussianEmitter if name == "map_elites" else IsoLineEmitter
    search = MapElites(archive, [emitter_cls(archive, batch_size=BATCH, **kwargs)], seed=seed)
    start = time.perf_counter()
    for _ in range(iterations):
        cands = search.ask()
        objectives, measures = sphere(np.stack([c.value for c in cands]))
        # The generic contract path: one (objective, measures) pair per id.
        search.tell([c.id for c in cands], list(zip(objectives, measures)))
    elapsed = time.perf_counter() - start
    s = search.stats
    return {
        "qd_score": s.qd_score,
        "coverage": s.coverage,
        "ms_per_it": 1e3 * elapsed / iterations,
    }, search


def run_pyribs(name: str, seed: int, iterations: int) -> dict:
    from ribs.archives import GridArchive as RibsGrid
    from ribs.emitters import GaussianEmitter as RibsGaussian
    from ribs.emitters import IsoLineEmitter as RibsIsoLine
    from ribs.schedulers import Scheduler

    archive = RibsGrid(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2, seed=seed)
    kwargs = ALGORITHMS[name][1]
    emitter_cls = RibsGaussian if name == "map_elites" else RibsIsoLine
    emitters = [emitter_cls(archive, x0=np.zeros(DIM), batch_size=BATCH, seed=seed, **kwargs)]
    scheduler = Scheduler(archive, emitters)
    start = time.perf_counter()
    for _ in range(iterations):
        solutions = scheduler.ask()
        objectives, measures = sphere(solutions)
        scheduler.tell(objectives, measures)
    elapsed = time.perf_counter() - start
    s = archive.stats
    return {
        "qd_score": float(s.qd_score),
        "coverage": float(s.coverage),
        "ms_per_it": 1e3 * elapsed / iterations,
    }


def run_cma_ours(name: str, seed: int, iterations: int) -> dict:
    _, archive_kw, emitter_kw = CMA[name]
    archive = GridArchive(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2, **archive_kw)
    result = None
    if archive_kw:
        result = GridArchive(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2)
    emitters = [
        EvolutionStrategyEmitter(archive, sigma0=0.5, batch_size=36, **emitter_kw)
        for _ in range(15)
    ]
    search = MapElites(archive, emitters, seed=seed, result_archive=result)
    start = time.perf_counter()
    for _ in range(iterations):
        cands = search.ask()
        objectives, measures = sphere(np.stack([c.value for c in cands]))
        search.tell([c.id for c in cands], list(zip(objectives, measures)))
    elapsed = time.perf_counter() - start
    s = search.stats
    return {"qd_score": s.qd_score, "coverage": s.coverage, "ms_per_it": 1e3 * elapsed / iterations}


def run_cma_pyribs(name: str, seed: int, iterations: int) -> dict:
    from ribs.archives import GridArchive as RibsGrid
    from ribs.emitters import EvolutionStrategyEmitter as RibsES
    from ribs.schedulers import Scheduler

    _, archive_kw, emitter_kw = CMA[name]
    archive = RibsGrid(
        solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2, seed=seed, **archive_kw
    )
    result = None
    if archive_kw:
        result = RibsGrid(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2, seed=seed)
    seeds = np.random.SeedSequence(seed).spawn(15)
    emitters = [
        RibsES(archive, x0=np.zeros(DIM), sigma0=0.5, batch_size=36, seed=s, **emitter_kw)
        for s in seeds
    ]
    scheduler = Scheduler(archive, emitters, result_archive=result)
    start = time.perf_counter()
    for _ in range(iterations):
        solutions = scheduler.ask()
        objectives, measures = sphere(solutions)
        scheduler.tell(objectives, measures)
    elapsed = time.perf_counter() - start
    s = (result or archive).stats
    return {
        "qd_score": float(s.qd_score),
        "coverage": float(s.coverage),
        "ms_per_it": 1e3 * elapsed / iterations,
    }


def insert_throughput(kind: str, batch: int, repeats: int) -> dict:
    from ribs.archives import CVTArchive as RibsCVT
    from ribs.archives import GridArchive as RibsGrid

    rng = np.random.default_rng(0)
    if kind == "grid":
        ours = GridArchive(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2)
        theirs = RibsGrid(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2)
    else:
        ours = CVTArchive(
            solution_dim=DIM, centroids=10_000, ranges=[RANGE] * 2, seed=0, max_iter=20
        )
        theirs = RibsCVT(solution_dim=DIM, centroids=ours.centroids, ranges=[RANGE] * 2)
    data = [
        (
            rng.normal(size=(batch, DIM)),
            rng.uniform(0, 100, size=batch),
            rng.uniform(*RANGE, size=(batch, 2)),
        )
        for _ in range(repeats + 1)
    ]
    out = {}
    for label, archive in (("ours", ours), ("pyribs", theirs)):
        archive.add(*data[0])  # warm-up (numba compilation for pyribs)
        rates = []
        for sol, obj, meas in data[1:]:
            start = time.perf_counter()
            archive.add(sol, obj, meas)
            rates.append(batch / (time.perf_counter() - start))
        out[label] = statistics.median(rates)
    return out


def print_table(results: dict, labels: dict) -> None:
    """Markdown rows: median (min-max) QD score, coverage and ms/iteration per library."""
    print("| Algorithm | Library | QD score | Coverage | ms / iteration |")
    print("|---|---|---:|---:|---:|")
    for name, by_lib in results.items():
        for lib, rows in by_lib.items():
            if not rows:
                continue
            qd = [r["qd_score"] for r in rows]
            cov = [100 * r["coverage"] for r in rows]
            ms = [r["ms_per_it"] for r in rows]
            print(
                f"| {labels[name][0]} | {lib} | {statistics.median(qd):,.0f} "
                f"({min(qd):,.0f}-{max(qd):,.0f}) | {statistics.median(cov):.2f}% "
                f"(min {min(cov):.2f}%) | {statistics.median(ms):.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--insert-batch", type=int, default=10_000)
    parser.add_argument("--insert-repeats", type=int, default=20)
    parser.add_argument("--no-pyribs", action="store_true")
    parser.add_argument(
        "--cma-iterations",
        type=int,
        default=300,
        help="iterations for CMA-ME / CMA-MAE (0 skips them)",
    )
    parser.add_argument("--cma-seeds", type=int, default=5)
    parser.add_argument("--heatmap", default=None, help="PNG path for ours' seed-0 heatmaps")
    parser.add_argument("--json", default=None, help="write raw results here")
    args = parser.parse_args()

    results: dict = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "iterations": args.iterations,
        "seeds": args.seeds,
        "sphere": {},
        "insert": {},
    }
    finals = {}
    names = args.algorithms.split(",")
    if not args.no_pyribs:  # compile pyribs' numba kernels outside the timed runs
        for name in names:
            run_pyribs(name, 0, 3)
        if args.cma_iterations > 0:
            for name in CMA:
                run_cma_pyribs(name, 0, 3)
    for name in names:
        rows = {"ours": [], "pyribs": []}
        for seed in range(args.seeds):
            row, search = run_ours(name, seed, args.iterations)
            rows["ours"].append(row)
            if seed == 0:
                finals[name] = search
            if not args.no_pyribs:
                rows["pyribs"].append(run_pyribs(name, seed, args.iterations))
            print(name, seed, {k: v[-1] for k, v in rows.items() if v}, flush=True)
        results["sphere"][name] = rows

    print(
        f"\nSphere, d={DIM}, 100x100 grid, {BATCH}/iteration, {args.iterations} iterations, "
        f"median (min-max) of {args.seeds} seeds"
    )
    print_table(results["sphere"], ALGORITHMS)

    if args.cma_iterations > 0:
        results["cma"] = {}
        for name in CMA:
            rows = {"ours": [], "pyribs": []}
            for seed in range(args.cma_seeds):
                rows["ours"].append(run_cma_ours(name, seed, args.cma_iterations))
                if not args.no_pyribs:
                    rows["pyribs"].append(run_cma_pyribs(name, seed, args.cma_iterations))
                print(name, seed, {k: v[-1] for k, v in rows.items() if v}, flush=True)
            results["cma"][name] = rows
        print(
            f"\nSphere, same setup, 15 CMA-ES emitters x 36, {args.cma_iterations} iterations, "
            f"median (min-max) of {args.cma_seeds} seeds"
        )
        print_table(results["cma"], CMA)

    if not args.no_pyribs:
        print(
            f"\nBatch insert, {args.insert_batch:,} solutions of d={DIM} per add, "
            f"median of {args.insert_repeats} batches"
        )
        print("| Archive | ours (solutions/s) | pyribs (solutions/s) | ratio |")
        print("|---|---:|---:|---:|")
        for kind in ("grid", "cvt"):
            r = insert_throughput(kind, args.insert_batch, args.insert_repeats)
            results["insert"][kind] = r
            label = "100x100 grid" if kind == "grid" else "10,000-cell CVT"
            print(
                f"| {label} | {r['ours']:,.0f} | {r['pyribs']:,.0f} | "
                f"{r['ours'] / r['pyribs']:.2f} |"
            )

    if args.heatmap and finals:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(finals), figsize=(6 * len(finals), 5), squeeze=False)
        for ax, (name, search) in zip(axes[0], finals.items()):
            archive_heatmap(search.archive, ax=ax, vmin=0, vmax=100)
            s = search.stats
            ax.set_title(
                f"{ALGORITHMS[name][0]}\nQD {s.qd_score:,.0f}, "
                f"coverage {100 * s.coverage:.1f}% (seed 0, "
                f"{args.iterations} it.)",
                fontsize=10,
            )
        fig.tight_layout()
        fig.savefig(args.heatmap, dpi=110)
        print(f"\nheatmap written to {args.heatmap}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
