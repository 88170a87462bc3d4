"""Discover an optimizer update rule by regularized evolution, with and without functional hashing.

A candidate is a straight-line program ``u = f(g, m, v)`` over the gradient ``g`` and Adam's
bias-corrected moments ``m`` (β1 = 0.9) and ``v`` (β2 = 0.999); training applies
``θ ← θ − lr·u`` with a fixed lr = 0.01 (the search may rescale ``u`` with ``scale``). Fitness is
minus the validation cross-entropy of a 64-32-10 tanh MLP on scikit-learn's digits after 40
minibatch steps (batch 128, fixed seeds: the objective is deterministic), clipped at 10.

Three searches, one seed:

1. plain regularized evolution, ``--children`` children (one full evaluation each);
2. the same with :class:`~optforge.search.FunctionalHashing`, the same number of children: how
   many full evaluations the cache saves;
3. functional hashing run by :func:`optforge.search.run` with a budget of as many *full*
   evaluations as (1) used: what the saving buys (more children for the same cost).

Probe cost is charged as program applications: a probe applies the program to 4,096 points, a
full evaluation to every parameter (2,410) at each of 40 steps, so one probe costs 4,096/96,400
= 0.042 full evaluations (the MLP's forward/backward is not counted, which overstates the probe's
share). Constants are on a 0.01 grid and the probe set is large because ``sign`` programs with
nearby constants differ on few inputs (see docs/search/evolution.md).

Run (CPU, one thread; about 2 minutes on a 2-core machine; ``--quick`` takes seconds)::

    python examples/discover_update_rule.py
    python examples/discover_update_rule.py --quick
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from sklearn.datasets import load_digits

from optforge.search import run
from optforge.search.evolution import RegularizedEvolution
from optforge.search.hashing import FunctionalHash, FunctionalHashing, ProgramProbe
from optforge.search.programs import Program, ProgramSpace

LR, BETA1, BETA2 = 0.01, 0.9, 0.999
STEPS, BATCH, HIDDEN = 40, 128, 32
N_PROBES = 4096


def _workload() -> tuple:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=gen)
    train, val = perm[:1200], perm[1200:]
    init = [
        torch.randn(64, HIDDEN, generator=gen) / 8.0,
        torch.zeros(HIDDEN),
        torch.randn(HIDDEN, 10, generator=gen) / math.sqrt(HIDDEN),
        torch.zeros(10),
    ]
    batches = [train[torch.randperm(len(train), generator=gen)[:BATCH]] for _ in range(STEPS)]
    return x, y, val, init, batches


X, Y, VAL, INIT, BATCHES = _workload()
N_PARAMS = sum(p.numel() for p in INIT)


def _loss(params: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(X[idx] @ params[0] + params[1])
    return torch.nn.functional.cross_entropy(h @ params[2] + params[3], Y[idx])


def fitness(program: Program) -> float:
    """−(validation loss) after training with ``θ ← θ − lr·program(g, m̂, v̂)``; −10 if it
    diverges. Deterministic."""
    params = [p.clone().requires_grad_(True) for p in INIT]
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]
    for t in range(1, STEPS + 1):
        grads = torch.autograd.grad(_loss(params, BATCHES[t - 1]), params)
        with torch.no_grad():
            for p, g, m, v in zip(params, grads, ms, vs):
                m.mul_(BETA1).add_(g, alpha=1 - BETA1)
                v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
                u = program(g=g, m=m / (1 - BETA1**t), v=v / (1 - BETA2**t))
                p.sub_(LR * u)
    with torch.no_grad():
        loss = _loss(params, VAL).item()
    return -min(loss, 10.0) if math.isfinite(loss) else -10.0


MULTIPLIERS = (0.5, 1.0, 2.0, 4.0)
BASELINES = {
    "SGD": "g",
    "sign momentum (signum)": "sign(m)",
    "Adam (no eps)": "div(m, sqrt_abs(v))",
    "Lion-style": "sign(lerp(m, g, 0.1))",
}


def make_evolution(args: argparse.Namespace, space: ProgramSpace) -> RegularizedEvolution:
    return RegularizedEvolution(
        space.init,
        space.mutate,
        population_size=args.population,
        sample_size=args.sample,
        to_state=Program.to_state,
        from_state=Program.from_state,
        seed=args.seed,
    )


def make_hashing(evo: RegularizedEvolution, space: ProgramSpace, seed: int) -> FunctionalHashing:
    return FunctionalHashing(
        evo,
        FunctionalHash(ProgramProbe(space.inputs, n_probes=N_PROBES)),
        structural_key=Program.structural_hash,
        probe_cost=N_PROBES / (N_PARAMS * STEPS),
        audit_rate=0.02,
        seed=seed,
    )


def evolve(search, evo: RegularizedEvolution, children: int) -> tuple[float, float]:
    """The caller's ask/tell loop until ``children`` individuals are told; returns
    ``(seconds, seconds spent in full evaluations)``."""
    start, in_eval = time.perf_counter(), 0.0
    while evo.n_told < children:
        candidates = search.ask()
        t0 = time.perf_counter()
        results = [fitness(c.value) for c in candidates]
        in_eval += time.perf_counter() - t0
        search.tell([c.id for c in candidates], results)
    return time.perf_counter() - start, in_eval


def report_best(label: str, evo: RegularizedEvolution) -> None:
    cand, f = evo.best
    print(f"  best of {label}: fitness {f:.4f} (val loss {-f:.4f})")
    print(f"    {cand.value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: 150 children")
    parser.add_argument("--children", type=int, default=None, help="children per search")
    parser.add_argument("--population", type=int, default=None)
    parser.add_argument("--sample", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.children is None:
        args.children = 150 if args.quick else 1500
    if args.population is None:
        args.population = 20 if args.quick else 50
    torch.set_num_threads(1)

    # Constants on a 0.01 grid: sign(lerp(m, g, 0.1801)) and sign(lerp(m, g, 0.1803)) train
    # differently, but differ on too few inputs for any affordable probe set to tell apart.
    space = ProgramSpace(
        ("g", "m", "v"), n_registers=3, max_length=8, init_length=(1, 4), const_decimals=2
    )
    print(
        f"workload: 64-{HIDDEN}-10 MLP on digits, {STEPS} steps, lr={LR}; "
        f"search: P={args.population}, S={args.sample}, {args.children} children, "
        f"seed {args.seed}"
    )

    # The search can rescale u (scale, add(u, u)), so baselines get the same freedom: each is
    # also run with its step multiplied by 0.5, 2 and 4, and compared at its best multiplier.
    print("baselines (fitness = -validation loss) at step multipliers " + str(MULTIPLIERS) + ":")
    baseline = {}
    for name, text in BASELINES.items():
        row = [fitness(Program.from_expression(f"scale({text}, {k})")) for k in MULTIPLIERS]
        baseline[name] = max(row)
        cells = "  ".join(f"{f:8.4f}" for f in row)
        print(f"  {name:24s} u = {text:26s} {cells}")

    print(f"\n1. regularized evolution, no cache, {args.children} children")
    evo_plain = make_evolution(args, space)
    secs_plain, eval_plain = evolve(evo_plain, evo_plain, args.children)
    full_plain = evo_plain.n_told
    print(f"  {full_plain} full evaluations, {secs_plain:.1f} s")
    report_best("run 1", evo_plain)

    print(f"\n2. with functional hashing, {args.children} children")
    evo_hashed = make_evolution(args, space)
    hashed = make_hashing(evo_hashed, space, args.seed)
    secs_hashed, eval_hashed = evolve(hashed, evo_hashed, args.children)
    t = hashed.telemetry
    print(
        f"  {t['candidates']} children: {t['full_evaluations']} full evaluations "
        f"({t['misses']} misses, {t['audits']} audits, {t['refreshes']} refreshes), "
        f"{t['probes']} probes; effective {t['effective_evaluations']:.1f} evaluations"
    )
    print(
        f"  hit rate {t['hit_rate']:.1%} (structural hash alone: {t['structural_hit_rate']:.1%}), "
        f"wrong hits {t['wrong_hits']}/{t['audited']} audited"
    )
    print(
        f"  {full_plain / t['effective_evaluations']:.1f}x fewer evaluations than run 1; "
        f"wall {secs_hashed:.1f} s vs {secs_plain:.1f} s "
        f"(probes took {t['probe_seconds']:.2f} s)"
    )
    report_best("run 2", evo_hashed)

    print(f"\n3. functional hashing via optforge.search.run, budget {full_plain} full evaluations")
    evo_budget = make_evolution(args, space)
    hashed_budget = make_hashing(evo_budget, space, args.seed)
    start = time.perf_counter()
    run(hashed_budget, fitness, budget=full_plain, executor="inline")
    secs_budget = time.perf_counter() - start
    tb = hashed_budget.telemetry
    print(
        f"  {tb['candidates']} children for {tb['full_evaluations']} full evaluations "
        f"(+{tb['probes']} probes), hit rate {tb['hit_rate']:.1%}, "
        f"wrong hits {tb['wrong_hits']}/{tb['audited']}, {secs_budget:.1f} s"
    )
    report_best("run 3", evo_budget)

    best = max((evo_plain.best, evo_hashed.best, evo_budget.best), key=lambda b: b[1])
    program = best[0].value.simplified()
    print("\nbest program found (live code):")
    print("  " + program.listing().replace("\n", "\n  "))
    print(f"  re-evaluated fitness: {fitness(program):.4f}")
    strongest = max(baseline, key=baseline.get)
    print(
        f"  vs best baseline ({strongest}, best multiplier): {baseline[strongest]:.4f}; "
        f"vs SGD (best multiplier): {baseline['SGD']:.4f}"
    )


if __name__ == "__main__":
    main()
