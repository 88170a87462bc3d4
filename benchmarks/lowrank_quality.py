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
   ``VARIANTS`` (GaLore with its moments rotated into each new basis, LISA with frozen blocks
   keeping their moments, LISA re-warming a re-drawn block's update) are rows of the same
   table and get the same sweep and seeds.
3. Table (markdown, printed), ``summary.json`` and the curves PNG are written.
4. With ``--ablations``: the ``ABLATIONS`` runs (T, rank, switch policy, randomized SVD, which
   weights are projected, LISA's K, 3,000 steps, and a probe of the share of each gradient
   GaLore's basis keeps, plotted to ``galore_energy.png``), each next to AdamW on the same
   seeds and steps; outside the equal budget.

Method settings follow the papers' pretraining scripts (see ``docs/lowrank/*.md``):

- GaLore / Fira: project the blocks' attention and MLP ``nn.Linear`` weights (qkv, proj, fc1,
  fc2) at rank d/4 = 16 for d = 64 (the official scripts' r/d_model: rank 128 on the 60M
  config's hidden size 512, 256/1024 at 350M, 512/2048 at 1B; the paper's Table 2 prints
  "128/256" at 60M, which the config contradicts; d/4 is also the issue's memory target),
  the official 'std' side, α = 0.25, update gap T = ``--proj-gap`` = 50: the scripts'
  argparse default, and 20 refreshes in 1,000 steps, nearer the paper's ~50 (T = 200 over ~10K
  steps at 60M) than T = 200 (5 refreshes) would be (measured afterwards: T = 200 is slightly
  better at 1,000 steps, slightly worse at 3,000; see the docs page).
  Embeddings, head, norms and biases are plain AdamW at AdamW's best swept lr (they are not
  part of the low-rank method).
- FRUGAL: density ρ = 0.25 (= 16 of 64) of each projected weight with Adam state, signSGD on
  the rest, one lr for every group as in its scripts, state reset on subspace switch, the
  library's SVD projector, T = 50 (its argparse default too).
- LISA: AdamW inside; γ = 1 of the 2 blocks per K = 20-step period; embeddings, positional
  table, final norm and head always train (as LMFlow does); a frozen block's AdamW state is
  freed, so a re-drawn block starts with fresh moments (LMFlow's ``LISATrainer``). The
  ``lisa_keep`` variant keeps it (LMFlow's first, ``requires_grad``-only callback).

Weight decay is 0 for every method (GaLore's and Fira's setting). One torch thread per run.
``docs/lowrank/quality.md`` has two runs (its PNGs and ``summary*.json`` are copies of the
commands' ``curves.png``, ``galore_energy.png`` and ``summary.json``): the workload's budget,

    nice -n 5 python benchmarks/lowrank_quality.py --steps 3000 --lrs 4e-3,8e-3,1.6e-2 \
        --methods adamw,galore,fira,frugal,lisa,lisa_keep --jobs 2 --out-dir /tmp/lq3k

and the defaults, 1,000 steps with the ablations:

    nice -n 5 python benchmarks/lowrank_quality.py --ablations --jobs 2 --out-dir /tmp/lq
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
from optforge.lowrank.projectors import project

METHODS = ("adamw", "galore", "fira", "frugal", "lisa")
LABELS = {"adamw": "AdamW", "galore": "GaLore", "fira": "Fira", "frugal": "FRUGAL",
          "lisa": "LISA"}
PROJECTED = ("galore", "fira", "frugal")
#: Extra rows of the main table, each given the same lr sweep and seeds as the methods:
#: name -> (method, options, label). The first two have an official precedent (docs page);
#: the re-warm-up is ReLoRA's remedy for an optimizer-state reset, applied per layer.
VARIANTS = {
    "galore_rotate": ("galore", {"on_switch": "rotate"}, "GaLore, moments rotated at a switch"),
    "lisa_keep": ("lisa", {"free_state": False}, "LISA, frozen blocks keep their moments"),
    "lisa_rewarm": ("lisa", {"rewarm_steps": 10},
                    "LISA, fresh moments, 10-step re-warm-up (optforge's option)"),
}
SCALE, BATCH = 0.25, 32


#: Single runs outside the equal budget (``--ablations``), each next to AdamW at its protocol
#: lr on the same seeds and steps. GaLore's swept rate is lr·α; the protocol row is
#: lr·α 1.6e-2, T 50, r 16, moments kept, exact SVD, every attention/MLP weight projected.
#: ``row=NAME``: that main-table row's method, options and best swept lr.
ABLATIONS: list[dict] = [
    dict(label="GaLore, lr·α 3.2e-2 (past the grid's edge)", method="galore", lr=0.032,
         seeds=(0,)),
    dict(label="GaLore, T = 200 (the paper's T)", method="galore", lr=0.016, seeds=(0, 1),
         gap=200),
    dict(label="GaLore, r = 32 = d/2 (twice the scripts' r/d)", method="galore", lr=0.016,
         seeds=(0, 1), rank=32),
    dict(label="GaLore, moments reset at a switch", method="galore", lr=0.016, seeds=(0,),
         options={"on_switch": "reset"}),
    dict(label="GaLore, moments reset at a switch, lr·α 8e-3", method="galore", lr=0.008,
         seeds=(0,), options={"on_switch": "reset"}),
    dict(label="GaLore, randomized SVD", method="galore", lr=0.016, seeds=(0,),
         options={"projector": "randomized_svd"}),
    dict(label="GaLore, MLP weights only (attention full AdamW)", method="galore", lr=0.016,
         seeds=(0,), options={"targets": ("fc",)}),
    dict(label="GaLore, share of the gradient kept (probe)", method="galore", lr=0.016,
         seeds=(0,), options={"probe_every": 10}),
    dict(label="AdamW, share of its update in the gradient's top-r subspace (probe)",
         method="adamw", lr=0.008, seeds=(0,), options={"probe_update_every": 10}),
    dict(label="LISA, K = 5", method="lisa", lr=0.004, seeds=(0,), options={"period": 5}),
    dict(label="LISA, K = 100", method="lisa", lr=0.004, seeds=(0,), options={"period": 100}),
    # the workload's 3,000-step budget, main-table rows at their best swept lr (1,000 steps)
    *(dict(label=f"{name}, 3,000 steps", row=name, seeds=(0,), steps=3000)
      for name in ("galore", "galore_rotate")),
    dict(label="lisa_keep, 3,000 steps", row="lisa_keep", seeds=(0, 1, 2), steps=3000),
]


def build(method: str, model: torch.nn.Module, lr: float, base_lr: float, proj_gap: int,
          rank: int = 16, options: dict | None = None) -> torch.optim.Optimizer:
    """``lr`` is the swept rate (projected weights' effective rate for GaLore/Fira);
    ``base_lr`` is AdamW's best rate, used by GaLore/Fira for the non-projected parameters.

    ``options`` (the ablations; empty: the protocol's settings): for GaLore/Fira/FRUGAL
    ``targets`` (module-name patterns of the projected weights, default ``("blocks",)``: every
    attention and MLP ``nn.Linear``) and any projected-group key (``on_switch``,
    ``projector``, ...); for LISA ``n_active``, ``period``, ``free_state``."""
    opts = dict(options or {})
    if method == "adamw":
        if opts:
            raise ValueError(f"adamw takes no options (got {opts})")
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if method == "lisa":
        lisa = dict(n_active=1, period=20, free_state=True) | opts
        inner = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        return LISA(inner, [list(b.parameters()) for b in model.blocks], **lisa)
    proj = dict(target_modules=tuple(opts.pop("targets", ("blocks",))),
                update_proj_gap=proj_gap, **opts)
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
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def train(method: str, lr: float, seed: int, steps: int, eval_every: int, base_lr: float,
          proj_gap: int, rank: int, path: str, options: dict | None = None) -> dict:
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
    build_options = dict(options or {})
    probe_every = build_options.pop("probe_every", 0)  # measures only; the run is unchanged
    update_every = build_options.pop("probe_update_every", 0)  # likewise
    opt = build(method, model, lr, base_lr, proj_gap, rank, build_options)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_warmup_factor(s, steps, 0.05)
    )
    curve, probe, probe_update, start = [], [], [], time.perf_counter()
    block_weights = [m.weight for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = workload.loss(model, workload.train_batch(step, seed, BATCH))
        loss.backward()
        before = [w.detach().clone() for w in block_weights] if (
            update_every and step % update_every == 0) else None
        opt.step()
        sched.step()
        if probe_every and step % probe_every == 0:
            probe.append((step, *captured_energy(opt, rank)))
        if before is not None:
            probe_update.append((step, update_share(block_weights, before, rank)))
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            val = workload.evaluate(model)
            curve.append((step + 1, val if math.isfinite(val) else float("inf")))
    result = {"method": method, "lr": lr, "seed": seed, "steps": steps, "base_lr": base_lr,
              "proj_gap": proj_gap, "rank": rank, "options": options or {}, "curve": curve,
              "final": curve[-1][1], "seconds": time.perf_counter() - start}
    if probe:
        result["probe"] = probe
    if probe_update:
        result["probe_update"] = probe_update
    with open(path + ".tmp", "w") as fh:
        json.dump(result, fh)
    os.replace(path + ".tmp", path)
    print(f"{method} {options or ''} lr={lr:g} seed={seed} steps={steps}: {result['final']:.4f} "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


def captured_energy(opt: torch.optim.Optimizer, rank: int) -> tuple[float, float, float]:
    """Mean over the projected matrices of the share of the gradient's squared norm that
    (1) the basis used at this step keeps, ‖proj(G)‖²/‖G‖² (GaLore discards the rest), and
    (2, 3) the best rank-r and rank-2r subspaces would keep (top singular values' share):
    call after ``opt.step()``, while ``.grad`` still holds this step's gradient."""
    kept, best, best2 = [], [], []
    for group in opt.param_groups:
        for p in group["params"]:
            view = opt.matrix_view(p, group) if p.grad is not None else None
            if view is None:
                continue
            g = p.grad.reshape(view.m, view.n)
            total = float(g.square().sum())
            low = project(g, {"P": opt.state[p]["proj.P"]}, view.side)
            sv2 = torch.linalg.svdvals(g).square()
            kept.append(float(low.square().sum()) / total)
            best.append(float(sv2[:rank].sum()) / total)
            best2.append(float(sv2[: 2 * rank].sum()) / total)
    return tuple(sum(x) / len(x) for x in (kept, best, best2))


def update_share(weights: list[torch.Tensor], before: list[torch.Tensor], rank: int) -> float:
    """Mean over the attention/MLP weights of the share of this step's update ΔW = W − W_before
    that lies in the top-r singular subspace of this step's gradient, on GaLore's "std" side
    (right singular vectors when m ≥ n, else left). GaLore's update lies (almost) all in its
    basis; this measures how much of AdamW's does."""
    shares = []
    for w, w0 in zip(weights, before):
        delta, g = (w.detach() - w0).double(), w.grad.double()
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        inside = delta @ vh[:rank].T if g.shape[0] >= g.shape[1] else u[:, :rank].T @ delta
        shares.append(float(inside.square().sum() / delta.square().sum()))
    return sum(shares) / len(shares)


class Runner:
    """Runs (method, lr, seed) jobs in a process pool, reusing cached results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pool = ProcessPoolExecutor(max_workers=args.jobs)
        os.makedirs(os.path.join(args.out_dir, "runs"), exist_ok=True)

    def submit(self, method: str, lr: float, seed: int, base_lr: float, *,
               steps: int | None = None, gap: int | None = None, rank: int | None = None,
               options: dict | None = None):
        """One run; ``steps``, ``gap``, ``rank`` default to the command line's."""
        a = self.args
        steps = a.steps if steps is None else steps
        rank = a.rank if rank is None else rank
        gap = (a.proj_gap if gap is None else gap) if method in PROJECTED else 0
        name = f"{method}_lr{lr:g}_seed{seed}_steps{steps}"
        name += f"_gap{gap}_base{base_lr:g}" if method in ("galore", "fira") else ""
        name += f"_gap{gap}" if method == "frugal" else ""
        name += f"_r{rank}" if rank != 16 and method in PROJECTED else ""
        for key, value in sorted((options or {}).items()):
            value = "+".join(value) if isinstance(value, (tuple, list)) else value
            name += f"_{key}-{value}"
        path = os.path.join(a.out_dir, "runs", name + ".json")
        return self.pool.submit(train, method, lr, seed, steps, a.eval_every, base_lr, gap,
                                rank, path, options)


def label(name: str) -> str:
    return VARIANTS[name][2] if name in VARIANTS else LABELS[name]


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
        method = VARIANTS[m][0] if m in VARIANTS else m
        rate = "lr·α" if method in ("galore", "fira") else "lr"  # the swept, effective rate
        name = f"{label(m)} ({rate} {entry['best_lr']:g})"
        for a in (ax, axz):
            (line,) = a.plot(steps, mean, label=name)
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
    ax.legend(fontsize=8, loc="upper right")  # empty there; the zoom has no room for it
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sweep_and_rerun(runner: Runner, rows: dict[str, tuple[str, dict]], lrs: list[float],
                    seeds: list[int]) -> dict:
    """The equal protocol for every row ``name -> (method, options)``: the ``lrs`` sweep on
    seed 0, then the best lr on ``seeds``. AdamW first: its best lr is the rate of
    GaLore's/Fira's non-projected parameters."""
    def submit(name: str, lr: float, seed: int, base_lr: float):
        method, options = rows[name]
        return runner.submit(method, lr, seed, base_lr, options=options)

    needs_base = {n for n, (m, _) in rows.items() if m in ("galore", "fira")}
    sweep = {n: [submit(n, lr, 0, 0.0) for lr in lrs] for n in rows if n not in needs_base}
    base_lr = best([f.result() for f in sweep["adamw"]])["lr"] if "adamw" in sweep else 1e-3
    sweep |= {n: [submit(n, lr, 0, base_lr) for lr in lrs] for n in needs_base}
    finals = {}
    for n in rows:
        lr = best([f.result() for f in sweep[n]])["lr"]
        finals[n] = [submit(n, lr, s, base_lr) for s in seeds]
    out = {"base_lr": base_lr, "methods": {}}
    for n in rows:
        runs = [f.result() for f in finals[n]]
        out["methods"][n] = {
            "sweep": {r["lr"]: r["final"] for r in (f.result() for f in sweep[n])},
            "best_lr": runs[0]["lr"], "final_runs": runs,
            "mean_final": sum(r["final"] for r in runs) / len(runs),
        }
    return out


def run_ablations(runner: Runner, base_lr: float, rows: dict[str, tuple[str, dict]],
                  results: dict) -> list[dict]:
    """``ABLATIONS``, each next to AdamW (protocol lr) on the same seeds and steps."""
    jobs = []
    for spec in ABLATIONS:
        if "row" in spec:  # a main-table row at its best lr
            if spec["row"] not in rows:
                continue
            method, options = rows[spec["row"]]
            spec = {**spec, "label": f"{label(spec['row'])}{spec['label'][len(spec['row']):]}",
                    "method": method, "options": options,
                    "lr": results[spec["row"]]["best_lr"]}
        method, lr = spec["method"], spec["lr"]
        kw = {k: spec[k] for k in ("steps", "gap", "rank", "options") if k in spec}
        runs = [runner.submit(method, lr, s, base_lr, **kw) for s in spec["seeds"]]
        refs = [runner.submit("adamw", base_lr, s, 0.0, steps=spec.get("steps"))
                for s in spec["seeds"]]
        jobs.append((spec, runs, refs))
    rows = []
    for spec, runs, refs in jobs:
        runs, refs = [f.result() for f in runs], [f.result() for f in refs]
        rows.append({**spec, "finals": [r["final"] for r in runs],
                     "adamw": [r["final"] for r in refs],
                     "vs_adamw": [r["final"] / a["final"] - 1 for r, a in zip(runs, refs)],
                     "runs": runs})
    return rows


def plot_energy(ablations: list[dict], path: str) -> None:
    """The probe rows: the share of each gradient GaLore's current basis keeps, what the best
    rank-r and rank-2r subspaces of the same gradient hold, and the share of AdamW's update
    inside the gradient's top-r subspace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = [row for row in ablations if "probe" in row["runs"][0]]
    update = [row for row in ablations if "probe_update" in row["runs"][0]]
    if not kept and not update:
        return
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for row in kept:
        steps, share, top, top2 = zip(*row["runs"][0]["probe"])
        r = row["runs"][0]["rank"]
        ax.plot(steps, share, lw=0.8, label=f"gradient kept by GaLore's basis (r = {r})")
        ax.plot(steps, top, "k--", lw=1, label=f"gradient in its best rank-{r} subspace")
        ax.plot(steps, top2, "k:", lw=1, label=f"gradient in its best rank-{2 * r} subspace")
    for row in update:
        steps, share = zip(*row["runs"][0]["probe_update"])
        r = row["runs"][0]["rank"]
        ax.plot(steps, share, lw=0.8, color="tab:red",
                label=f"AdamW's update in the gradient's best rank-{r} subspace")
    ax.set_xlabel("step")
    ax.set_ylabel("share of the squared norm\n(mean over the 8 attention/MLP matrices)")
    ax.set_ylim(0, 1.02)
    ax.set_title("stdlib_lm, seed 0, 1,000 steps: the gradient is low-rank, AdamW's update is not")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--methods", default=",".join((*METHODS, *VARIANTS)),
                        help="rows of the main table: methods and VARIANTS")
    parser.add_argument("--lrs", default="2e-3,4e-3,8e-3,1.6e-2",
                        help="swept rates (GaLore/Fira: lr * scale)")
    parser.add_argument("--final-seeds", default="0,1,2")
    parser.add_argument("--rank", type=int, default=16,
                        help="GaLore/Fira rank; FRUGAL density rank/d")
    parser.add_argument("--proj-gap", type=int, default=50, help="T of GaLore, Fira, FRUGAL")
    parser.add_argument("--ablations", action="store_true",
                        help="also run ABLATIONS (outside the equal budget)")
    parser.add_argument("--jobs", type=int, default=5, help="runs in parallel, 1 thread each")
    parser.add_argument("--out-dir", default="lowrank_quality")
    args = parser.parse_args()
    order = (*METHODS, *VARIANTS)
    names = sorted(args.methods.split(","), key=lambda m: order.index(m) if m in order
                   else len(order))  # the table's order
    rows = {}
    for name in names:
        if name not in order:
            raise ValueError(f"unknown method {name!r}; choose from {order}")
        rows[name] = VARIANTS[name][:2] if name in VARIANTS else (name, {})
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(s) for s in args.final_seeds.split(",")]
    runner = Runner(args)
    result = sweep_and_rerun(runner, rows, lrs, seeds)
    summary = {"steps": args.steps, "seeds": seeds, "lrs": lrs, "base_lr": result["base_lr"],
               "proj_gap": args.proj_gap, "methods": result["methods"]}
    if args.ablations:
        summary["ablations"] = run_ablations(runner, result["base_lr"], rows,
                                             result["methods"])
    runner.pool.shutdown()
    with open(os.path.join(args.out_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    plot(summary, os.path.join(args.out_dir, "curves.png"))
    if args.ablations:
        plot_energy(summary["ablations"], os.path.join(args.out_dir, "galore_energy.png"))

    ref = summary["methods"].get("adamw", {}).get("mean_final")
    print("| method | " + " | ".join(f"{x:g}" for x in lrs) + " | best lr | seeds | vs AdamW |")
    print("|---" * (len(lrs) + 4) + "|")
    for m, e in summary["methods"].items():
        finals_s = " / ".join(f"{r['final']:.3f}" for r in e["final_runs"])
        rel = f"{100 * (e['mean_final'] / ref - 1):+.1f}%" if ref else ""
        print(f"| {label(m)} | " + " | ".join(f"{e['sweep'][x]:.3f}" for x in lrs)
              + f" | {e['best_lr']:g} | {finals_s} (mean {e['mean_final']:.3f}) | {rel} |")
    for row in summary.get("ablations", []):
        finals_s = " / ".join(f"{x:.3f}" for x in row["finals"])
        rel = ", ".join(f"{100 * x:+.1f}%" for x in row["vs_adamw"])
        print(f"| {row['label']} | seeds {row['seeds']} | {row.get('steps', args.steps)} steps"
              f" | {finals_s} | {rel} |")


if __name__ == "__main__":
    main()
