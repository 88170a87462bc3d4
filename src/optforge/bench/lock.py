"""One run per output folder: an advisory lock on ``OUT/.lock`` held for the whole run.

Two runs into one folder would run every trial twice and overwrite each other's records. The
lock is ``fcntl.flock`` on an open file, so the operating system drops it when the holder
exits in any way (``kill -9`` included): a crashed run never leaves the folder locked. The file
keeps the holder's pid and command for the refusal message. Where ``fcntl`` is missing
(Windows) the lock is a no-op.

Example::

    with OutLock("bench-out", command="optforge bench ..."):
        ...  # run trials
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

__all__ = ["FolderInUse", "OutLock"]

LOCK_NAME = ".lock"


class FolderInUse(RuntimeError):
    """Another live process holds the output folder's lock."""


class OutLock:
    """Exclusive, non-blocking lock on ``out/.lock`` (a context manager)."""

    def __init__(self, out: str | Path, command: str = "") -> None:
        self.path = Path(out) / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FolderInUse(
                f"{self.path.parent} is in use by another optforge bench run "
                f"({self._holder()}); wait for it to end or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "command": self.command,
                    "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
            ).encode(),
        )
        self._fd = fd

    def _holder(self) -> str:
        try:
            h = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {h['pid']}, since {h['since']}: {h['command'] or '?'}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (unlinking races)
            self._fd = None

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
