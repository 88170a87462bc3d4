"""Functional hashing on a domain it was not tuned on: symbolic regression of
``tanh(x·y) + 0.3·(x − y)^2``. How often does the cache hand back a wrong fitness, and does the
audit's interval cover that rate?

Regularized evolution (P = 100, S = 10) over 10-instruction programs of inputs ``x, y`` and 4
registers (ops add, sub, mul, div, max, min, sign, square, tanh, scale); fitness = −MSE on 512
fixed points ``x, y ~ U(−3, 3)``. For each probe set the run counts, for *every* hit answered
from the cache or from an evaluation in flight (not only audited ones), whether the fitness it
was told equals the candidate's true fitness (|Δ| <= 1e-12 + 1e-6·|f|, the audit tolerance): the
true wrong-hit rate. Audits (2% of hits of both kinds, the default) estimate it; the
Clopper-Pearson 95% interval is reported beside the truth.

    OMP_NUM_THREADS=1 python benchmarks/search_hashing_symbolic.py [--seeds 5] [--children 5000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from optforge.search.base import SearchAlgorithm
from optforge.search.evolution import RegularizedEvolution
from optforge.search.hashing import (
    FunctionalHash,
    FunctionalHashing,
    ProgramProbe,
    binomial_interval,
)
from optforge.search.programs import Program, ProgramSpace

SPACE = ProgramSpace(
    ("x", "y"),
    n_registers=4,
    max_length=10,
    init_length=(10, 10),
    ops=["add", "sub", "mul", "div", "max", "min", "sign", "square", "tanh", "scale"],
)
_rng = np.random.default_rng(2)
DATA = {"x": _rng.uniform(-3, 3, 512), "y": _rng.uniform(-3, 3, 512)}
TARGET = np.tanh(DATA["x"] * DATA["y"]) + 0.3 * (DATA["x"] - DATA["y"]) ** 2


def fitness(program: Program) -> float:
    with np.errstate(all="ignore"):
        err = float(np.mean((program(**DATA) - TARGET) ** 2))
    return -min(err, 1e6) if np.isfinite(err) else -1e6


class Truth(SearchAlgorithm):
    """Wraps evolution and checks every told fitness against the candidate's true fitness."""

    def __init__(self, inner: RegularizedEvolution):
        self.inner, self.seed, self.maximize = inner, inner.seed, inner.maximize
        self.values: dict[int, Program] = {}
        self.wrong = 0

    def ask(self, n=None):
        out = self.inner.ask(n)
        self.values.update((c.id, c.value) for c in out)
        return out

    def tell(self, ids: Sequence[int], results: Sequence[float]) -> None:
        for i, v in zip(ids, results):
            f = fitness(self.values.pop(i))
            self.wrong += abs(v - f) > 1e-12 + 1e-6 * abs(f)
        self.inner.tell(ids, results)

    def discard(self, ids):
        self.inner.discard(ids)

    @property
    def pending(self):
        return self.inner.pending

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def one_run(probe: str, n_probes: int, children: int, seed: int) -> dict:
    data = DATA if probe == "data" else None
    key = FunctionalHash(ProgramProbe(("x", "y"), n_probes=n_probes, data=data))
    evo = RegularizedEvolution(
        SPACE.init,
        SPACE.mutate,
        population_size=100,
        sample_size=10,
        seed=seed,
        to_state=Program.to_state,
        from_state=Program.from_state,
    )
    truth = Truth(evo)
    search = FunctionalHashing(
        truth, key, structural_key=Program.structural_hash, probe_cost=n_probes / 512, seed=seed
    )
    start = time.perf_counter()
    while evo.n_told < children:
        cands = search.ask()
        search.tell([c.id for c in cands], [fitness(c.value) for c in cands])
    t = search.telemetry
    answered = t["hits"] - t["audits"] - t["forced"]  # hits told a cached or in-flight value
    return {
        "hits": answered,
        "wrong": truth.wrong,
        "audited": t["audited"],
        "audit_wrong": t["wrong_hits"],
        "effective": t["effective_evaluations"],
        "candidates": t["candidates"],
        "best": evo.best[1],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--children", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--probes", nargs="+", default=["default:16", "default:256", "data:256"])
    args = parser.parse_args()
    print(
        "| Probes | Hits answered | Wrong (true) | True rate | Audited: wrong/n | "
        "Clopper-Pearson 95% | Covers | Fewer evals | Best fitness |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for spec in args.probes:
        kind, n = spec.split(":")
        for seed in range(args.seeds):
            r = one_run(kind, int(n), args.children, seed)
            rate = r["wrong"] / max(r["hits"], 1)
            lo, hi = binomial_interval(int(r["audit_wrong"]), int(r["audited"]))
            print(
                f"| {kind} {n}, seed {seed} | {r['hits']:.0f} | {r['wrong']} | {rate:.3%} | "
                f"{r['audit_wrong']:.0f}/{r['audited']:.0f} | [{lo:.2%}, {hi:.2%}] | "
                f"{'yes' if lo <= rate <= hi else 'NO'} | "
                f"{r['candidates'] / r['effective']:.2f}x | {r['best']:.4g} |",
                flush=True,
            )
    print(f"({args.seeds} seeds x {args.children} children each)")


if __name__ == "__main__":
    main()
