"""MeZO fine-tuning of SmolLM2-135M on CPU, offline: loss curve, time per step, peak memory.

SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters, float32 after de-quantizing the
packaged Q4_1 GGUF) is fine-tuned with MeZO as a causal LM on English text that ships with
Python: the docstrings of standard-library modules, read from their source files
(``ast.get_docstring``). Training sequences come from one set of modules, the held-out
sequences from others. ``--trainable all`` perturbs every parameter; ``--trainable top``
only the last ``--top-layers`` decoder layers and the final norm (the rest frozen, as in
MeZO's parameter-efficient runs): on a CPU a full-model step is dominated by drawing 4 x 134.5M
normals, not by the two forwards. When ``--batch`` >= ``--train-sequences`` every step uses
the whole training set, so the step loss is the training loss itself (no batch noise).
Logged: the loss of each step (the mean of ℓ+ and ℓ−), the held-out loss every
``--eval-every`` steps, and the seconds per step; the JSON and the PNG are rewritten at every
evaluation. With ``--memory``, the peak
process memory of a MeZO step, a forward-only pass and a backprop + AdamW step is measured
afterwards, each in its own subprocess (``benchmarks/zo_memory.py --model smollm2``).

    HF_HUB_OFFLINE=1 nice python benchmarks/zo_smollm2_demo.py --memory --out-dir docs/zo

Needs the ``zo-smollm2`` extra (see ``zo_common``). Writes ``smollm2_mezo.png`` and
``smollm2_mezo.json`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from optforge.zo import MeZO  # noqa: E402
from zo_common import load_smollm2  # noqa: E402

#: standard-library modules whose docstrings make the training and the held-out text.
TRAIN_MODULES = ("textwrap", "argparse", "csv", "json/__init__", "collections/__init__",
                 "heapq", "bisect", "functools", "shutil", "tempfile", "string", "fractions")
HELD_OUT_MODULES = ("difflib", "calendar", "statistics")


def docstrings(modules: tuple[str, ...]) -> str:
    """Every docstring (module, class, function) of ``modules``, in source order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in modules:
        tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    parts.append(doc)
    return "\n\n".join(parts)


def sequences(tok, text: str, seq: int, limit: int) -> torch.Tensor:
    """Up to ``limit`` consecutive non-overlapping windows of ``seq`` tokens."""
    ids = torch.tensor(tok(text)["input_ids"])
    n = min(limit, len(ids) // seq)
    return ids[: n * seq].view(n, seq)


def mean_loss(model, data: torch.Tensor, batch: int = 8) -> float:
    with torch.no_grad():
        losses = [float(model(input_ids=data[i:i + batch], labels=data[i:i + batch]).loss)
                  for i in range(0, len(data), batch)]
    return sum(losses) / len(losses)


def trainable(model, which: str, top: int) -> list:
    if which == "all":
        return list(model.parameters())
    layers = model.model.layers
    keep = {id(p) for layer in layers[len(layers) - top:] for p in layer.parameters()}
    keep |= {id(p) for p in model.model.norm.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [p for p in model.parameters() if p.requires_grad]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log, evals = result["steps"], result["eval"]
    steps = [r["step"] for r in log]
    losses = [r["loss"] for r in log]
    k = max(1, min(25, len(losses) // 8))
    smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(steps, losses, color="0.75", lw=0.8, label="training batch loss (mean of ℓ+, ℓ−)")
    ax.plot(steps, smooth, color="C0", lw=2, label=f"its running mean over {k} steps")
    ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", color="C3",
            label=f"held-out loss ({result['held_out_sequences']} sequences)")
    a = result["args"]
    ax.set_xlabel("MeZO step (2 forward passes each)")
    ax.set_ylabel("causal-LM loss (nats/token)")
    what = ("every parameter" if a["trainable"] == "all" else
            f"last {a['top_layers']} layers + final norm ({result['trained'] / 1e6:.1f}M)")
    ax.set_title(f"MeZO on SmolLM2-135M, {what}: lr {a['lr']:g}, eps {a['eps']:g}, "
                 f"batch {a['batch']}x{a['seq']} tokens\n"
                 f"median {result['seconds_per_step_median']:.1f} s/step on a loaded 2-core CPU",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--train-sequences", type=int, default=64)
    ap.add_argument("--held-out-sequences", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--trainable", choices=("all", "top"), default="all")
    ap.add_argument("--top-layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory", action="store_true",
                    help="also measure peak memory (MeZO, forward-only, backprop + AdamW)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (on an oversubscribed CPU, 2 ran ~10x slower than 1)")
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    tok, model = load_smollm2()
    load_s = time.perf_counter() - start
    model.eval()  # the ± passes see the same network (SmolLM2 has no dropout anyway)
    prompt = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        completion = tok.decode(model.generate(**prompt, max_new_tokens=3, do_sample=False)[0])
    print(f"loaded in {load_s:.0f} s; greedy completion: {completion!r}", flush=True)

    train = sequences(tok, docstrings(TRAIN_MODULES), args.seq, args.train_sequences)
    held_out = sequences(tok, docstrings(HELD_OUT_MODULES), args.seq, args.held_out_sequences)
    params = trainable(model, args.trainable, args.top_layers)
    opt = MeZO(params, lr=args.lr, eps=args.eps, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    result = {"args": vars(args), "load_seconds": round(load_s, 1), "completion": completion,
              "params": sum(p.numel() for p in model.parameters()),
              "trained": sum(p.numel() for p in params),
              "train_sequences": len(train), "held_out_sequences": len(held_out),
              "steps": [], "eval": [{"step": 0, "loss": mean_loss(model, held_out)}]}
    print("step 0 held-out", result["eval"][0], flush=True)
    for step in range(1, args.steps + 1):
        batch = train if args.batch >= len(train) else train[
            torch.randint(0, len(train), (args.batch,), generator=gen)]
        t0 = time.perf_counter()
        loss = opt.step(lambda batch=batch: model(input_ids=batch, labels=batch).loss)
        result["steps"].append({"step": step, "loss": float(loss),
                                "seconds": time.perf_counter() - t0})
        if step % args.eval_every == 0 or step == args.steps:
            result["eval"].append({"step": step, "loss": mean_loss(model, held_out)})
            print(f"step {step} batch loss {float(loss):.3f} held-out {result['eval'][-1]}",
                  flush=True)
            secs = sorted(r["seconds"] for r in result["steps"])
            result["seconds_per_step_median"] = secs[len(secs) // 2]
            result["seconds_per_step_min"] = secs[0]
            result["load_average"] = Path("/proc/loadavg").read_text().split()[0]
            (out / "smollm2_mezo.json").write_text(json.dumps(result, indent=1))
            plot(result, out / "smollm2_mezo.png")
    print(f"held-out loss {result['eval'][0]['loss']:.3f} -> {result['eval'][-1]['loss']:.3f}; "
          f"seconds per step: median {result['seconds_per_step_median']:.2f}, "
          f"min {result['seconds_per_step_min']:.2f}", flush=True)
    if args.memory:
        del model, opt
        memory = subprocess.run(
            [sys.executable, str(Path(__file__).parent / "zo_memory.py"), "--model", "smollm2",
             "--batch", str(args.batch), "--seq", str(args.seq), "--threads",
             str(args.threads), "--jobs", "3", "--modes", "forward,mezo,adamw"],
            check=True, capture_output=True, text=True).stdout
        print(memory, flush=True)
        result["memory_table"] = memory
        (out / "smollm2_mezo.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
