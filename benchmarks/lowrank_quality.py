"""Quality at equal steps on the harness's ``stdlib_lm``: AdamW, GaLore, Fira, FRUGAL, LISA.

Each method trains the same model (seed 0, batch 32, the same batches) for ``--steps`` steps
with linear warm-up (5%) and cosine decay, and reports the validation cross-entropy every
``--eval-every`` steps. GaLore/Fira/FRUGAL project the Transformer blocks' linear weights
(qkv, proj, fc1, fc2; rank d/4 = 16 for d = 64); embeddings, LayerNorms, biases and the head are
plain AdamW. LISA trains 1 of the 2 blocks per 20-step period (embeddings and head always).

    nice -n 10 python benchmarks/lowrank_quality.py --steps 600 --out /tmp/lowrank_quality.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from optforge.bench.submission import cosine_warmup_factor
from optforge.bench.workloads.stdlib_lm import StdlibCharLM
from optforge.lowrank import FRUGAL, LISA, FiraAdamW, GaLoreAdamW, galore_param_groups


def build(method: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    wd = 0.0
    proj = dict(target_modules=("blocks",), update_proj_gap=200)
    if method == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=wd)
    if method == "galore":  # official script: lr 0.01, scale 0.25
        return GaLoreAdamW(galore_param_groups(model, rank=16, scale=0.25, **proj), lr=1e-2)
    if method == "fira":  # official script: lr 0.01, scale 0.25
        return FiraAdamW(galore_param_groups(model, rank=16, scale=0.25, **proj), lr=1e-2)
    if method == "frugal":  # density 0.25 = rank 16 of 64, sign-SGD on the rest
        groups = galore_param_groups(model, rank=None, density=0.25, **proj)
        return FRUGAL(groups, lr=3e-3, weight_decay=wd)
    if method == "lisa":
        inner = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=wd)
        layers = [list(b.parameters()) for b in model.blocks]
        return LISA(inner, layers, n_active=1, period=20)
    raise ValueError(method)


def train(method: str, steps: int, eval_every: int) -> dict:
    workload = StdlibCharLM()
    model = workload.init_model(0)
    opt = build(method, model)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_warmup_factor(s, steps, 0.05)
    )
    curve, start = [], time.perf_counter()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        workload.loss(model, workload.train_batch(step, 0, 32)).backward()
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append((step + 1, workload.evaluate(model)))
            print(method, *curve[-1], flush=True)
    return {"curve": curve, "final": curve[-1][1], "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--methods", default="adamw,galore,fira,frugal,lisa")
    parser.add_argument("--out", default="lowrank_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {m: train(m, args.steps, args.eval_every) for m in args.methods.split(",")}
    ref = results.get("adamw", {}).get("final")
    for m, r in results.items():
        rel = f"{100 * (r['final'] / ref - 1):+.1f}%" if ref else ""
        print(f"| {m} | {r['final']:.4f} | {rel} | {r['seconds']:.0f} s |")
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
