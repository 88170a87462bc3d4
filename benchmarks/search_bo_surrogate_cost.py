"""Seconds per suggestion of the GP and the deep ensemble as the number of observations grows.

Each surrogate is given N observations of Levy-10D at uniform random points (through
``observe``), then asked for ``--asks`` suggestions; the two surrogates alternate within each
N. The exact GP costs O(N^3) per likelihood evaluation; the ensemble's full-batch training
costs O(N) per Adam step, so past some N the ensemble is the cheaper model.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/search_bo_surrogate_cost.py --ns 100 300 600 --asks 2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optforge.search.bo import BayesianOptimization, Real, SearchSpace  # noqa: E402
from search_bo_suite import levy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[100, 300, 600])
    parser.add_argument("--asks", type=int, default=2)
    args = parser.parse_args()
    space = SearchSpace({f"x{i}": Real(-10.0, 10.0) for i in range(10)})
    print("| N | GP s / suggestion | deep ensemble s / suggestion | ensemble / GP |")
    print("|---:|---:|---:|---:|")
    for n in args.ns:
        rng = np.random.default_rng(n)
        X = rng.uniform(-10.0, 10.0, (n, 10))
        configs = [{f"x{i}": float(x[i]) for i in range(10)} for x in X]
        values = [levy(x) for x in X]
        times: dict[str, list[float]] = {"gp": [], "ensemble": []}
        bos = {}
        for name in times:
            bos[name] = BayesianOptimization(space, surrogate=name, seed=0)
            bos[name].observe(configs, values)
        for k in range(args.asks):
            for name in list(times)[:: 1 if k % 2 == 0 else -1]:
                t0 = time.perf_counter()
                (c,) = bos[name].ask(1)
                times[name].append(time.perf_counter() - t0)
                bos[name].tell([c.id], [levy(np.array([c.value[f"x{i}"] for i in range(10)]))])
        gp, ens = np.median(times["gp"]), np.median(times["ensemble"])
        print(f"| {n} | {gp:.2f} | {ens:.2f} | {ens / gp:.2f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
