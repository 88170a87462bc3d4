"""Time per MAP-Elites iteration, optforge against pyribs, interleaved in one process.

The sphere setup of ``benchmarks/search_qd.py`` (100-D, 100x100 grid over [-256, 256]^2, one
emitter of 540 per iteration; Gaussian sigma 0.5, Iso+LineDD (0.5, 0.2)). Both runs advance
side by side in blocks of ``--block`` iterations, alternating which goes first, so that machine
load hits both alike; the ratio is the median over blocks of ours / pyribs' time for the same
iterations (ask + evaluate + tell through each library's public loop: ours
``ask``/``tell(ids, pairs)`` and, on a second row, the array pair ``ask_arrays``/``tell_arrays``;
pyribs' ``Scheduler``).

    OMP_NUM_THREADS=1 python benchmarks/search_qd_speed.py [--blocks 20 --block 25]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from optforge.search.qd import GaussianEmitter, GridArchive, IsoLineEmitter, MapElites, sphere

DIM, RANGE, BATCH = 100, (-256.0, 256.0), 540
KW = {"gaussian": {"sigma": 0.5}, "iso_line": {"iso_sigma": 0.5, "line_sigma": 0.2}}


def ours(kind: str, seed: int, arrays: bool = False):
    archive = GridArchive(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2)
    cls = GaussianEmitter if kind == "gaussian" else IsoLineEmitter
    search = MapElites(archive, [cls(archive, batch_size=BATCH, **KW[kind])], seed=seed)

    def step() -> None:
        cands = search.ask()
        objectives, measures = sphere(np.stack([c.value for c in cands]))
        search.tell([c.id for c in cands], list(zip(objectives, measures)))

    def step_arrays() -> None:
        ids, solutions = search.ask_arrays()
        search.tell_arrays(ids, *sphere(solutions))

    return (step_arrays if arrays else step), lambda: search.stats.qd_score


def pyribs(kind: str, seed: int):
    from ribs.archives import GridArchive as RibsGrid
    from ribs.emitters import GaussianEmitter as RibsGaussian
    from ribs.emitters import IsoLineEmitter as RibsIsoLine
    from ribs.schedulers import Scheduler

    archive = RibsGrid(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2, seed=seed)
    cls = RibsGaussian if kind == "gaussian" else RibsIsoLine
    emitter = cls(archive, x0=np.zeros(DIM), batch_size=BATCH, seed=seed, **KW[kind])
    scheduler = Scheduler(archive, [emitter])

    def step() -> None:
        solutions = scheduler.ask()
        scheduler.tell(*sphere(solutions))

    return step, lambda: float(archive.stats.qd_score)


def timed(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| Emitter | ours ms/it (median) | pyribs ms/it (median) | ratio (median, p10-p90) |")
    print("|---|---:|---:|---:|")
    for kind, arrays in [(k, a) for k in KW for a in (False, True)]:
        a, qa = ours(kind, args.seed, arrays)
        b, qb = pyribs(kind, args.seed)
        timed(a, 3), timed(b, 3)  # warm-up: pyribs compiles numba kernels on first use
        ta, tb, ratios = [], [], []
        for k in range(args.blocks):
            if k % 2:
                y, x = timed(b, args.block), timed(a, args.block)
            else:
                x, y = timed(a, args.block), timed(b, args.block)
            ta.append(x)
            tb.append(y)
            ratios.append(x / y)
        q = np.quantile(ratios, [0.1, 0.9])
        print(
            f"| {kind}{', arrays' if arrays else ''} | {1e3 * statistics.median(ta):.2f} | "
            f"{1e3 * statistics.median(tb):.2f} | "
            f"{statistics.median(ratios):.2f} ({q[0]:.2f}-{q[1]:.2f}) |",
            flush=True,
        )
        print(
            f"  QD score after {args.blocks * args.block + 3} its: ours {qa():.4g}, "
            f"pyribs {qb():.4g}"
        )


if __name__ == "__main__":
    main()
