"""The cost of a GradScaler step's unscale on CPU: inside the rule or as a pass of its own.

One optimizer step over 16 fp32 tensors of 512x512 (1 thread) whose gradients are scaled by
2^16, three ways, interleaved round-robin: the unscale inside the rule (``grad_scale`` and
``found_inf`` set on the optimizer, as ``torch.amp.GradScaler.step`` does); an in-place
``torch._foreach_mul_`` (what ``scaler.unscale_`` does) then the plain step; and the plain
step on the same gradients as a floor. Prints min and median per way and their ratios to the
separate pass. Absolute times on a shared machine mean little; the ratios are the result.

    PYTHONPATH=src python benchmarks/grad_scaler_cpu.py AdamW foreach 25
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import optforge.optim as oo


def main(name: str, backend: str, rounds: int) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(512, 512, generator=gen)) for _ in range(16)]
    scaled = [torch.randn(512, 512, generator=gen) * 65536 for _ in range(16)]
    opt = getattr(oo, name)(params, backend=backend, check_finite=False)
    found_inf, scale = torch.zeros(()), torch.tensor(65536.0)

    def in_rule() -> None:
        opt.found_inf, opt.grad_scale = found_inf, scale
        opt.step()
        del opt.found_inf, opt.grad_scale

    def separate_pass() -> None:
        torch._foreach_mul_([p.grad for p in params], 1 / 65536)
        opt.step()

    ways = {"floor (no unscale)": opt.step, "unscale in rule": in_rule,
            "foreach_mul_ + step": separate_pass}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds + 3):  # the first 3 rounds warm up
        for key, fn in ways.items():
            for p, g in zip(params, scaled):
                p.grad = g.clone()
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    base = times["foreach_mul_ + step"][3:]
    for key, values in times.items():
        v = values[3:]
        lo, mid = min(v), statistics.median(v)
        print(f"{name} {backend:8s} {key:20s} min {lo * 1e3:6.1f} ms median {mid * 1e3:6.1f} ms;"
              f" ratio to the separate pass min {lo / min(base):.3f}"
              f" median {mid / statistics.median(base):.3f}")
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
