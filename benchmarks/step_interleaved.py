"""The cases of test_optim_step.py timed round-robin: each round steps every optimizer once.

Sequential pytest-benchmark runs time one case after another, so background load that comes
and goes lands on some cases and not others (on a shared 2-core machine the same case moved by
2x between runs). Interleaving puts every case under the same conditions; the minimum over
rounds is the figure least disturbed by interference.

    python benchmarks/step_interleaved.py --rounds 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from test_optim_step import CASES, NUMEL, SHAPES, make_params

PEERS = ("lion-pytorch Lion", "torch AdamW fused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    params = make_params()
    optimizers = {}
    for name, factory in CASES.items():
        try:
            optimizers[name] = factory(params)
        except BaseException as exc:  # pytest.skip when a peer package is missing
            print(f"skipping {name}: {exc}")
            continue
        optimizers[name].step()  # state allocation and compilation, untimed
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(args.rounds):
        for name, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    best = {name: min(ts) for name, ts in times.items()}
    print(f"{NUMEL / 1e6:.1f}M parameters in {len(SHAPES)} tensors, torch threads "
          f"{torch.get_num_threads()}, {args.rounds} interleaved rounds\n")
    peers = " | ".join(f"vs {p}" for p in PEERS)
    print(f"| optimizer step | min ms | median ms | Mparams/s (min) | {peers} |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts in times.items():
        ratios = " | ".join(f"{best[p] / best[name]:.2f}x" if p in best else "-" for p in PEERS)
        print(f"| {name} | {best[name] * 1e3:.1f} | {statistics.median(ts) * 1e3:.1f} | "
              f"{NUMEL / best[name] / 1e6:.0f} | {ratios} |")


if __name__ == "__main__":
    main()
