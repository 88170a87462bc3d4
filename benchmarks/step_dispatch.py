"""Lion's default construction against torch AdamW(fused=True) and lion-pytorch, per byte.

Two parameter lists: (a) 31.0M fp32 parameters in 53 tensors (test_optim_step.py's shapes) and
(b) a transformer-shaped list, 9.3M parameters in 308 tensors (d=192, 19 layers, separate
q/k/v/o projections: 194 of the tensors are biases and norms of 192-768 elements). Every case
steps the same tensors once per round, round-robin in an order that rotates every round, so
background load lands on all alike and no case always runs right after the same other case.

``optforge Lion, default`` is ``Lion(params)`` with no flags (here ``weight_decay=0.1``, as
lion-pytorch's case). On fp32 CPU tensors its ``auto`` backend runs the C loop of
``kernels/exact_cpu.c`` from the first step, and the gradient check (``check_finite=True``) is
that library's one-call exponent test: no compile. Where no C compiler exists ``auto`` runs two
tiers: the eager tiled ``foreach`` path until the list has spent ``AUTO_COMPILE_AFTER_S``
seconds (30 by default) there, then compiled graphs with the same bits; both are timed too
("no C compiler" rows: the library switched off around each step, the tier forced by setting
that threshold). ``--first-step`` measures first steps in fresh processes, cold (empty C-library
and inductor caches: the C build or the compile is in the figure) and warm (the caches a cold
run left). Progress goes to stderr.

Bytes per parameter and step: Lion 20 (reads p, m, g; writes p, m), AdamW 28 (p, m, v, g; p, m,
v). ``x fused AdamW B/s`` = (20 / t_case) / (28 / t_fused_adamw), the issue's measure. The
gradient check reads every gradient once more (4 B/param): not counted in Lion's 20.

    python benchmarks/step_dispatch.py --rounds 10 --lists ab --threads 1 --first-step ab
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import torch

SHAPES_A = [(1024, 1024)] * 24 + [(1024,)] * 24 + [(4096, 1024)] + [(512, 768)] * 4


def transformer_shapes(d: int = 192, layers: int = 19, vocab: int = 4096, ctx: int = 512):
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,)]  # attention norm
        shapes += [(d, d), (d,)] * 4  # q, k, v, o and their biases
        shapes += [(d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]  # MLP norm, MLP
    return shapes + [(d,), (d,)]  # final norm


SHAPES_B = transformer_shapes()
LISTS = {
    "a": ("(a) 31.0M params, 53 tensors", SHAPES_A),
    "b": ("(b) transformer, 9.3M params, 308 tensors", SHAPES_B),
}
BYTES = {"lion": 20, "adamw": 28}


def make_params(shapes) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    return params


@contextlib.contextmanager
def without_c(threshold: float) -> Iterator[None]:
    """As on a machine without a C compiler (the C library off), ``auto``'s switch threshold
    set to ``threshold``."""
    from optforge.kernels import cbuild, dispatch, exact_cpu

    exact_cpu._load()
    source = exact_cpu._SOURCE
    saved = dispatch.AUTO_COMPILE_AFTER_S, cbuild._LOADED[source]
    dispatch.AUTO_COMPILE_AFTER_S, cbuild._LOADED[source] = threshold, None
    try:
        yield
    finally:
        dispatch.AUTO_COMPILE_AFTER_S, cbuild._LOADED[source] = saved


class WithoutC:
    """An optimizer whose steps run as without a C compiler, at switch threshold ``threshold``."""

    def __init__(self, opt: torch.optim.Optimizer, threshold: float) -> None:
        self.opt, self.threshold = opt, threshold

    def step(self) -> None:
        with without_c(self.threshold):
            self.opt.step()


def cases() -> dict[str, tuple[str, Callable[[list], object]]]:
    from optforge.optim import AdamW, Lion

    out: dict[str, tuple[str, Callable[[list], object]]] = {
        "torch AdamW fused": ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)),
    }
    try:
        import lion_pytorch

        out["lion-pytorch Lion"] = (
            "lion",
            lambda p: lion_pytorch.Lion(p, lr=1e-4, weight_decay=0.1),
        )
    except ImportError:
        print("lion-pytorch is not installed: skipped")
    inf = float("inf")
    out.update(
        {
            "optforge Lion, default (C loop from step 1)": (
                "lion",
                lambda p: Lion(p, weight_decay=0.1),
            ),
            "optforge Lion, default, check_finite=False": (
                "lion",
                lambda p: Lion(p, weight_decay=0.1, check_finite=False),
            ),
            "optforge AdamW, default (C loop)": ("adamw", lambda p: AdamW(p, lr=1e-3)),
            "optforge Lion, fused=True (compiled update, C check)": (
                "lion",
                lambda p: Lion(p, weight_decay=0.1, fused=True),
            ),
            "no C compiler: Lion default, eager tier (first 30 s)": (
                "lion",
                lambda p: WithoutC(Lion(p, weight_decay=0.1), inf),
            ),
            "no C compiler: Lion default, after the switch": (
                "lion",
                lambda p: WithoutC(Lion(p, weight_decay=0.1), 0.0),
            ),
        }
    )
    return out


def steady(which: str, rounds: int) -> None:
    title, shapes = LISTS[which]
    load_start = os.getloadavg()[0]
    params = make_params(shapes)
    numel = sum(p.numel() for p in params)
    opts, kinds = {}, {}
    for name, (kind, factory) in cases().items():
        opts[name], kinds[name] = factory(params), kind
        start = time.perf_counter()
        opts[name].step()  # state allocation and compilation, untimed
        print(f"  first step of {name}: {time.perf_counter() - start:.2f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in opts}
    names = list(opts)
    for r in range(rounds):
        print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        # The order rotates every round, so that each case follows every other equally often:
        # a step runs slower right after one that churns memory (lion-pytorch's temporaries
        # cost the next step ~1.5 ms of 7 on list (b) at 2 threads).
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            opts[name].step()
            times[name].append(time.perf_counter() - start)
    ref = "torch AdamW fused"
    ref_min, ref_med = min(times[ref]), statistics.median(times[ref])
    lp = "lion-pytorch Lion"
    print(
        f"\n{title}, torch threads {torch.get_num_threads()}, {rounds} interleaved rounds, "
        f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n"
    )
    print(
        "| step | min ms | median ms | x fused AdamW B/s (min / median) "
        "| x lion-pytorch speed (min / median) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        t_min, t_med = min(ts), statistics.median(ts)
        b = BYTES[kinds[name]] / BYTES["adamw"]
        vs_adamw = f"{b * ref_min / t_min:.2f} / {b * ref_med / t_med:.2f}"
        vs_lp = (
            f"{min(times[lp]) / t_min:.2f} / {statistics.median(times[lp]) / t_med:.2f}"
            if lp in times
            else "-"
        )
        print(f"| {name} | {t_min * 1e3:.1f} | {t_med * 1e3:.1f} | {vs_adamw} | {vs_lp} |")
    print(
        f"\n{numel / 1e6:.1f}M parameters; Lion {BYTES['lion']} B/param, AdamW "
        f"{BYTES['adamw']} B/param",
        flush=True,
    )


FIRST_STEP = {
    "torch AdamW fused": "torch.optim.AdamW(p, lr=1e-3, fused=True)",
    "lion-pytorch Lion": "__import__('lion_pytorch').Lion(p, lr=1e-4, weight_decay=0.1)",
    "optforge Lion, default (cold: builds the C library)": "Lion(p, weight_decay=0.1)",
    "optforge AdamW, default (cold: builds the C library)": "AdamW(p, lr=1e-3)",
    "no C compiler: Lion default, first step (eager tier)": "EAGER",
    "no C compiler: Lion default, the step that switches (compiles)": "SWITCH",
}


def first_step_child(which: str, name: str, threads: str) -> None:
    from optforge.optim import AdamW, Lion

    torch.set_num_threads(int(threads))
    params = make_params(LISTS[which][1])
    expr = FIRST_STEP[name]
    if expr == "SWITCH":  # auto's switch step: the first step after the threshold is reached
        opt = WithoutC(Lion(params, weight_decay=0.1), 0.0)
    elif expr == "EAGER":  # the default's first steps, whatever the load (no switch yet)
        opt = WithoutC(Lion(params, weight_decay=0.1), float("inf"))
    else:
        opt = eval(expr, {"torch": torch, "Lion": Lion, "AdamW": AdamW, "p": params})
    start = time.perf_counter()
    opt.step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    opt.step()
    print(json.dumps({"first": first, "second": time.perf_counter() - start}))


def first_step(which: str, threads: int) -> None:
    print(
        f"\nFirst step, {LISTS[which][0]}, {threads} threads (fresh process each; cold = empty "
        "TORCHINDUCTOR_CACHE_DIR and C-library cache (XDG_CACHE_HOME), warm = the caches a "
        "cold run left)\n"
    )
    print(
        "| path | first step, cold cache s | first step, warm cache s | load average after "
        "| second step ms (warm run) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name in FIRST_STEP:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "XDG_CACHE_HOME": cache}
            runs = []
            for _ in ("cold", "warm"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", which, name, str(threads)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode:
                    print(out.stderr[-2000:])
                    raise SystemExit(f"{name} failed")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(
            f"| {name} | {runs[0]['first']:.2f} | {runs[1]['first']:.2f} | "
            f"{os.getloadavg()[0]:.1f} | "
            f"{runs[1]['second'] * 1e3:.1f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--lists", default="ab", help="which lists: a, b or ab")
    parser.add_argument("--first-step", default="", help="lists whose first steps to time")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; 1 keeps OpenMP waits for descheduled threads out "
                        "of the figures on a loaded machine")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        first_step_child(*args.child)
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    for which in args.lists:
        steady(which, args.rounds)
    for which in args.first_step:
        first_step(which, args.threads)


if __name__ == "__main__":
    main()
