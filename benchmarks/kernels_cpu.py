"""CPU step time and optimizer-state bytes: optforge's 8-bit AdamW/Lion against torch's AdamW
(fused, foreach, for-loop) and bitsandbytes' CPU 8-bit optimizers, side by side in one run.

    PYTHONPATH=src python benchmarks/kernels_cpu.py [--tensors 16] [--side 512] [--repeats 5]

State bytes are summed from the state tensors after a step (``step`` counters excluded).
Times: median of ``--repeats`` steps after two warm-up steps (the compiled rows compile in the
first), on the same parameters and gradients. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for st in opt.state.values()
        for k, t in st.items()
        if isinstance(t, torch.Tensor) and k != "step" and not k.startswith("qmap")
    )


def time_steps(opt: torch.optim.Optimizer, repeats: int) -> list[float]:
    opt.step()
    opt.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from optforge.optim import AdamW8bit, Lion8bit

    gen = torch.Generator().manual_seed(0)
    shape = (args.side, args.side)
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for _ in range(args.tensors)]
    for p in params:
        p.grad = torch.randn(shape, generator=gen) * 1e-2
    n = sum(p.numel() for p in params)

    makers = {
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, fused=True),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, foreach=True),
        "torch AdamW for-loop": lambda ps: torch.optim.AdamW(ps, foreach=False),
        "optforge AdamW8bit": lambda ps: AdamW8bit(ps, check_finite=False),
        "optforge AdamW8bit compiled": lambda ps: AdamW8bit(
            ps, check_finite=False, backend="compiled"
        ),
        "optforge Lion8bit": lambda ps: Lion8bit(ps, check_finite=False),
        "optforge Lion8bit compiled": lambda ps: Lion8bit(
            ps, check_finite=False, backend="compiled"
        ),
    }
    try:
        import bitsandbytes as bnb

        makers["bitsandbytes AdamW8bit"] = lambda ps: bnb.optim.AdamW8bit(ps)
        makers["bitsandbytes Lion8bit"] = lambda ps: bnb.optim.Lion8bit(ps)
    except ImportError:
        print("bitsandbytes not installed: its rows are skipped")

    rows = []
    for name, make in makers.items():
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for c, p in zip(copies, params):
            c.grad = p.grad
        opt = make(copies)
        times = time_steps(opt, args.repeats)
        rows.append((name, statistics.median(times) * 1e3, min(times) * 1e3, state_bytes(opt)))

    fused = rows[0][1]
    full_state = rows[0][3]
    print(
        f"{n / 1e6:.1f}M fp32 params in {args.tensors} tensors of {shape}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print()
    print(
        "| optimizer | ms/step (median) | min | × torch fused | state bytes/param "
        "| state ÷ AdamW |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, med, low, nbytes in rows:
        print(
            f"| {name} | {med:.1f} | {low:.1f} | {med / fused:.2f} | {nbytes / n:.3f} | "
            f"{full_state / nbytes:.2f} |"
        )


if __name__ == "__main__":
    main()
