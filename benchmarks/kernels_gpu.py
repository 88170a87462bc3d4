"""GPU throughput of optforge's Triton kernels against the GPU's copy bandwidth and named peers,
measured side by side in one run (docs/benchmarks.md, "Fused update kernels").

    PYTHONPATH=src python benchmarks/kernels_gpu.py [--params 100e6] [--out results.json]
    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/kernels_gpu.py --dry-run

``--dry-run`` runs every row on CPU tensors under the Triton interpreter with tiny sizes and a
wall-clock timer: a check of the script's own logic before a GPU session spends time on it
(its numbers mean nothing).

Needs CUDA and Triton; lion-pytorch and bitsandbytes rows appear when installed. For each case:
a correctness check against the loop reference on a small list (few-ulp tolerance: compiled
``tl.sqrt`` and division are approximate), then ``triton.testing.do_bench`` (median, L2 flushed
between runs) of one step; effective bandwidth = useful bytes per parameter x parameters / time,
reported as a fraction of the device-to-device copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

#: "cuda", or "cpu" for --dry-run
DEVICE = "cuda"

BYTES = {"adamw": 28, "adam_inner": 24, "lion": 20, "sgd": 20, "lamb": 40, "adamw8bit": 16.0625}


def bench(fn) -> float:
    """Median seconds of one call."""
    if DEVICE == "cpu":
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e-3  # seconds


def copy_bandwidth(n_bytes: int = 1 << 30) -> float:
    src = torch.empty(n_bytes // 4, device=DEVICE)
    dst = torch.empty_like(src)
    return 2 * n_bytes / bench(lambda: dst.copy_(src))


def tensors(n: int, count: int, dtype=torch.float32, positive: bool = False) -> list:
    per = n // count
    make = torch.rand if positive else torch.randn
    return [(make(per, device=DEVICE) * (1e-3 if not positive else 1e-6)).to(dtype)
            for _ in range(count)]  # fmt: skip


def check(name: str, rule, lists, hyper, kernel) -> None:
    """The kernel against the loop reference on the same (small) inputs."""
    from optforge.kernels import apply_rule_

    ref = [[t.clone() for t in lst] for lst in lists]
    kernel(lists, hyper)
    apply_rule_(rule, ref, hyper, backend="loop")
    for got, want in zip(lists[0], ref[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"{name} vs loop")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=float, default=100e6)
    parser.add_argument("--out", default=None)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU tensors under TRITON_INTERPRET=1, tiny sizes: checks the script")
    args = parser.parse_args()
    global DEVICE
    if args.dry_run:
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--dry-run needs TRITON_INTERPRET=1 in the environment")
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("kernels_gpu.py needs a CUDA device (or --dry-run)")

    from optforge.kernels.triton import register
    from optforge.kernels.triton.adam import adam_inner_, adamw_
    from optforge.kernels.triton.lamb import lamb_
    from optforge.kernels.triton.lion import lion_
    from optforge.kernels.triton.sgd import sgd_momentum_
    from optforge.optim.adamw import adam_inner_rule, adamw_rule
    from optforge.optim.lamb import lamb_rule
    from optforge.optim.lion import lion_rule

    register((DEVICE,))
    n = 20_000 if args.dry_run else int(args.params)
    n_small, small_size = (20, 1000) if args.dry_run else (500, 16384)
    gpu = "dry run on CPU" if args.dry_run else torch.cuda.get_device_name()
    copy = copy_bandwidth(1 << 20 if args.dry_run else 1 << 30)
    adam_h = dict(lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                  maximize=False, bias_correction1=0.5, bias_correction2=0.1)  # fmt: skip
    lion_h = dict(lr=1e-5, beta1=0.9, beta2=0.99, weight_decay=0.1, maximize=False)
    lamb_h = dict(adam_h, grad_scale=1.0, adapt=True, max_weight_norm=None,
                  max_trust_ratio=None)  # fmt: skip
    sgd_h = dict(lr=1e-4, weight_decay=0.0, maximize=False, momentum=0.9, dampening=0.0,
                 nesterov=False)  # fmt: skip

    def adam_lists(total: int, count: int, dtype=torch.float32):
        return [tensors(total, count, dtype), tensors(total, count), tensors(total, count,
                positive=True), tensors(total, count, dtype)]  # fmt: skip

    small = 2_003 if args.dry_run else 10_007
    check("adamw", adamw_rule, adam_lists(small, 3), adam_h, adamw_)
    check("lion", lion_rule, [tensors(small, 3) for _ in range(3)], lion_h, lion_)
    check("lamb", lamb_rule, adam_lists(small, 3), lamb_h, lamb_)
    # the low-rank inner Adam: (update, m, v, projected gradient), Adam's direction only
    inner_h = {k: adam_h[k] for k in ("beta1", "beta2", "eps", "bias_correction1",
                                      "bias_correction2")}  # fmt: skip
    check("adam_inner", adam_inner_rule, adam_lists(small, 3), inner_h, adam_inner_)

    rows = []

    def row(case: str, kind: str, seconds: float, bytes_per_param: float, params: int) -> None:
        bw = bytes_per_param * params / seconds
        rows.append(dict(case=case, impl=kind, ms=seconds * 1e3, gbps=bw / 1e9,
                         frac_copy=bw / copy, gparams=params / seconds / 1e9))  # fmt: skip

    for case, count in (("AdamW fp32, 10 tensors", 10), ("AdamW fp32, many small", n_small)):
        total = n if count == 10 else n_small * small_size
        lists = adam_lists(total, count)
        row(case, "optforge triton", bench(lambda lists=lists: adamw_(lists, adam_h)), 28, total)
        params = [torch.nn.Parameter(t) for t in lists[0]]
        for p, g in zip(params, lists[3]):
            p.grad = g
        for label, kw in (("torch fused", {"fused": True}), ("torch foreach", {"foreach": True})):
            opt = torch.optim.AdamW(params, lr=1e-4, **kw)
            opt.step()
            row(case, label, bench(opt.step), 28, total)
        del params, opt

    lists = [tensors(n, 10) for _ in range(3)]
    row("Lion fp32", "optforge triton", bench(lambda: lion_(lists, lion_h)), 20, n)
    try:
        from lion_pytorch import Lion as LionPytorch

        params = [torch.nn.Parameter(t) for t in lists[0]]
        for p, g in zip(params, lists[2]):
            p.grad = g
        variants = [("lion-pytorch foreach", False)]
        if not args.dry_run:  # its Triton kernel asserts CUDA
            variants.append(("lion-pytorch triton", True))
        for label, triton_flag in variants:
            opt = LionPytorch(params, lr=1e-5, use_triton=triton_flag)
            opt.step()
            row("Lion fp32", label, bench(opt.step), 20, n)
        del params, opt
    except ImportError:
        print("lion-pytorch not installed: its rows are skipped")
    row("SGD momentum fp32", "optforge triton",
        bench(lambda: sgd_momentum_(lists, sgd_h)), 20, n)  # fmt: skip
    # optforge.optim.SGD (auto: the kernel above, through the class) against torch's SGD
    from optforge.optim import SGD

    params = [torch.nn.Parameter(t) for t in lists[0]]
    for p, g in zip(params, lists[2]):
        p.grad = g
    for label, make in (
        ("optforge.optim.SGD", lambda: SGD(params, lr=1e-4, momentum=0.9, check_finite=False)),
        ("torch fused", lambda: torch.optim.SGD(params, lr=1e-4, momentum=0.9, fused=True)),
        ("torch foreach", lambda: torch.optim.SGD(params, lr=1e-4, momentum=0.9, foreach=True)),
    ):
        opt = make()
        opt.step()
        row("SGD momentum fp32, class", label, bench(opt.step), 20, n)
    del params, opt
    lists = adam_lists(n, 10)
    row("Adam inner (low-rank) fp32", "optforge triton",
        bench(lambda: adam_inner_(lists, inner_h)), BYTES["adam_inner"], n)  # fmt: skip
    row("LAMB fp32", "optforge triton", bench(lambda: lamb_(lists, lamb_h)), 40, n)
    from optforge.optim import AdamW8bit

    params = [torch.nn.Parameter(t) for t in tensors(n, 10)]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = AdamW8bit(params, check_finite=False)  # no host sync
    opt.step()
    row("AdamW 8-bit fp32 p/g", "optforge triton", bench(opt.step), BYTES["adamw8bit"], n)
    try:
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params)
        opt.step()
        row("AdamW 8-bit fp32 p/g", "bitsandbytes", bench(opt.step), BYTES["adamw8bit"], n)
    except ImportError:
        print("bitsandbytes not installed: its row is skipped")

    print(f"{gpu}; copy bandwidth {copy / 1e12:.2f} TB/s; {n / 1e6:.2f}M params "
          f"({n_small} x {small_size} for the small case); torch {torch.__version__}")  # fmt: skip
    print("| case | implementation | ms | GB/s | % of copy | Gparam/s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['impl']} | {r['ms']:.3f} | {r['gbps']:.0f} | "
              f"{100 * r['frac_copy']:.1f} | {r['gparams']:.1f} |")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": gpu, "copy_bytes_per_s": copy, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
