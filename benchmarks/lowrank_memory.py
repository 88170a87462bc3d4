"""Optimizer-state bytes of the low-rank methods against torch.optim.AdamW on a LLaMA-shaped
stack of linear layers, and peak process memory of training steps with and without per-layer
updates (each measured in a fresh subprocess).

State bytes are summed from the state tensors after one step (``numel * element_size`` of
every tensor in ``optimizer.state``), not computed from formulas. Peak memory is the
kernel's peak RSS (VmHWM) of a fresh subprocess per mode, reset before every training step
(forward, backward, step) so the first step, later refresh steps (an SVD per matrix) and
ordinary steps are reported apart; live gradient bytes are counted by hooks.

    nice -n 10 python benchmarks/lowrank_memory.py --dim 512 --layers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from optforge.lowrank import (
    FRUGAL,
    FiraAdamW,
    GaLoreAdamW,
    GaLoreAdamW8bit,
    NaturalGaLoreAdamW,
    PerLayerStep,
    QGaLoreAdamW8bit,
    quantize_linear_weights,
)


def llama_stack(dim: int, layers: int) -> torch.nn.Sequential:
    """q, k, v, o (d×d), gate and up (f×d), down (d×f) per layer, f = 2.6875·d as LLaMA-7B's
    11008/4096, no biases."""
    ff = int(2.6875 * dim)
    mods = []
    for _ in range(layers):
        mods += [torch.nn.Linear(dim, dim, bias=False) for _ in range(4)]
        mods += [torch.nn.Linear(dim, ff, bias=False), torch.nn.Linear(dim, ff, bias=False)]
        mods += [torch.nn.Linear(ff, dim, bias=False)]
    return torch.nn.Sequential(*mods)


def llama_chain(dim: int, layers: int) -> torch.nn.Sequential:
    """The same shapes minus gate, composable in sequence (for a real forward/backward)."""
    ff = int(2.6875 * dim)
    mods = []
    for _ in range(layers):
        mods += [torch.nn.Linear(dim, dim, bias=False) for _ in range(4)]
        mods += [torch.nn.Linear(dim, ff, bias=False), torch.nn.Tanh()]
        mods += [torch.nn.Linear(ff, dim, bias=False), torch.nn.Tanh()]
    return torch.nn.Sequential(*mods)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for st in opt.state.values()
        for t in st.values()
        if isinstance(t, torch.Tensor)
    )


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the storages behind the model's parameters and buffers (an Int8Linear's weight
    handle is one element; its codes, scales and zero points are buffers)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def measure_weights_and_state(dim: int, layers: int, divisor: int = 4) -> list[dict]:
    """Weights + optimizer state of GaLore 8-bit and Q-GaLore at rank d/divisor, every matrix
    of the stack projected (and, for Q-GaLore with INT8 storage, quantized)."""
    rank = dim // divisor
    configs = [
        ("GaLoreAdamW8bit, fp32 weights", GaLoreAdamW8bit, torch.float32, False),
        ("GaLoreAdamW8bit, bf16 weights", GaLoreAdamW8bit, torch.bfloat16, False),
        ("QGaLoreAdamW8bit, fp32 weights on the 8-bit grid", QGaLoreAdamW8bit, torch.float32,
         False),
        ("QGaLoreAdamW8bit + quantize_linear_weights (INT8 codes)", QGaLoreAdamW8bit,
         torch.float32, True),
    ]  # fmt: skip
    rows = []
    for name, cls, dtype, int8 in configs:
        model = llama_stack(dim, layers).to(dtype)
        if int8:
            quantize_linear_weights(model, target_modules=())
        opt = cls(model.parameters(), rank=rank, update_proj_gap=200)
        one_step(model, opt)
        w, st = weight_bytes(model), state_bytes(opt)
        rows.append({"method": name, "weights": w, "state": st, "total": w + st})
    return rows


def measure_trajectory(dim: int, layers: int, steps: int) -> list[dict]:
    """The low-precision bases' effect on training: a student chain regresses a fixed random
    teacher chain (MSE, fresh seeded batches of 64) with GaLoreAdamW (lr 1e-3, r = d/4,
    refresh every 50 steps) and each basis storage; reports the final loss (mean of the last
    10 steps) and how far the parameters end from the fp32-basis run's, relative to how far
    that run moved."""
    # The last row is a yardstick, not a storage: the fp32 basis with a 1% larger lr shows how
    # far a small, harmless change moves this trajectory.
    configs = [
        ("fp32 basis (default)", {}),
        ("proj_dtype=bfloat16", {"proj_dtype": "bfloat16"}),
        ("proj_bits=8", {"proj_bits": 8}),
        ("fp32 basis, lr × 1.01", {"lr": 1.01e-3}),
    ]
    torch.manual_seed(1)
    teacher = llama_chain(dim, layers).requires_grad_(False)
    rows, ref = [], None
    for name, kw in configs:
        torch.manual_seed(0)
        model = llama_chain(dim, layers)
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        opt = GaLoreAdamW(model.parameters(), **{"lr": 1e-3, "rank": dim // 4,
                                                 "update_proj_gap": 50, **kw})
        gen, losses = torch.Generator().manual_seed(2), []
        for _ in range(steps):
            x = torch.randn(64, dim, generator=gen)
            loss = torch.nn.functional.mse_loss(model(x), teacher(x))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        end = torch.cat([p.detach().flatten() for p in model.parameters()])
        if ref is None:
            ref = (start, end)
        drift = float((end - ref[1]).norm() / (ref[1] - ref[0]).norm())
        rows.append({"basis": name, "first_loss": losses[0],
                     "final_loss": sum(losses[-10:]) / 10, "drift": drift})  # fmt: skip
    return rows


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
    opt.step()


def measure_state(dim: int, layers: int) -> list[dict]:
    rows = []
    model = llama_stack(dim, layers)
    params = list(model.parameters())
    adamw = torch.optim.AdamW(params)
    one_step(model, adamw)
    base = state_bytes(adamw)
    rows.append({"method": "torch AdamW", "rank": "-", "bytes": base, "ratio": 1.0})
    del adamw
    configs = [
        ("GaLoreAdamW (reverse_std, default)", GaLoreAdamW, {}),
        ("GaLoreAdamW (std, official side)", GaLoreAdamW, {"proj_type": "std"}),
        ("GaLoreAdamW (reverse_std, proj_dtype=bfloat16)", GaLoreAdamW,
         {"proj_dtype": "bfloat16"}),
        ("GaLoreAdamW (reverse_std, proj_bits=8)", GaLoreAdamW, {"proj_bits": 8}),
        ("GaLoreAdamW8bit", GaLoreAdamW8bit, {}),
        ("QGaLoreAdamW8bit", QGaLoreAdamW8bit, {}),
        ("FiraAdamW", FiraAdamW, {}),
        ("NaturalGaLoreAdamW (s=20)", NaturalGaLoreAdamW, {}),
    ]
    for divisor in (8, 4, 2):
        rank = dim // divisor
        for name, cls, kw in configs:
            opt = cls(params, rank=rank, update_proj_gap=200, **kw)
            one_step(model, opt)
            b = state_bytes(opt)
            rows.append({"method": name, "rank": f"d/{divisor}", "bytes": b, "ratio": b / base})
    for density in (0.125, 0.25, 0.5):
        opt = FRUGAL(params, density=density)
        one_step(model, opt)
        b = state_bytes(opt)
        rows.append({"method": f"FRUGAL (ρ={density})", "rank": "ρ·d", "bytes": b,
                     "ratio": b / base})  # fmt: skip
    return rows


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) so each step gets its own window (Linux ≥ 4.0:
    writing 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _peak_child(dim: int, layers: int, per_layer: bool, steps: int, gap: int) -> None:
    torch.manual_seed(0)
    model = llama_chain(dim, layers)
    params = list(model.parameters())
    x = torch.randn(16, dim)
    rank = dim // 4
    # Live gradient bytes, counted exactly: a hook registered before PerLayerStep's sees each
    # gradient just accumulated, before the step frees it.
    live = {"now": 0, "peak": 0}

    def count(_: torch.Tensor) -> None:
        now = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        live["peak"] = max(live["peak"], now)

    for p in params:
        p.register_post_accumulate_grad_hook(count)

    def factory(ps):
        return GaLoreAdamW(ps, lr=1e-3, rank=rank, update_proj_gap=gap)

    if per_layer:
        stepper = PerLayerStep(params, factory)  # noqa: F841 (hooks hold it)
    else:
        opt = factory(params)
    rows = []
    for step in range(steps):
        before = _status_kb("VmRSS")
        live["peak"] = 0
        _reset_peak()
        model(x).square().mean().backward()
        if not per_layer:
            opt.step()
            opt.zero_grad(set_to_none=True)
        kind = "first" if step == 0 else "refresh" if step % gap == 0 else "ordinary"
        rows.append({"step": step, "kind": kind, "before": before, "peak": _status_kb("VmHWM"),
                     "live_grad_peak": live["peak"]})  # fmt: skip
    grads = [p.numel() * p.element_size() for p in params]
    print(json.dumps({"per_layer": per_layer, "steps": rows, "grad_bytes": sum(grads),
                      "largest_grad": max(grads)}))  # fmt: skip


def measure_peak(dim: int, layers: int, steps: int = 6, gap: int = 3) -> list[dict]:
    # glibc serves freed large blocks again from its heap once its mmap threshold has grown
    # (dynamic threshold, up to 32 MiB), so RSS stays high after a free and a later peak is
    # hidden in it; a fixed threshold maps every block ≥ 128 KiB on its own and returns it on
    # free, making RSS track the live tensors (first version without it: 0.63x, mostly noise).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = []
    for per_layer in (False, True):
        cmd = [sys.executable, __file__, "--child", str(int(per_layer)), "--dim", str(dim),
               "--layers", str(layers), "--steps", str(steps), "--gap", str(gap)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def peak_table(whole: dict, per_layer: dict) -> list[dict]:
    """Per step kind: the largest peak RSS of either mode over its steps of that kind."""
    rows = []
    for kind in ("first", "refresh", "ordinary"):
        peaks = [max(s["peak"] for s in run["steps"] if s["kind"] == kind)
                 for run in (whole, per_layer)]  # fmt: skip
        lives = [max(s["live_grad_peak"] for s in run["steps"] if s["kind"] == kind)
                 for run in (whole, per_layer)]  # fmt: skip
        rows.append({"kind": kind, "whole": peaks[0], "per_layer": peaks[1],
                     "live_whole": lives[0], "live_per_layer": lives[1]})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--peak-dim", type=int, default=1024)
    parser.add_argument("--peak-layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--gap", type=int, default=3)
    parser.add_argument("--trajectory-steps", type=int, default=0,
                        help="also train with fp32, bf16 and 8-bit bases for this many steps")
    parser.add_argument("--child", type=int, default=None)
    parser.add_argument("--peak-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child is not None:
        _peak_child(args.dim, args.layers, bool(args.child), args.steps, args.gap)
        return
    print(f"| method | rank | state MiB | vs AdamW |  (d={args.dim}, {args.layers} layers)")
    for row in [] if args.peak_only else measure_state(args.dim, args.layers):
        print(f"| {row['method']} | {row['rank']} | {row['bytes'] / 2**20:.2f} | "
              f"{100 * row['ratio']:.1f}% |")  # fmt: skip
    if args.trajectory_steps:
        print(f"| basis | first loss | final loss | ‖θ − θ_fp32‖ / ‖θ_fp32 − θ_0‖ |  "
              f"(d={args.dim}, {args.layers} layers, {args.trajectory_steps} steps)")  # fmt: skip
        for row in measure_trajectory(args.dim, args.layers, args.trajectory_steps):
            print(f"| {row['basis']} | {row['first_loss']:.4e} | {row['final_loss']:.4e} | "
                  f"{row['drift']:.4f} |")  # fmt: skip
    if not args.peak_only:
        print("| method (rank d/4) | weights MiB | state MiB | weights + state MiB |")
        for row in measure_weights_and_state(args.dim, args.layers):
            print(f"| {row['method']} | {row['weights'] / 2**20:.2f} | "
                  f"{row['state'] / 2**20:.2f} | {row['total'] / 2**20:.2f} |")  # fmt: skip
    whole, per_layer = measure_peak(args.peak_dim, args.peak_layers, args.steps, args.gap)
    grads, largest = whole["grad_bytes"], whole["largest_grad"]
    mib = 2**20
    bound = grads - largest
    print(f"gradients {grads / mib:.1f} MiB, largest single gradient {largest / mib:.1f} MiB "
          f"(per-layer's bound: it lowers the peak by at most the gradients minus the largest "
          f"one, {bound / mib:.1f} MiB = {bound / grads:.3f}x)")  # fmt: skip
    print("| step | peak RSS whole | peak RSS per-layer | lowered by | x gradient bytes "
          "| live gradients whole | per-layer |")
    for row in peak_table(whole, per_layer):
        saved = row["whole"] - row["per_layer"]
        print(f"| {row['kind']} | {row['whole'] / mib:.1f} MiB | {row['per_layer'] / mib:.1f} MiB "
              f"| {saved / mib:.1f} MiB | {saved / grads:.2f}x | {row['live_whole'] / mib:.1f} MiB "
              f"| {row['live_per_layer'] / mib:.1f} MiB |")  # fmt: skip

if __name__ == "__main__":
    main()
