"""Time per MAP-Elites iteration, optforge against pyribs, interleaved in one process.

The sphere setup of ``benchmarks/search_qd.py`` (100-D, 100x100 grid over [-256, 256]^2, one
emitter of 540 per iteration; Gaussian sigma 0.5, Iso+LineDD (0.5, 0.2)). One pyribs run and one
run of ours per loop advance side by side in blocks of ``--block`` iterations, in an order that
rotates every block, so that machine load hits all alike; a ratio is ours / pyribs' time for the
same block (ask + evaluate + tell through each library's public loop). Our loops: ``batch``, the
documented one (``tell(cands, sphere(cands.values))``); ``pairs`` (one ``(objective, measures)``
pair per id); ``objects`` (only ``Candidate`` objects: ``np.stack`` of their values, a list of
their ids); ``arrays`` (``ask_arrays``/``tell_arrays``). pyribs: its ``Scheduler``.

    OMP_NUM_THREADS=1 python benchmarks/search_qd_speed.py [--blocks 20 --block 25]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from optforge.search.qd import GaussianEmitter, GridArchive, IsoLineEmitter, MapElites, sphere

DIM, RANGE, BATCH = 100, (-256.0, 256.0), 540
KW = {"gaussian": {"sigma": 0.5}, "iso_line": {"iso_sigma": 0.5, "line_sigma": 0.2}}


def ours(kind: str, seed: int, loop: str = "batch"):
    archive = GridArchive(solution_dim=DIM, dims=(100, 100), ranges=[RANGE] * 2)
    cls = GaussianEmitter if kind == "gaussian" else IsoLineEmitter
    search = MapElites(archive, [cls(archive, batch_size=BATCH, **KW[kind])], seed=seed)

    def step_batch() -> None:  # the documented loop: the batch's arrays in, arrays back
        cands = search.ask()
        search.tell(cands, sphere(cands.values))

    def step_pairs() -> None:  # the batch's arrays in, one (objective, measures) pair per id
        cands = search.ask()
        objectives, measures = sphere(cands.values)
        search.tell(cands, list(zip(objectives, measures)))

    def step_objects() -> None:  # through Candidate objects only (the loop before Candidates)
        cands = search.ask()
        objectives, measures = sphere(np.stack([c.value for c in cands]))
        search.tell([c.id for c in cands], list(zip(objectives, measures)))

    def step_arrays() -> None:
        ids, solutions = search.ask_arrays()
        search.tell_arrays(ids, *sphere(solutions))

    steps = {
        "batch": step_batch,
        "pairs": step_pairs,
        "objects": step_objects,
        "arrays": step_arrays,
    }
    return steps[loop], lambda: search.stats.qd_score


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


LOOPS = {
    "batch": "`tell(cands, sphere(cands.values))`",
    "pairs": "`tell(cands, list(zip(obj, meas)))`",
    "objects": "`np.stack([c.value ...])`, `tell([c.id ...], pairs)`",
    "arrays": "`ask_arrays`/`tell_arrays`",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    print("| Emitter | our loop | ours ms/it | pyribs ms/it | ratio median (p10-p90) | min |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in KW:
        # One pyribs run and one run of ours per loop, all advanced block by block in a rotating
        # order, so each block's ratios compare runs made under the same machine load.
        runs = {name: ours(kind, args.seed, name) for name in LOOPS}
        runs["pyribs"] = pyribs(kind, args.seed)
        for step, _ in runs.values():
            timed(step, 3)  # warm-up: pyribs compiles numba kernels on first use
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for k in range(args.blocks):
            shift = k % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(timed(runs[name][0], args.block))
        ref = np.array(times["pyribs"])
        for name in LOOPS:
            ratios = np.array(times[name]) / ref
            q = np.quantile(ratios, [0.1, 0.9])
            print(
                f"| {kind} | {LOOPS[name]} | {1e3 * statistics.median(times[name]):.2f} | "
                f"{1e3 * statistics.median(ref):.2f} | "
                f"{np.median(ratios):.2f} ({q[0]:.2f}-{q[1]:.2f}) | {ratios.min():.2f} |",
                flush=True,
            )
        scores = ", ".join(f"{name} {qd():.6g}" for name, (_, qd) in runs.items())
        print(f"  QD score after {args.blocks * args.block + 3} its: {scores}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
