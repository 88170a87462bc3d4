"""Quality at equal steps on the harness's ``stdlib_lm``: AdamW, GaLore, Fira, FRUGAL, LISA.

Every run trains the same model (``init_model(seed)``, batch 32, ``train_batch(step, seed)``:
the same batches for every method) for ``--steps`` steps with 5% linear warm-up and cosine
decay to 0, and records the validation cross-entropy every ``--eval-every`` steps.

Protocol (one command does all of it; finished runs are cached as JSON in ``--out-dir``, so an
interrupted command resumes):

1. Learning-rate sweep on seed 0, the same ``--lrs`` grid (4 points, factor 2) for every method.
   For GaLore and Fira the grid is the *effective* rate of the projected weights, ``lr * scale``
   with the papers' α = 0.25 (so lr = 4x the grid point; 0.008 is next to the scripts' 0.01).
2. The lr with the lowest final validation loss per method is rerun on ``--final-seeds``.
3. Table (markdown, printed), ``summary.json`` and the curves PNG are written.

Method settings follow the papers' pretraining scripts (see ``docs/lowrank/*.md``):

- GaLore / Fira: project the blocks' attention and MLP ``nn.Linear`` weights (qkv, proj, fc1,
  fc2) at rank d/4 = 16 for d = 64 (GaLore's r/d_model is 1/4 at 350M and 1B, 1/2 at 60M;
  d/4 is also the issue's memory target), the official 'std' side, α = 0.25, update gap
  T = ``--proj-gap`` = 50: the scripts' argparse default, and 20 refreshes in 1,000 steps,
  nearer the paper's ~50 (T = 200 over ~10K steps at 60M) than T = 200 (5 refreshes) would be
  (measured afterwards: T = 200 is slightly better here; see the docs page's ablation).
  Embeddings, head, norms and biases are plain AdamW at AdamW's best swept lr (they are not
  part of the low-rank method).
- FRUGAL: density ρ = 0.25 (= 16 of 64) of each projected weight with Adam state, signSGD on
  the rest, one lr for every group as in its scripts, state reset on subspace switch, the
  library's SVD projector, T = 50 (its argparse default too).
- LISA: AdamW inside; γ = 1 of the 2 blocks per K = 20-step period; embeddings, positional
  table, final norm and head always train (as LMFlow's callback does).

Weight decay is 0 for every method (GaLore's and Fira's setting). One torch thread per run.
The defaults are the run in ``docs/lowrank/quality.md`` (its PNG and ``summary.json`` are copies
of this command's ``curves.png`` and ``summary.json``):

    nice -n 5 python benchmarks/lowrank_quality.py --out-dir /tmp/lowrank_quality
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from optforge.bench.submission import cosine_warmup_factor
from optforge.bench.workloads.stdlib_lm import StdlibCharLM
from optforge.lowrank import FRUGAL, LISA, FiraAdamW, GaLoreAdamW, galore_param_groups

METHODS = ("adamw", "galore", "fira", "frugal", "lisa")
LABELS = {"adamw": "AdamW", "galore": "GaLore", "fira": "Fira", "frugal": "FRUGAL",
          "lisa": "LISA"}
SCALE, BATCH = 0.25, 32


def build(method: str, model: torch.nn.Module, lr: float, base_lr: float, proj_gap: int,
          rank: int = 16) -> torch.optim.Optimizer:
    """``lr`` is the swept rate (projected weights' effective rate for GaLore/Fira);
    ``base_lr`` is AdamW's best rate, used by GaLore/Fira for the non-projected parameters."""
    proj = dict(target_modules=("blocks",), update_proj_gap=proj_gap)
    if method == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if method in ("galore", "fira"):
        projected, rest = galore_param_groups(model, rank=rank, scale=SCALE, proj_type="std",
                                              **proj)
        rest["lr"] = base_lr
        cls = GaLoreAdamW if method == "galore" else FiraAdamW
        return cls([projected, rest], lr=lr / SCALE, weight_decay=0.0)
    if method == "frugal":
        groups = galore_param_groups(model, rank=None, density=rank / model.tok.weight.shape[1],
                                     **proj)
        return FRUGAL(groups, lr=lr, weight_decay=0.0)
    if method == "lisa":
        inner = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        return LISA(inner, [list(b.parameters()) for b in model.blocks], n_active=1, period=20)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def train(method: str, lr: float, seed: int, steps: int, eval_every: int, base_lr: float,
          proj_gap: int, rank: int, path: str) -> dict:
    """One run; writes its result to ``path`` (the cache) and returns it."""
    try:  # claim the run; another command sharing --out-dir may be running it
        os.close(os.open(path + ".lock", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        while not os.path.exists(path):  # a stale lock (killed run) must be deleted by hand
            time.sleep(5)
    if os.path.exists(path):  # finished by an earlier or a parallel command
        with open(path) as fh:
            return json.load(fh)
    torch.set_num_threads(1)
    workload = StdlibCharLM()
    model = workload.init_model(seed)
    opt = build(method, model, lr, base_lr, proj_gap, rank)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_warmup_factor(s, steps, 0.05)
    )
    curve, start = [], time.perf_counter()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = workload.loss(model, workload.train_batch(step, seed, BATCH))
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            val = workload.evaluate(model)
            curve.append((step + 1, val if math.isfinite(val) else float("inf")))
    result = {"method": method, "lr": lr, "seed": seed, "steps": steps, "base_lr": base_lr,
              "proj_gap": proj_gap, "rank": rank, "curve": curve, "final": curve[-1][1],
              "seconds": time.perf_counter() - start}
    with open(path + ".tmp", "w") as fh:
        json.dump(result, fh)
    os.replace(path + ".tmp", path)
    print(f"{method} lr={lr:g} seed={seed}: {result['final']:.4f} "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


class Runner:
    """Runs (method, lr, seed) jobs in a process pool, reusing cached results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pool = ProcessPoolExecutor(max_workers=args.jobs)
        os.makedirs(os.path.join(args.out_dir, "runs"), exist_ok=True)

    def submit(self, method: str, lr: float, seed: int, base_lr: float):
        a = self.args
        gap = a.proj_gap if method in ("galore", "fira", "frugal") else 0
        name = f"{method}_lr{lr:g}_seed{seed}_steps{a.steps}"
        name += f"_gap{gap}_base{base_lr:g}" if method in ("galore", "fira") else ""
        name += f"_gap{gap}" if method == "frugal" else ""
        name += f"_r{a.rank}" if a.rank != 16 and method != "adamw" and method != "lisa" else ""
        path = os.path.join(a.out_dir, "runs", name + ".json")
        return self.pool.submit(train, method, lr, seed, a.steps, a.eval_every, base_lr, gap,
                                a.rank, path)


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["final"])


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axz) = plt.subplots(1, 2, figsize=(12, 4.5))
    for m, entry in summary["methods"].items():
        runs = entry["final_runs"]
        steps = [s for s, _ in runs[0]["curve"]]
        mean = [sum(r["curve"][i][1] for r in runs) / len(runs) for i in range(len(steps))]
        rate = "lr·α" if m in ("galore", "fira") else "lr"  # the swept, effective rate
        label = f"{LABELS[m]} ({rate} {entry['best_lr']:g})"
        for a in (ax, axz):
            (line,) = a.plot(steps, mean, label=label)
            for r in runs:  # thin lines: the individual seeds
                a.plot(steps, [v for _, v in r["curve"]], color=line.get_color(), lw=0.5,
                       alpha=0.4)
    ref = summary["methods"]["adamw"]["mean_final"] if "adamw" in summary["methods"] else None
    if ref:
        axz.axhline(1.05 * ref, color="k", ls="--", lw=0.8, label="AdamW + 5%")
    start = summary["steps"] // 2
    finals = [e["mean_final"] for e in summary["methods"].values()]
    axz.set_xlim(start, summary["steps"])
    axz.set_ylim(min(finals) - 0.03, max(max(finals), 1.05 * (ref or 0)) + 0.12)
    ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
    seeds = ", ".join(str(s) for s in summary["seeds"])
    ax.set_title(f"stdlib_lm, best lr per method, mean of seeds {seeds}")
    axz.set_title("second half, zoomed; dashed: 5% above AdamW")
    for a in (ax, axz):
        a.set_xlabel("step")
        a.set_ylabel("validation cross-entropy (nats/char)")
        a.grid(alpha=0.3)
    axz.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lrs", default="2e-3,4e-3,8e-3,1.6e-2",
                        help="swept rates (GaLore/Fira: lr * scale)")
    parser.add_argument("--final-seeds", default="0,1,2")
    parser.add_argument("--rank", type=int, default=16,
                        help="GaLore/Fira rank; FRUGAL density rank/d")
    parser.add_argument("--proj-gap", type=int, default=50, help="T of GaLore, Fira, FRUGAL")
    parser.add_argument("--jobs", type=int, default=5, help="runs in parallel, 1 thread each")
    parser.add_argument("--out-dir", default="lowrank_quality")
    args = parser.parse_args()
    methods = sorted(args.methods.split(","), key=lambda m: METHODS.index(m) if m in METHODS
                     else len(METHODS))  # the table's order; unknown names fail in build()
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(s) for s in args.final_seeds.split(",")]
    runner = Runner(args)

    # AdamW first: its best lr is the rate of GaLore's/Fira's non-projected parameters
    sweep = {m: [runner.submit(m, lr, 0, 0.0) for lr in lrs]
             for m in ("adamw", "lisa", "frugal") if m in methods}
    base_lr = best([f.result() for f in sweep["adamw"]])["lr"] if "adamw" in sweep else 1e-3
    for m in methods:
        if m in ("galore", "fira"):
            sweep[m] = [runner.submit(m, lr, 0, base_lr) for lr in lrs]
    finals = {}
    for m in methods:
        runs = [f.result() for f in sweep[m]]
        lr = best(runs)["lr"]
        finals[m] = [runner.submit(m, lr, s, base_lr) for s in seeds]
    summary = {"steps": args.steps, "seeds": seeds, "lrs": lrs, "base_lr": base_lr,
               "proj_gap": args.proj_gap, "methods": {}}
    for m in methods:
        runs = [f.result() for f in finals[m]]
        summary["methods"][m] = {
            "sweep": {r["lr"]: r["final"] for r in (f.result() for f in sweep[m])},
            "best_lr": runs[0]["lr"], "final_runs": runs,
            "mean_final": sum(r["final"] for r in runs) / len(runs),
        }
    runner.pool.shutdown()
    with open(os.path.join(args.out_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    plot(summary, os.path.join(args.out_dir, "curves.png"))

    ref = summary["methods"].get("adamw", {}).get("mean_final")
    print("| method | " + " | ".join(f"{x:g}" for x in lrs) + " | best lr | seeds | vs AdamW |")
    print("|---" * (len(lrs) + 4) + "|")
    for m, e in summary["methods"].items():
        finals_s = " / ".join(f"{r['final']:.3f}" for r in e["final_runs"])
        rel = f"{100 * (e['mean_final'] / ref - 1):+.1f}%" if ref else ""
        print(f"| {LABELS[m]} | " + " | ".join(f"{e['sweep'][x]:.3f}" for x in lrs)
              + f" | {e['best_lr']:g} | {finals_s} (mean {e['mean_final']:.3f}) | {rel} |")


if __name__ == "__main__":
    main()
