"""Functional hashing on the toy linear-GP domain: the reference card's table (search.md §7).

Regularized evolution (P = 100, S = 10) over 10-instruction programs of 2 inputs and 4 scratch
registers (ops add, sub, mul, div, sign, square, tanh, sqrt_abs); a mutation redraws an
instruction (p = 0.5) or one field; fitness = −MSE against ``g·sign(m)`` on 256 fixed points.
Functional hash: 64 probes, 6 significant digits, blake2b-128; probe cost 64/256 evaluations;
2% of hits audited. For each run it reports the share of children that compute their parent's
function, the functional hit rate, what structural hashes alone would catch (the raw text of all
instructions, as the card's toy; and the dead-code-aware canonical text), full and effective
evaluations, and audited wrong hits.

    OMP_NUM_THREADS=1 python benchmarks/search_functional_hashing.py [--children 1000 5000 20000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from optforge.search.evolution import RegularizedEvolution
from optforge.search.hashing import FunctionalHash, FunctionalHashing, ProgramProbe
from optforge.search.programs import Program, toy_domain

SPACE, fitness = toy_domain()
N_PROBES = 64


def one_run(children: int, seed: int) -> dict:
    key = FunctionalHash(ProgramProbe(("g", "m"), n_probes=N_PROBES))
    raw_seen: set[str] = set()
    stats = {"raw_dups": 0, "same_as_parent": 0, "children": 0}

    def init(rng):
        p = SPACE.init(rng)
        stats["raw_dups"] += p.raw_key() in raw_seen
        raw_seen.add(p.raw_key())
        return p

    def mutate(parent, rng):
        child = SPACE.mutate(parent, rng)
        stats["raw_dups"] += child.raw_key() in raw_seen
        raw_seen.add(child.raw_key())
        stats["children"] += 1
        stats["same_as_parent"] += key(child) == key(parent)  # measurement only, not charged
        return child

    evo = RegularizedEvolution(
        init,
        mutate,
        population_size=100,
        sample_size=10,
        seed=seed,
        to_state=Program.to_state,
        from_state=Program.from_state,
    )
    search = FunctionalHashing(
        evo,
        key,
        structural_key=Program.structural_hash,
        probe_cost=N_PROBES / 256,
        audit_rate=0.02,
        seed=seed,
    )
    start = time.perf_counter()
    while evo.n_told < children:
        cands = search.ask()
        search.tell([c.id for c in cands], [fitness(c.value) for c in cands])
    t = search.telemetry
    return {
        "parent": stats["same_as_parent"] / max(stats["children"], 1),
        "hits": t["hit_rate"],
        "raw": stats["raw_dups"] / t["candidates"],
        "live": t["structural_hit_rate"],
        "full": t["full_evaluations"],
        "effective": t["effective_evaluations"],
        "ratio": t["candidates"] / t["effective_evaluations"],
        "wrong": t["wrong_hits"],
        "audited": t["audited"],
        "best": evo.best[1],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--children", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(
        "| Children | Parent's function | Functional hits | Structural, raw | Structural, "
        "live code | Full evals | Effective evals | Fewer evals | Wrong audited | Best fitness |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.children:
        runs = [one_run(n, seed) for seed in range(args.seeds)]

        def mean(k, runs=runs):
            return float(np.mean([r[k] for r in runs]))

        wrong = sum(r["wrong"] for r in runs)
        audited = sum(r["audited"] for r in runs)
        print(
            f"| {n:,} | {mean('parent'):.1%} | {mean('hits'):.1%} | {mean('raw'):.1%} | "
            f"{mean('live'):.1%} | {mean('full'):.0f} | {mean('effective'):.0f} | "
            f"{mean('ratio'):.1f}x | {wrong}/{audited} | {mean('best'):.3g} |"
        )
    print(f"(mean of {args.seeds} seeds; wrong/audited summed over seeds)")


if __name__ == "__main__":
    main()
