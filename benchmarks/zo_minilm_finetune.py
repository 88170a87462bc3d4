"""Fine-tune MiniLM on the tweets task (3 classes) with MeZO, ZO-Adam and AdamW, offline.

The model is all-MiniLM-L6-v2 with mean pooling and a linear head. Baseline: a linear probe
(the head fitted on frozen features, full batch, ``--probe-steps`` AdamW steps). Every method
starts from the probed model and trains every parameter (or, with ``--last-layers N``, the
head and the last N encoder layers); test accuracy is logged against forward passes (a
backward counts as two) and wall time.

    HF_HUB_OFFLINE=1 nice python benchmarks/zo_minilm_finetune.py --out /tmp/zo_ft.json

Short runs on a shared 2-core CPU: the point is the shape of the curves and the cost per step,
not a tuned accuracy. Needs the ``zo-models`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from optforge.zo import MeZO, ZOAdam  # noqa: E402
from zo_common import encode, load_minilm, tweets  # noqa: E402


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int = 384, classes: int = 3) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, classes)

    def features(self, ids, mask):
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)

    def forward(self, ids, mask):
        return self.head(self.features(ids, mask))


def accuracy(model, data, batch=60) -> float:
    ids, mask, y = data
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            right += int((model(ids[i:i + batch], mask[i:i + batch]).argmax(1)
                          == y[i:i + batch]).sum())
    return right / len(y)


def linear_probe(model, train, steps: int = 300, weight_decay: float = 0.0) -> None:
    ids, mask, y = train
    with torch.no_grad():
        feats = torch.cat([model.features(ids[i:i + 60], mask[i:i + 60])
                           for i in range(0, len(y), 60)])
    opt = torch.optim.AdamW(model.head.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model.head(feats), y).backward()
        opt.step()


def run(method: str, state, train, test, steps: int, batch: int, lr: float, every: int,
        seed: int, last_layers: int = -1) -> list[dict]:
    torch.manual_seed(seed)
    _, encoder = load_minilm()
    model = Classifier(encoder.base_model)
    model.load_state_dict(state)
    if last_layers >= 0:  # freeze all but the head and the last ``last_layers`` layers
        layers = model.encoder.encoder.layer
        keep = {id(p) for layer in layers[len(layers) - last_layers:] for p in layer.parameters()}
        for p in model.encoder.parameters():
            p.requires_grad_(id(p) in keep)
    params = [p for p in model.parameters() if p.requires_grad]
    ids, mask, y = train
    gen = torch.Generator().manual_seed(seed)
    if method == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    elif method == "mezo":
        opt = MeZO(params, lr=lr, eps=1e-3, seed=seed)
    else:
        opt = ZOAdam(params, lr=lr, eps=1e-3, seed=seed)
    log = [{"step": 0, "forwards": 0, "seconds": 0.0, "acc": accuracy(model, test)}]
    forwards, seconds = 0, 0.0
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        xb, mb, yb = ids[idx], mask[idx], y[idx]
        start = time.perf_counter()
        if method == "adamw":
            model.train()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb, mb), yb)
            loss.backward()
            opt.step()
            forwards += 3  # forward + backward (~2 forwards)
        else:
            model.eval()  # ± passes see no dropout
            loss = opt.step(lambda xb=xb, mb=mb, yb=yb: nn.functional.cross_entropy(
                model(xb, mb), yb))
            forwards += 2
        seconds += time.perf_counter() - start
        if step % every == 0 or step == steps:
            log.append({"step": step, "forwards": forwards, "seconds": round(seconds, 1),
                        "loss": float(loss), "acc": accuracy(model, test)})
            print(method, log[-1], flush=True)
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=480)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--max-len", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--zo-steps", type=int, default=300)
    ap.add_argument("--adamw-steps", type=int, default=100)
    ap.add_argument("--mezo-lr", type=float, default=1e-5)
    ap.add_argument("--zoadam-lr", type=float, default=1e-5)
    ap.add_argument("--adamw-lr", type=float, default=2e-5)
    ap.add_argument("--methods", default="mezo,zoadam,adamw")
    ap.add_argument("--last-layers", type=int, default=-1,
                    help="train only the head and the last N encoder layers (-1: everything)")
    ap.add_argument("--probe-steps", type=int, default=300)
    ap.add_argument("--probe-wd", type=float, default=0.0)
    ap.add_argument("--out", default="zo_minilm_finetune.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok, encoder = load_minilm()
    rows_train, rows_test = tweets(args.train, args.test)
    train, test = encode(tok, rows_train, args.max_len), encode(tok, rows_test, args.max_len)
    model = Classifier(encoder.base_model)
    linear_probe(model, train, args.probe_steps, args.probe_wd)
    probe = accuracy(model, test)
    print("linear probe", probe, flush=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = {"args": vars(args), "linear_probe_acc": probe, "runs": {}}
    for method in args.methods.split(","):
        steps = args.adamw_steps if method == "adamw" else args.zo_steps
        lr = getattr(args, f"{method}_lr")
        every = max(1, steps // 6)
        result["runs"][method] = {"lr": lr, "log": run(method, state, train, test, steps,
                                                        args.batch, lr, every, seed=0,
                                                        last_layers=args.last_layers)}
        Path(args.out).write_text(json.dumps(result, indent=1))
    print("| method | lr | steps | forwards | seconds | test acc |")
    print("|---|---|---|---|---|---|")
    print(f"| linear probe | - | - | - | - | {probe:.3f} |")
    for method, r in result["runs"].items():
        last = r["log"][-1]
        print(f"| {method} | {r['lr']:g} | {last['step']} | {last['forwards']} | "
              f"{last['seconds']} | {last['acc']:.3f} |")


if __name__ == "__main__":
    main()
