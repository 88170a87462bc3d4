"""ZO2-style offload against resident MeZO: peak accelerator memory and throughput by model size.

The model is a stack of pre-norm residual MLP blocks (width W, hidden 4W) between an input and
an output projection, every module a block of ``ZO2Offload``. For each size, two copies with
the same weights train side by side on the same batches: resident MeZO (the whole model on
``--device``) and ``ZO2Offload`` (blocks resting on the CPU, visiting ``--device`` one at a
time). Steps alternate round-robin between the two, so both see the same machine load;
reported are the min and median of offload time / resident time per step, the peak memory
allocated on the device (CUDA only), and whether the two ended with identical weights.

    python benchmarks/zo_offload.py --device cuda --widths 1024,2048,4096 --depth 16
    python benchmarks/zo_offload.py --device cpu   # the CPU path: no transfers, no memory column

On the CPU the engine runs with ``device=None`` (nothing moves), so only the schedule's
overhead and the trajectory (bitwise equal to MeZO's) are measured.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from optforge.zo import MeZO, ZO2Offload


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


def build(width: int, depth: int, features: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, width), *[Block(width) for _ in range(depth)],
                         nn.Linear(width, features))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(width: int, depth: int, args, device: torch.device) -> dict:
    base = build(width, depth, args.features, args.seed)
    params = sum(p.numel() for p in base.parameters())
    resident = copy.deepcopy(base).to(device)
    offloaded = copy.deepcopy(base)  # rests on the CPU; the engine moves blocks
    opt_r = MeZO(resident.parameters(), lr=args.lr, seed=args.seed)
    opt_o = MeZO(offloaded.parameters(), lr=args.lr, seed=args.seed)
    engine = ZO2Offload(opt_o, list(offloaded), device=None if device.type == "cpu" else device)
    gen = torch.Generator().manual_seed(args.seed)
    times: dict[str, list[float]] = {"resident": [], "offload": []}
    peaks: dict[str, int] = {}
    for step in range(args.steps):
        x = torch.randn(args.batch, args.features, generator=gen).to(device)
        y = torch.randn(args.batch, args.features, generator=gen).to(device)
        for mode in ("resident", "offload") if step % 2 == 0 else ("offload", "resident"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            if mode == "resident":
                opt_r.step(lambda x=x, y=y: nn.functional.mse_loss(resident(x), y))
            else:
                engine.step(offloaded, x, lambda out, y=y: nn.functional.mse_loss(out, y))
            sync(device)
            if step:  # the first step warms up (allocations, state creation)
                times[mode].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[mode] = max(peaks.get(mode, 0), torch.cuda.max_memory_allocated(device))
    engine.remove()
    same = all(torch.equal(a.detach().cpu(), b.detach().cpu())
               for a, b in zip(resident.parameters(), offloaded.parameters()))
    ratios = [o / r for o, r in zip(times["offload"], times["resident"])]
    return {"width": width, "depth": depth, "params": params,
            "resident_s": statistics.median(times["resident"]),
            "ratio_min": min(ratios), "ratio_median": statistics.median(ratios),
            "peak_resident_mib": peaks.get("resident", 0) / 2**20,
            "peak_offload_mib": peaks.get("offload", 0) / 2**20, "identical": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (the first step is a warm-up)")
    device = torch.device(args.device)
    print(f"device {device}, depth {args.depth}, batch {args.batch}, {args.steps - 1} timed "
          "steps per mode, interleaved")
    print("| params | resident s/step | offload / resident time (min, median) | "
          "peak device MiB resident | peak device MiB offload | identical weights |")
    print("|---|---|---|---|---|---|")
    for width in (int(w) for w in args.widths.split(",")):
        r = measure(width, args.depth, args, device)
        mem = (f"{r['peak_resident_mib']:.0f} | {r['peak_offload_mib']:.0f}"
               if device.type == "cuda" else "n/a (CPU) | n/a (CPU)")
        print(f"| {r['params'] / 1e6:.2f}M | {r['resident_s']:.4f} | {r['ratio_min']:.2f}, "
              f"{r['ratio_median']:.2f} | {mem} | {'yes' if r['identical'] else 'no'} |",
              flush=True)


if __name__ == "__main__":
    main()
