"""Fine-tune MiniLM on the tweets task (3 classes) with MeZO, ZO-Adam and AdamW, offline.

The model is all-MiniLM-L6-v2 (a sentence encoder: mean pooling) with a linear head on the
pooled features. Baselines: the majority class; zero-shot (each tweet goes to the label whose
prompt, "This tweet is negative." etc., has the most similar embedding); a linear probe (the
head fitted on frozen features, full batch, AdamW). Like MeZO's prompt-based runs, every
fine-tuning run starts from the zero-shot classifier: the head is initialized with the
prompts' embeddings (rows scaled so the logits are cosine similarities / 0.05, the zero-shot
prediction exactly). What a run trains:

* ``top``: the last ``--top-layers`` encoder layers and the head (1.8M parameters for one
  layer). The layers below are frozen, so their output is computed once and reused (feature
  reuse: a step runs only the trained layers, the same function as the whole model);
* ``head``: the head only (1,155 parameters), on the pooled features computed once.

Runs of a kind advance round-robin, one step each in turn (head runs first, then the rest),
so wall times within a group are measured under the same machine load. Test accuracy is
logged against forward passes (a backward counts as two) and training wall time (evaluation
excluded). Learning rates (``RUNS``): MeZO's full-model grid {1e-7 … 1e-5} is for 10^5 steps
at batch 64; here lrs were picked from a few pilot runs (1e-2 diverged on ``top``).

    HF_HUB_OFFLINE=1 nice python benchmarks/zo_minilm_finetune.py --out-dir docs/zo

Writes ``minilm_tweets.json`` and ``minilm_tweets.png``. Needs the ``zo-models`` extra.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from optforge.zo import MeZO, ZOAdam  # noqa: E402
from zo_common import LABELS, encode, load_minilm, tweets  # noqa: E402

PROMPTS = [f"This tweet is {name}." for name in LABELS]  # in label order
#: run name -> (method, what is trained, default lr); see docs/zo/mezo.md for the lr choice.
RUNS = {"mezo-head": ("mezo", "head", 1e-2), "zoadam-head": ("zoadam", "head", 1e-2),
        "mezo": ("mezo", "top", 3e-4), "mezo-1e-3": ("mezo", "top", 1e-3),
        "mezo-2e-3": ("mezo", "top", 2e-3), "zoadam": ("zoadam", "top", 1e-3),
        "adamw": ("adamw", "top", 1e-4)}


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """BERT's attention mask as the layers take it: 0 where attended, -inf-like where padded."""
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


class Top(nn.Module):
    """The top ``len(layers)`` encoder layers, mean pooling and a linear head.

    Input: the hidden states entering those layers, computed once by the frozen layers below
    (feature reuse: a step runs only the trained layers, the same result as the full model).
    """

    def __init__(self, layers: nn.ModuleList, dim: int = 384, classes: int = 3) -> None:
        super().__init__()
        self.layers = layers
        self.head = nn.Linear(dim, classes)

    def features(self, h, mask):
        ext = additive_mask(mask)
        for layer in self.layers:
            h = layer(h, attention_mask=ext)
            h = h[0] if isinstance(h, tuple) else h
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)

    def forward(self, h, mask):
        return self.head(self.features(h, mask))


def frozen_hidden(encoder, ids, mask, below: int, batch: int = 60) -> torch.Tensor:
    """Hidden states after the first ``below`` encoder layers (embeddings = 0), no grad."""
    encoder.eval()
    with torch.no_grad():
        return torch.cat([encoder(input_ids=ids[i:i + batch], attention_mask=mask[i:i + batch],
                                  output_hidden_states=True).hidden_states[below]
                          for i in range(0, len(ids), batch)])


def batched_features(model: Top, h, mask, batch: int = 60) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model.features(h[i:i + batch], mask[i:i + batch])
                          for i in range(0, len(h), batch)])


def accuracy(model: Top, data, batch: int = 60) -> float:
    h, mask, y = data
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(h[i:i + batch], mask[i:i + batch]).argmax(1)
                          for i in range(0, len(y), batch)])
    return float((pred == y).float().mean())


def zero_shot_head(model: Top, prompts, temperature: float = 0.05) -> None:
    """head(f) = (e_k · f)/(‖e_k‖ τ mean‖e‖): argmax = the most cosine-similar prompt."""
    e = batched_features(model, *prompts)
    with torch.no_grad():
        model.head.weight.copy_(e / e.norm(dim=1, keepdim=True) / (temperature * e.norm(dim=1)
                                                                     .mean()))
        model.head.bias.zero_()


def linear_probe(model: Top, train, steps: int, lr: float = 1e-2,
                 weight_decay: float = 0.1) -> None:
    h, mask, y = train
    feats = batched_features(model, h, mask)
    opt = torch.optim.AdamW(model.head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model.head(feats), y).backward()
        opt.step()


class Run:
    """One method on its own copy of the trained part, advanced a step at a time."""

    def __init__(self, name: str, start: Top, lr: float, steps: int, every: int,
                 seed: int) -> None:
        self.name, self.lr, self.steps, self.every = name, lr, steps, every
        self.method, self.which, _ = RUNS[name]
        # "head": only the linear head trains, on the pooled features (computed once).
        self.model = copy.deepcopy(start.head if self.which == "head" else start)
        params = list(self.model.parameters())
        self.n_params = sum(p.numel() for p in params)
        if self.method == "adamw":
            self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        elif self.method == "mezo":
            self.opt = MeZO(params, lr=lr, eps=1e-3, seed=seed)
        else:
            self.opt = ZOAdam(params, lr=lr, eps=1e-3, seed=seed)
        self.gen = torch.Generator().manual_seed(seed)  # the same batches for every run
        self.step, self.forwards, self.seconds, self.log = 0, 0, 0.0, []
        self.last_loss: float | None = None

    def forward(self, h, mask):
        return self.model(h) if self.which == "head" else self.model(h, mask)

    def advance(self, train, batch: int) -> None:
        h, mask, y = train
        idx = torch.randint(0, len(y), (batch,), generator=self.gen)
        hb, mb, yb = h[idx], mask[idx], y[idx]
        start = time.perf_counter()
        if self.method == "adamw":
            self.model.train()
            self.opt.zero_grad()
            loss = nn.functional.cross_entropy(self.forward(hb, mb), yb)
            loss.backward()
            self.opt.step()
            self.forwards += 3  # forward + backward (~2 forwards)
        else:
            self.model.eval()  # the ± passes see no dropout
            loss = self.opt.step(lambda: nn.functional.cross_entropy(self.forward(hb, mb), yb))
            self.forwards += 2
        self.seconds += time.perf_counter() - start
        self.step += 1
        self.last_loss = float(loss.detach())

    def record(self, test) -> None:
        h, mask, y = test
        self.model.eval()
        with torch.no_grad():
            acc = float((self.forward(h, mask).argmax(1) == y).float().mean())
        self.log.append({"step": self.step, "forwards": self.forwards,
                         "seconds": round(self.seconds, 2), "loss": self.last_loss, "acc": acc})
        print(self.name, self.log[-1], flush=True)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharey=True)
    base = result["baselines"]
    for ax, key, label in ((axes[0], "forwards", "forward passes of a training batch "
                            "(backward = 2)"),
                           (axes[1], "seconds", "training wall time (s, evaluation excluded)")):
        for i, (name, run) in enumerate(result["runs"].items()):
            log = run["log"]
            what = ("head only" if run.get("trained") == "head" else "top layer + head")
            what += run.get("note", "")
            ax.plot([r[key] for r in log], [r["acc"] for r in log], "o-", ms=3, color=f"C{i}",
                    label=f"{name}: {what} ({run['params'] / 1e6:.2g}M), lr {run['lr']:g}")
        for value, style, label_ in ((base["linear_probe"], "--", "linear probe"),
                                     (base["zero_shot"], ":", "zero-shot (prompt similarity)"),
                                     (base["majority"], "-.", "majority class")):
            ax.axhline(value, color="0.4", ls=style, lw=1, label=label_)
        ax.set_xlabel(label)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test accuracy ({result['test_size']} tweets)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3)
    a = result["args"]
    fig.suptitle(f"MiniLM-L6 on 3-class tweet sentiment: batch {a['batch']}, {a['max_len']} "
                 f"tokens, {result['train_size']} training tweets; runs interleaved "
                 "round-robin on a loaded 2-core CPU", fontsize=10)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110)


def round_robin(group: list, runs: list, batch: int, result: dict, load: list,
                out: Path) -> None:
    """Advance ``group`` one step each in turn; log and save at every evaluation."""
    while any(r.step < r.steps for r in group):
        for run in group:
            if run.step < run.steps:
                run.advance(run.data["train"], batch)
                if run.step % run.every == 0 or run.step == run.steps:
                    run.record(run.data["test"])
                    load.append(float(Path("/proc/loadavg").read_text().split()[0]))
                    for r in runs:
                        result["runs"][r.name] = {"method": r.method, "trained": r.which,
                                                  "params": r.n_params, "lr": r.lr,
                                                  "log": r.log}
                    result["load_average_samples"] = load
                    (out / "minilm_tweets.json").write_text(json.dumps(result, indent=1))


def overrides(items: list[str], defaults: dict, kind: type, flag: str) -> dict:
    """``["mezo=1e-4", ...]`` applied to ``defaults`` (one value per run)."""
    values = dict(defaults)
    for item in items:
        name, _, value = item.partition("=")
        if name not in RUNS:
            raise SystemExit(f"{flag}: unknown run {name!r} (runs: {', '.join(RUNS)})")
        values[name] = kind(value)
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--top-layers", type=int, default=1,
                    help="encoder layers trained (with the head); the ones below are frozen")
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--lr", action="append", default=[], metavar="RUN=LR",
                    help="override a run's lr, e.g. --lr mezo=1e-4")
    ap.add_argument("--steps", action="append", default=[], metavar="RUN=N",
                    help="override a run's steps, e.g. --steps mezo=3000")
    ap.add_argument("--evals", type=int, default=15, help="evaluations per run")
    ap.add_argument("--probe-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, oversubscribed CPU two threads waiting "
                         "on each other at every barrier ran slower)")
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lrs = overrides(args.lr, {name: lr for name, (_, _, lr) in RUNS.items()}, float, "--lr")
    steps = overrides(args.steps, {"mezo-head": 3000, "zoadam-head": 3000, "mezo": 6000,
                                   "mezo-1e-3": 6000, "mezo-2e-3": 500, "zoadam": 250,
                                   "adamw": 50}, int, "--steps")
    names = args.runs.split(",")
    for name in names:
        if name not in RUNS:
            raise SystemExit(f"--runs: unknown run {name!r} (runs: {', '.join(RUNS)})")

    tok, encoder = load_minilm()
    encoder = encoder.base_model
    n_layers = len(encoder.encoder.layer)
    if not 1 <= args.top_layers <= n_layers:
        raise SystemExit(f"--top-layers must be in 1..{n_layers}")
    below = n_layers - args.top_layers
    rows_train, rows_test = tweets(args.train, args.test, seed=args.seed)
    data = {}
    for key, rows in (("train", rows_train), ("test", rows_test),
                      ("prompts", [(p, k) for k, p in enumerate(PROMPTS)])):
        ids, mask, y = encode(tok, rows, args.max_len)
        data[key] = (frozen_hidden(encoder, ids, mask, below), mask, y)
    start = Top(copy.deepcopy(encoder.encoder.layer[below:]))
    zero_shot_head(start, data["prompts"][:2])
    train, test = data["train"], data["test"]
    counts = torch.bincount(train[2], minlength=3)
    baselines = {"majority": float((test[2] == counts.argmax()).float().mean()),
                 "zero_shot": accuracy(start, test)}
    probe = copy.deepcopy(start)
    linear_probe(probe, train, args.probe_steps)
    baselines["linear_probe"] = accuracy(probe, test)
    print("baselines", baselines, flush=True)
    result = {"args": vars(args), "train_size": len(rows_train), "test_size": len(rows_test),
              "baselines": baselines, "runs": {}}

    pooled = {key: (batched_features(start, h, mask), mask, y)
              for key, (h, mask, y) in (("train", train), ("test", test))}
    runs = []
    for name in names:
        run = Run(name, start, lrs[name], steps[name], max(1, steps[name] // args.evals),
                  args.seed)
        run.data = pooled if run.which == "head" else {"train": train, "test": test}
        run.record(run.data["test"])
        runs.append(run)
    load = []
    # Head-only runs first (milliseconds a step), then the rest: round-robin within each group.
    for group in ([r for r in runs if r.which == "head"], [r for r in runs if r.which != "head"]):
        round_robin(group, runs, args.batch, result, load, out)
    plot(result, out / "minilm_tweets.png")
    print("| run | lr | steps | forwards | seconds | s/step | test acc |")
    print("|---|---|---|---|---|---|---|")
    for name, value in baselines.items():
        print(f"| {name.replace('_', ' ')} | - | - | - | - | - | {value:.3f} |")
    for run in runs:
        last = run.log[-1]
        print(f"| {run.name} | {run.lr:g} | {last['step']} | {last['forwards']} | "
              f"{last['seconds']:.0f} | {last['seconds'] / last['step']:.3f} | "
              f"{last['acc']:.3f} |")


if __name__ == "__main__":
    main()
