"""Trial records on disk: read them, name the damaged ones, set those aside so they are rerun.

A record is ``OUT/trials/<trial_id>.json``, written atomically by the run. A file can still be
damaged by hand edits, a full disk or a copy cut short: empty, truncated, ``{}``, naming another
trial, or holding impossible numbers. Such a file is never taken as a finished trial (it would
be skipped forever, or hide the real record of its trial): :func:`scan_records` names it with the
reason, and :func:`set_aside_damaged` moves it to ``OUT/trials/damaged/`` so the trial runs again.

Example::

    records, damaged = scan_records("bench-out")   # {trial_id: record}, [(path, reason)]
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["DAMAGED_DIR", "check_record", "load_records", "scan_records", "set_aside_damaged"]

DAMAGED_DIR = "damaged"
_REQUIRED = ("trial_id", "workload", "submission", "status")
_STATUSES = ("ok", "diverged", "error")
_NON_NEGATIVE = ("time_to_target_s", "steps_to_target", "train_time_s", "eval_time_s", "steps")


def check_record(rec: Any, trial_id: str) -> str | None:
    """Why ``rec`` (decoded from ``<trial_id>.json``) is not a usable record, or None."""
    if not isinstance(rec, dict):
        return f"not a JSON object (got {type(rec).__name__})"
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        return f"missing {', '.join(missing)}"
    if rec["trial_id"] != trial_id:
        return f"its trial_id is {rec['trial_id']!r}, not the file's name"
    if rec["status"] not in _STATUSES:
        return f"status must be one of {', '.join(_STATUSES)} (got {rec['status']!r})"
    for key in _NON_NEGATIVE:
        v = rec.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            return f"{key} must be a finite number >= 0 or null (got {v!r})"
    if rec.get("reached_target") and (
        rec.get("time_to_target_s") is None or rec.get("steps_to_target") is None
    ):
        return "reached_target is true but time_to_target_s or steps_to_target is missing"
    return None


def scan_records(out_dir: str | Path) -> tuple[dict[str, dict[str, Any]], list[tuple[Path, str]]]:
    """``({trial_id: record}, [(path, reason), ...])`` over ``OUT/trials/*.json``.

    Records are keyed by their file name, so a file can only ever stand for its own trial.
    """
    records: dict[str, dict[str, Any]] = {}
    damaged: list[tuple[Path, str]] = []
    for p in sorted((Path(out_dir) / "trials").glob("*.json")):
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            damaged.append((p, f"unreadable ({e.strerror or e})"))
            continue
        if not text.strip():
            damaged.append((p, "empty file"))
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            damaged.append((p, f"not valid JSON, truncated? ({e.msg} at line {e.lineno})"))
            continue
        reason = check_record(rec, p.stem)
        if reason is None:
            records[p.stem] = rec
        else:
            damaged.append((p, reason))
    return records, damaged


def load_records(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``trial_id -> record`` for every usable ``OUT/trials/*.json`` (damaged ones left out)."""
    return scan_records(out_dir)[0]


def set_aside_damaged(damaged: list[tuple[Path, str]]) -> list[str]:
    """Move each damaged record to ``trials/damaged/`` (never overwriting an earlier one);
    return one line per file saying what was wrong and where it went."""
    lines = []
    for path, reason in damaged:
        dest_dir = path.parent / DAMAGED_DIR
        dest_dir.mkdir(exist_ok=True)
        dest, k = dest_dir / path.name, 1
        while dest.exists():
            dest, k = dest_dir / f"{path.stem}.{k}{path.suffix}", k + 1
        os.replace(path, dest)
        lines.append(f"damaged record {path} ({reason}) moved to {dest}; the trial will run again")
    return lines
