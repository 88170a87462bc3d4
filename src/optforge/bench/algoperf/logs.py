"""Importing AlgoPerf experiment logs (``eval_measurements.csv``) as an optforge run.

AlgoPerf's scorer (``scoring/score_submissions.py``) reads a *submission directory*::

    DIR/<submission>/<study>/<workload>_<jax|pytorch>/trial_<k>/eval_measurements.csv

(one experiment directory, ``DIR/<study>/<workload>_<framework>/trial_<k>/...``, is read as
one submission named after ``DIR``). :func:`import_logs` turns every CSV into an optforge
trial record (every row an evaluation point: ``global_step``, the ``score`` column as
training time, ``validation/<target metric>`` as the metric; rows without a value stay in
place, since AlgoPerf counts evaluation indices over all rows) and writes a run folder that
:func:`optforge.bench.report.write_report` scores under the ``algoperf`` protocol with
AlgoPerf's 8 base workloads and their targets (:data:`TARGETS`), exactly as the reference
scorer does.

Example::

    >>> TARGETS["criteo1tb"]
    ('loss', 0.123735, False)
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from optforge.bench.algoperf.protocol import first_reach_index, get_protocol

__all__ = ["BASE_WORKLOADS", "TARGETS", "base_workload_name", "import_logs", "is_algoperf_logs"]

MEASUREMENTS = "eval_measurements.csv"
#: AlgoPerf v0.6's base workloads (``algoperf/workloads/workloads.py``): rho divides by 8.
BASE_WORKLOADS = ("criteo1tb", "fastmri", "imagenet_resnet", "imagenet_vit",
                  "librispeech_conformer", "librispeech_deepspeech", "ogbg", "wmt")
#: name -> (target metric, validation target, higher is better), from each AlgoPerf
#: workload's ``target_metric_name`` and ``validation_target_value`` (v0.6).
TARGETS: dict[str, tuple[str, float, bool]] = {
    "criteo1tb": ("loss", 0.123735, False),
    "criteo1tb_layernorm": ("loss", 0.123757, False),
    "criteo1tb_resnet": ("loss", 0.12415, False),
    "criteo1tb_embed_init": ("loss", 0.129657, False),
    "fastmri": ("ssim", 0.723653, True),
    "fastmri_model_size": ("ssim", 0.723559, True),
    "fastmri_tanh": ("ssim", 0.717840, True),
    "fastmri_layernorm": ("ssim", 0.723284, True),
    "imagenet_resnet": ("accuracy", 1 - 0.22569, True),
    "imagenet_resnet_silu": ("accuracy", 0.75445, True),
    "imagenet_resnet_gelu": ("accuracy", 0.76765, True),
    "imagenet_resnet_large_bn_init": ("accuracy", 0.76526, True),
    "imagenet_vit": ("accuracy", 1 - 0.22691, True),
    "imagenet_vit_glu": ("accuracy", 0.75738, True),
    "imagenet_vit_post_ln": ("accuracy", 0.75312, True),
    "imagenet_vit_map": ("accuracy", 0.77113, True),
    "librispeech_conformer": ("wer", 0.085884, False),
    "librispeech_conformer_attention_temperature": ("wer", 0.109977, False),
    "librispeech_conformer_layernorm": ("wer", 0.09731, False),
    "librispeech_conformer_gelu": ("wer", 0.094114, False),
    "librispeech_deepspeech": ("wer", 0.119936, False),
    "librispeech_deepspeech_tanh": ("wer", 0.150883, False),
    "librispeech_deepspeech_no_resnet": ("wer", 0.131564, False),
    "librispeech_deepspeech_norm_and_spec_aug": ("wer", 0.14342, False),
    "ogbg": ("mean_average_precision", 0.28098, True),
    "ogbg_gelu": ("mean_average_precision", 0.27771, True),
    "ogbg_silu": ("mean_average_precision", 0.282178, True),
    "ogbg_model_size": ("mean_average_precision", 0.269446, True),
    "wmt": ("bleu", 30.8491, True),
    "wmt_post_ln": ("bleu", 30.0779, True),
    "wmt_attention_temp": ("bleu", 29.3379, True),
    "wmt_glu_tanh": ("bleu", 29.5779, True),
}
_WORKLOAD_DIR = re.compile(r"(.*)_(jax|pytorch)$")
_TRIAL_DIR = re.compile(r"trial_(\d+)$")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class LogsError(ValueError):
    """AlgoPerf logs that cannot be read or scored (one line)."""


def base_workload_name(name: str) -> str:
    """AlgoPerf's ``get_base_workload_name``: the first base workload contained in ``name``."""
    return next((b for b in BASE_WORKLOADS if b in name), name)


def _csvs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(MEASUREMENTS) if p.is_file())


def is_algoperf_logs(path: str | Path) -> bool:
    """Whether ``path`` holds AlgoPerf ``eval_measurements.csv`` logs (and no optforge run)."""
    root = Path(path)
    return root.is_dir() and not (root / "run.json").exists() and bool(_csvs(root))


def _float(text: str | None, where: str) -> float:
    if text is None or text == "":
        return math.nan  # a row without this value (e.g. the final score-only row)
    try:
        return float(text)
    except ValueError:
        raise LogsError(f"{where}: {text!r} is not a number") from None


def _read_curve(path: Path, metric_col: str) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and metric_col not in rows[0]:
        raise LogsError(f"{path} has no column {metric_col!r}")
    if rows and "score" not in rows[0]:
        raise LogsError(f"{path} has no column 'score' (the submission time)")
    curve = []
    for i, row in enumerate(rows, 2):
        where = f"{path}, line {i}"
        m, t = _float(row.get(metric_col), where), _float(row.get("score"), where)
        s = _float(row.get("global_step"), where)
        curve.append({"step": None if math.isnan(s) else int(s),
                      "train_time_s": None if math.isnan(t) else t,
                      "metric": m if math.isfinite(m) else None})
    return curve


def _record(path: Path, submission: str, study: int, study_dir: str) -> dict[str, Any]:
    trial_dir, workload_dir = path.parent.name, path.parent.parent.name
    match = _WORKLOAD_DIR.match(workload_dir)
    if not match:
        raise LogsError(f"{path.parent.parent}: workload folders are named "
                        "<workload>_jax or <workload>_pytorch")
    workload = match.group(1)
    if workload not in TARGETS:
        raise LogsError(f"{path}: '{workload}' is not a scored AlgoPerf workload (known: "
                        f"{', '.join(sorted(TARGETS))})")
    metric, target, higher = TARGETS[workload]
    curve = _read_curve(path, f"validation/{metric}")
    rec: dict[str, Any] = {
        "trial_id": (f"{_SAFE.sub('_', workload)}--{_SAFE.sub('_', submission)}--s{study}-t"
                     f"{_TRIAL_DIR.match(trial_dir).group(1)}"),
        "workload": workload, "submission": submission, "study": study,
        "study_dir": study_dir, "trial": int(_TRIAL_DIR.match(trial_dir).group(1)),
        "framework": match.group(2), "source": str(path), "status": "ok", "error": None,
        "metric_name": metric, "target": target, "higher_is_better": higher, "curve": curve,
        "steps": max((p["step"] for p in curve if p["step"] is not None), default=0),
        "train_time_s": max((p["train_time_s"] for p in curve
                             if p["train_time_s"] is not None), default=None),
        "eval_time_s": None,
    }
    values = [p["metric"] for p in curve if p["metric"] is not None]
    rec["best_metric"] = (max(values) if higher else min(values)) if values else None
    idx = first_reach_index(rec)
    rec.update(reached_target=idx is not None,
               time_to_target_s=None if idx is None else curve[idx]["train_time_s"],
               steps_to_target=None if idx is None else curve[idx]["step"])
    return rec


def _read(root: Path) -> list[dict[str, Any]]:
    csvs = [p for p in _csvs(root) if _TRIAL_DIR.match(p.parent.name)]
    if not csvs:
        raise LogsError(f"{root} holds no <study>/<workload>_<framework>/trial_<k>/"
                        f"{MEASUREMENTS} logs")
    depths = {len(p.relative_to(root).parts) for p in csvs}
    if depths not in ({4}, {5}):
        raise LogsError(f"{root} mixes folder layouts; give a submission directory "
                        "(<submission>/<study>/...) or one experiment directory (<study>/...)")
    records = []
    by_sub: dict[str, list[Path]] = {}
    for p in csvs:
        parts = p.relative_to(root).parts
        sub = parts[0] if len(parts) == 5 else root.resolve().name
        by_sub.setdefault(sub, []).append(p)
    for sub, paths in sorted(by_sub.items()):
        study_dirs = sorted({p.parent.parent.parent.name for p in paths})
        for p in paths:
            study_dir = p.parent.parent.parent.name
            records.append(_record(p, sub, study_dirs.index(study_dir), study_dir))
    seen: dict[tuple[str, str, int, int], str] = {}
    for r in records:
        k = (r["submission"], r["workload"], r["study"], r["trial"])
        if k in seen:
            raise LogsError(f"two logs for {r['submission']} / {r['workload']} / "
                            f"{r['study_dir']} / trial_{r['trial']}: {seen[k]} and {r['source']}")
        seen[k] = r["source"]
    return records


def import_logs(logs_dir: str | Path, out_dir: str | Path) -> Path:
    """Read the AlgoPerf logs under ``logs_dir`` into an optforge run folder ``out_dir``
    (``run.json`` and ``trials/*.json``, replacing an earlier import there); return it.

    Raises:
        LogsError: no logs, a mixed layout, an unknown workload, a CSV without the target
            metric or ``score`` column, or two logs for the same trial.
    """
    root, out = Path(logs_dir), Path(out_dir)
    records = _read(root)
    subs = sorted({r["submission"] for r in records})
    names = sorted({r["workload"] for r in records})
    studies = max(r["study"] for r in records) + 1
    counts: dict[tuple[str, str, int], int] = {}
    for r in records:
        key = (r["submission"], r["workload"], r["study"])
        counts[key] = counts.get(key, 0) + 1
    trials = max(counts.values())
    self_tuning = trials == 1
    workloads = {
        w: {"name": w, "metric_name": TARGETS[w][0], "target": TARGETS[w][1],
            "higher_is_better": TARGETS[w][2], "held_out": w not in BASE_WORKLOADS,
            "base": base_workload_name(w) if w not in BASE_WORKLOADS else None}
        for w in names
    }
    info = {
        "config": {"workloads": names, "submissions": subs,
                   "ruleset": "self" if self_tuning else "external",
                   "num_trials": trials, "num_studies": studies, "seed": None},
        "ruleset": {"name": "self" if self_tuning else "external", "num_trials": trials,
                    "num_studies": studies, "budget_scale": 1.5 if self_tuning else 1.0},
        "workloads": workloads,
        "protocol": {**get_protocol("algoperf").to_json(),
                     "base_workloads": list(BASE_WORKLOADS)},
        "source": f"AlgoPerf logs in {root}",
        "trial_ids": [r["trial_id"] for r in records],
        "sessions": [],
    }
    trials_dir = out / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)
    for old in trials_dir.glob("*.json"):
        old.unlink()
    for r in records:
        (trials_dir / f"{r['trial_id']}.json").write_text(json.dumps(r, indent=1) + "\n",
                                                          encoding="utf-8")
    (out / "run.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return out
