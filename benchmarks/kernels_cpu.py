"""CPU step time and optimizer-state bytes: optforge's 8-bit AdamW/Lion against torch's AdamW
(fused, foreach) and bitsandbytes' CPU 8-bit optimizers, on the same parameters and gradients.

    PYTHONPATH=src python benchmarks/kernels_cpu.py [--layers 5] [--rounds 7] [--compiled]

The parameters are a transformer's (``--layers`` blocks of width 512 with a 32K-token
embedding: 32.1M parameters in 61 tensors for 5 layers, biases and norms included). Steps run
interleaved round-robin: each round steps every optimizer once, so all rows see the same
machine load, and each row's time is compared with torch fused AdamW's in the same round
(min and median of the per-round ratios). The first step of each optimizer (state creation,
and for optforge the kernel's load) is reported apart, plus the cold build of the CPU 8-bit
kernel (an empty cache, in a subprocess). State bytes are summed from the state tensors
(``step`` counters excluded). Prints markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for st in opt.state.values()
        for k, t in st.items()
        if isinstance(t, torch.Tensor) and k != "step" and not k.startswith("qmap")
    )


def transformer_shapes(layers: int, width: int = 512, vocab: int = 32000) -> list[tuple]:
    shapes: list[tuple] = [(vocab, width)]
    for _ in range(layers):
        shapes += [(3 * width, width), (3 * width,), (width, width), (width,)]
        shapes += [(4 * width, width), (4 * width,), (width, 4 * width), (width,)]
        shapes += [(width,), (width,), (width,), (width,)]  # two layer norms
    return shapes


def cold_build_seconds() -> float | None:
    """Seconds to build the CPU 8-bit kernel with an empty cache (a fresh process)."""
    code = (
        "import time; t = time.perf_counter(); from optforge.kernels import eightbit_cpu as e; "
        "ok = e.available(); print(time.perf_counter() - t if ok else -1)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True)
    try:
        value = float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return value if value >= 0 else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compiled", action="store_true",
                        help="add backend='compiled' rows (inductor; minutes to compile)")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager loop rows")
    parser.add_argument("--no-bnb", action="store_true", help="skip the bitsandbytes rows")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time steps in this thread's CPU time (with OMP_NUM_THREADS=1: "
                             "immune to waiting for a core on a loaded machine)")
    args = parser.parse_args()
    clock = time.thread_time if args.cpu_time else time.perf_counter
    if args.cpu_time and torch.get_num_threads() != 1:
        raise SystemExit("--cpu-time needs one thread (OMP_NUM_THREADS=1)")

    from optforge.optim import AdamW8bit, Lion8bit

    gen = torch.Generator().manual_seed(0)
    shapes = transformer_shapes(args.layers)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    n = sum(p.numel() for p in params)

    makers = {
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, fused=True),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, foreach=True),
        "optforge AdamW8bit (default)": lambda ps: AdamW8bit(ps),
        "optforge AdamW8bit check_finite=False": lambda ps: AdamW8bit(ps, check_finite=False),
        "optforge Lion8bit (default)": lambda ps: Lion8bit(ps),
    }
    if not args.no_eager:
        makers["optforge AdamW8bit backend='loop' (eager)"] = lambda ps: AdamW8bit(
            ps, backend="loop"
        )
    if args.compiled:
        makers["optforge AdamW8bit backend='compiled'"] = lambda ps: AdamW8bit(
            ps, backend="compiled"
        )
    try:
        if args.no_bnb:
            raise ImportError
        import bitsandbytes as bnb

        makers["bitsandbytes AdamW8bit (CPU)"] = lambda ps: bnb.optim.AdamW8bit(ps)
        makers["bitsandbytes Lion8bit (CPU)"] = lambda ps: bnb.optim.Lion8bit(ps)
    except ImportError:
        print("bitsandbytes rows skipped")

    build = cold_build_seconds()
    load_start = os.getloadavg()[0]
    opts, first = {}, {}
    for name, make in makers.items():
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for c, p in zip(copies, params):
            c.grad = p.grad
        opts[name] = make(copies)
        start = time.perf_counter()
        opts[name].step()
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in opts}
    loads = []
    for _ in range(args.rounds):
        for name, opt in opts.items():
            start = clock()
            opt.step()
            times[name].append(clock() - start)
        loads.append(os.getloadavg()[0])

    fused = times["torch AdamW fused"]
    full_state = state_bytes(opts["torch AdamW fused"])
    print(
        f"{n / 1e6:.1f}M fp32 params in {len(shapes)} tensors ({args.layers}-layer width-512 "
        f"transformer, 32K vocabulary); torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {'CPU' if args.cpu_time else 'wall'} time, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; "
        f"{args.rounds} interleaved rounds; load average {load_start:.1f} at the start, "
        f"{min(loads):.1f}-{max(loads):.1f} during the rounds"
    )
    if build is not None:
        print(f"cold build of the CPU 8-bit kernel (empty cache): {build:.1f} s")
    print()
    print(
        "| optimizer | ms/step (median) | × torch fused (min / median of rounds) "
        "| first step (ms) | state bytes/param | state ÷ AdamW |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts in times.items():
        ratios = [t / f for t, f in zip(ts, fused)]
        nbytes = state_bytes(opts[name])
        print(
            f"| {name} | {statistics.median(ts) * 1e3:.1f} | {min(ratios):.2f} / "
            f"{statistics.median(ratios):.2f} | {first[name] * 1e3:.0f} | {nbytes / n:.3f} | "
            f"{full_state / nbytes:.2f} |"
        )


if __name__ == "__main__":
    main()
