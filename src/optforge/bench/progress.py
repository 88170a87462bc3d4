"""Per-trial step progress, so the bar moves while long trials run, not only when they end.

A worker's trial writes ``step step_limit`` to ``OUT/.progress/<trial_id>`` at most twice a
second (:class:`StepFile`); the main process reads the files of the running trials
(:func:`read_fraction`) and shows finished trials plus the running ones' fractions. Writing
is best effort: a worker that cannot reach the folder (another machine) only shows no progress.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

__all__ = ["PROGRESS_DIR", "StepFile", "read_fraction"]

PROGRESS_DIR = ".progress"


class StepFile:
    """``progress(step, step_limit)`` callback for ``run_trial`` that writes to ``path``."""

    def __init__(self, path: str | Path, period_s: float = 0.5) -> None:
        self.path, self.period_s, self._last = Path(path), period_s, 0.0

    def __call__(self, step: int, step_limit: int) -> None:
        now = time.monotonic()
        if now - self._last < self.period_s and step < step_limit:
            return
        self._last = now
        with contextlib.suppress(OSError):
            self.path.write_text(f"{step} {step_limit}")


def read_fraction(path: str | Path) -> float:
    """Fraction of its step limit that the trial writing ``path`` has done (0 if unknown)."""
    try:
        step, limit = map(int, Path(path).read_text().split())
    except (OSError, ValueError):
        return 0.0
    return min(1.0, step / limit) if limit > 0 else 0.0
