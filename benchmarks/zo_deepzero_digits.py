"""DeepZero's CGE against randomized estimation (RGE) at an equal forward-pass budget.

The harness's image data (scikit-learn's 8x8 digits, the ``digits_cnn`` split) and a small
conv net as an ``nn.Sequential`` (conv 1->4, ReLU, max-pool, linear 64->10: 690 parameters),
trained from scratch from function values only. Every method gets the same budget of
forwards of a training batch (a CGE tail forward counts as a full one):

* CGE: ``DeepZero.step_sequential`` (d + 1 forwards per step, feature reuse + vmap),
  SGD lr 0.1, momentum 0.9 (DeepZero's defaults).
* CGE sparse: the same with ZO-GraSP keep ratios at 50% sparsity.
* RGE q=d: ``MeZO(formula="forward", n_directions=d)``, same steps as CGE.
* RGE q=8: 8 directions per step, many more steps.
  RGE step sizes follow MeZO's stable-step rule η_ZO = q/(d+q−1)·η_SGD with η_SGD = 0.1.

    nice python benchmarks/zo_deepzero_digits.py --budget 30000

Needs scikit-learn (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from optforge.bench.workloads.digits import _load
from optforge.zo import DeepZero, MeZO, zo_grasp_keep_ratios


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=30000, help="forwards per method")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = _load()
    xt, yt, xv, yv = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
    d = sum(p.numel() for p in net().parameters())
    ce = nn.functional.cross_entropy

    def batches(seed):
        gen = torch.Generator().manual_seed(seed)
        while True:
            idx = torch.randint(0, len(yt), (args.batch,), generator=gen)
            yield xt[idx], yt[idx]

    def acc(model):
        with torch.no_grad():
            return float((model(xv).argmax(1) == yv).float().mean())

    rows = []
    for name in ("CGE", "CGE sparse 50%", "RGE q=d", "RGE q=8"):
        model = net()
        stream = batches(1)
        used, start = 0, time.perf_counter()
        if name.startswith("CGE"):
            groups = list(model.parameters())
            if "sparse" in name:
                x0, y0 = next(stream)
                ratios = zo_grasp_keep_ratios(lambda m=model, x=x0, y=y0: ce(m(x), y), groups,
                                              0.5, q=64)
                used += 2 * (64 + 1)
                opt = DeepZero([{"params": [p], "keep_ratio": r} for p, r in
                                zip(groups, ratios)], lr=0.1, mask_interval=5)
                per_step = 1 + sum(round(r * p.numel()) for r, p in zip(ratios, groups))
            else:
                opt = DeepZero(groups, lr=0.1)
                per_step = d + 1
            while used + per_step <= args.budget:
                x, y = next(stream)
                opt.step_sequential(model, x, lambda out, y=y: ce(out, y))
                used += per_step
        else:
            q = d if "q=d" in name else 8
            opt = MeZO(model.parameters(), lr=0.1 * q / (d + q - 1), eps=5e-3, n_directions=q,
                       formula="forward", momentum=0.9, seed=1)
            while used + q + 1 <= args.budget:
                x, y = next(stream)
                opt.step(lambda m=model, x=x, y=y: ce(m(x), y))
                used += q + 1
        rows.append((name, used, time.perf_counter() - start, acc(model)))
        print(rows[-1], flush=True)
    print(f"digits, {d} parameters, batch {args.batch}, budget {args.budget} forwards")
    print("| method | forwards | seconds | val accuracy |")
    print("|---|---|---|---|")
    for name, used, secs, a in rows:
        print(f"| {name} | {used} | {secs:.0f} | {a:.3f} |")


if __name__ == "__main__":
    main()
