"""Optimizer-state bytes of the low-rank methods against torch.optim.AdamW on a LLaMA-shaped
stack of linear layers, and peak process memory of training steps with and without per-layer
updates (each measured in a fresh subprocess).

State bytes are summed from the state tensors after one step (``numel * element_size`` of
every tensor in ``optimizer.state``), not computed from formulas. Peak memory is the
subprocess's ``ru_maxrss`` after 3 steps.

    nice -n 10 python benchmarks/lowrank_memory.py --dim 512 --layers 2
"""

from __future__ import annotations

import argparse
import json
import resource
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


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
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


def _peak_child(dim: int, layers: int, per_layer: bool) -> None:
    torch.manual_seed(0)
    model = llama_chain(dim, layers)
    x = torch.randn(16, dim)
    rank = dim // 4

    def factory(p):
        return GaLoreAdamW(p, lr=1e-3, rank=rank)

    if per_layer:
        stepper = PerLayerStep(model.parameters(), factory)  # noqa: F841 (hooks hold it)
    else:
        opt = GaLoreAdamW(model.parameters(), lr=1e-3, rank=rank)
    for _ in range(3):
        model(x).square().mean().backward()
        if not per_layer:
            opt.step()
            opt.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"per_layer": per_layer, "peak_bytes": peak, "grad_bytes": grad_bytes}))


def measure_peak(dim: int, layers: int) -> list[dict]:
    out = []
    for per_layer in (False, True):
        cmd = [sys.executable, __file__, "--child", str(int(per_layer)), "--dim", str(dim),
               "--layers", str(layers)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--peak-dim", type=int, default=1024)
    parser.add_argument("--peak-layers", type=int, default=4)
    parser.add_argument("--child", type=int, default=None)
    parser.add_argument("--peak-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child is not None:
        _peak_child(args.dim, args.layers, bool(args.child))
        return
    print(f"| method | rank | state MiB | vs AdamW |  (d={args.dim}, {args.layers} layers)")
    for row in [] if args.peak_only else measure_state(args.dim, args.layers):
        print(f"| {row['method']} | {row['rank']} | {row['bytes'] / 2**20:.2f} | "
              f"{100 * row['ratio']:.1f}% |")  # fmt: skip
    rows = measure_peak(args.peak_dim, args.peak_layers)
    for row in rows:
        print(f"| per-layer={row['per_layer']} | peak {row['peak_bytes'] / 2**20:.1f} MiB | "
              f"gradients {row['grad_bytes'] / 2**20:.1f} MiB |")  # fmt: skip
    saved = rows[0]["peak_bytes"] - rows[1]["peak_bytes"]
    print(f"per-layer mode lowers peak by {saved / 2**20:.1f} MiB "
          f"({saved / rows[0]['grad_bytes']:.2f}x the gradient bytes)")


if __name__ == "__main__":
    main()
