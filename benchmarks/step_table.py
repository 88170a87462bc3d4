"""Turn a pytest-benchmark JSON of test_optim_step.py into the Markdown table of benchmarks.md."""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data["benchmarks"]:
        name = b["params"]["name"]
        # min, not median: on a shared machine interference only ever adds time
        rows[name] = (b["stats"]["min"], b["extra_info"]["numel"])
    peers = ("lion-pytorch Lion", "torch AdamW fused")
    print(f"| optimizer step | min ms | Mparams/s | vs {peers[0]} | vs {peers[1]} |")
    print("|---|---:|---:|---:|---:|")
    for name, (median, numel) in rows.items():
        ratios = [f"{rows[p][0] / median:.2f}x" if p in rows else "-" for p in peers]
        cells = " | ".join(ratios)
        print(f"| {name} | {median * 1e3:.1f} | {numel / median / 1e6:.0f} | {cells} |")
    machine = data["machine_info"]
    print(f"\n{machine.get('cpu', {}).get('brand_raw', '?')}, {machine['system']}, "
          f"python {machine['python_version']}, torch threads {b['extra_info']['threads']}")


if __name__ == "__main__":
    main(sys.argv[1])
