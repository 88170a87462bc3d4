"""One step of optforge's GaLoreAdamW against galore-torch's, side by side, on the same
LLaMA-shaped linear stack (benchmarks/lowrank_memory.py's), official settings
(proj_type="std", scale 0.25). Refresh steps (an SVD per matrix) and ordinary steps are timed
apart; the two optimizers alternate step by step, so machine load hits both alike. Reported:
min and median seconds per step, the ratios galore-torch / optforge (> 1: optforge faster) and
the load average.

    nice -n 10 python benchmarks/lowrank_speed.py --dim 512 --layers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch

from lowrank_memory import llama_stack  # noqa: E402  (benchmarks/ is the working directory)
from optforge.lowrank import GaLoreAdamW


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--gap", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-check-finite", action="store_true",
                        help="skip optforge's gradient finiteness check (galore-torch has none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import galore_torch

    rank = args.dim // 4
    group = {"rank": rank, "update_proj_gap": args.gap, "scale": 0.25, "proj_type": "std"}
    models = [llama_stack(args.dim, args.layers) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ours = GaLoreAdamW(models[0].parameters(), lr=1e-3, check_finite=not args.no_check_finite,
                       **group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = galore_torch.GaLoreAdamW([{"params": list(models[1].parameters()), **group}],
                                          lr=1e-3)  # fmt: skip
    whos, kinds = ("optforge", "galore-torch"), ("refresh", "ordinary")
    times: dict = {(who, kind): [] for who in whos for kind in kinds}
    gen = torch.Generator().manual_seed(0)
    for step in range(args.rounds * args.gap):
        grads = [torch.randn(p.shape, generator=gen) for p in models[0].parameters()]
        kind = "refresh" if step % args.gap == 0 else "ordinary"
        for who, opt, model in (("optforge", ours, models[0]), ("galore-torch", theirs, models[1])):
            for p, g in zip(model.parameters(), grads):
                p.grad = g
            start = time.perf_counter()
            opt.step()
            times[(who, kind)].append(time.perf_counter() - start)
    print(f"| step kind | optforge s (min / median) | galore-torch s (min / median) "
          f"| galore-torch/optforge (min / median) |  (d={args.dim}, load average "
          f"{os.getloadavg()[0]:.1f})")  # fmt: skip
    for kind in ("refresh", "ordinary"):
        ours_t, theirs_t = times[("optforge", kind)], times[("galore-torch", kind)]
        a = (min(ours_t), statistics.median(ours_t))
        b = (min(theirs_t), statistics.median(theirs_t))
        print(f"| {kind} | {a[0]:.4f} / {a[1]:.4f} | {b[0]:.4f} / {b[1]:.4f} "
              f"| {b[0] / a[0]:.2f} / {b[1] / a[1]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
