"""A run's trials as one flat table: a CSV next to ``summary.json``, or a pandas DataFrame.

One row per recorded trial, in the run's plan order: what ran (workload, submission, study,
trial, seed), how it ended (status, stop reason, steps, times, metrics) and every
hyperparameter it used, one ``hp.<name>`` column each. Damaged records are left out (the
report names them).

Example::

    from optforge.bench.results import load_results
    df = load_results("bench-out")                      # needs pandas
    df.groupby(["workload", "submission"]).steps_to_target.median()
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from optforge.bench.records import load_records

__all__ = ["COLUMNS", "load_results", "trial_rows", "write_csv"]

#: Record fields copied into the table, in this order; ``hp.<name>`` columns follow.
COLUMNS = (
    "trial_id",
    "workload",
    "submission",
    "study",
    "trial",
    "seed",
    "status",
    "stop_reason",
    "reached_target",
    "steps",
    "steps_to_target",
    "time_to_target_s",
    "train_time_s",
    "eval_time_s",
    "best_metric",
    "final_metric",
    "metric_name",
    "target",
    "time_budget_s",
    "step_limit",
    "torch_threads",
    "error",
)


def trial_rows(out_dir: str | Path) -> list[dict[str, Any]]:
    """One flat dict per recorded trial (plan order when ``run.json`` lists it)."""
    out = Path(out_dir)
    records = load_records(out)
    order = list(records)
    try:
        planned = json.loads((out / "run.json").read_text(encoding="utf-8"))["trial_ids"]
        order = [i for i in planned if i in records]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rows = []
    for i in order:
        r = records[i]
        row = {k: r.get(k) for k in COLUMNS}
        hp = r.get("hparams_used") or r.get("hparams") or {}
        row.update({f"hp.{k}": v for k, v in hp.items()})
        rows.append(row)
    return rows


def _header(rows: list[dict[str, Any]]) -> list[str]:
    return list(COLUMNS) + sorted({k for r in rows for k in r if k.startswith("hp.")})


def write_csv(out_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write the table to ``path`` (default ``OUT/trials.csv``); return the path."""
    rows = trial_rows(out_dir)
    header = _header(rows)
    path = Path(out_dir) / "trials.csv" if path is None else Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def load_results(out_dir: str | Path):
    """The run's trials as a ``pandas.DataFrame`` (one row per trial, ``hp.*`` columns).

    Raises:
        ImportError: pandas is not installed (``OUT/trials.csv`` holds the same table).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "load_results needs pandas (pip install pandas); "
            f"{Path(out_dir) / 'trials.csv'} holds the same table"
        ) from None
    rows = trial_rows(out_dir)
    return pd.DataFrame(rows, columns=_header(rows))
