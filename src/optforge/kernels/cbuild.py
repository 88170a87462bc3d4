"""Build, cache and load optforge's small C kernels (``eightbit_cpu.c``, ``exact_cpu.c``).

Each source is compiled on first use with the system C compiler (``$CC``, ``cc``, ``gcc`` or
``clang``: the compiler inductor needs on CPU too) in about a second, and cached under
``$XDG_CACHE_HOME/optforge`` (``~/.cache``) by a hash of the source, the flags, the compiler
and the CPU, so a new source, compiler or machine builds afresh and nothing stale is loaded.
A build that fails, or a machine without a compiler, warns once and gives None: every caller
has an eager path to fall back on.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build", "compiler"]


def compiler() -> tuple[str, str] | None:
    """The first C compiler that answers ``--version``, and that answer; or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if not name:
            continue
        try:
            out = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return name, out.stdout
    return None


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("flags", "model name")))
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "optforge"


def build(
    source: Path, flags: Sequence[str], *, optional: Sequence[str] = (), fallback: str
) -> ctypes.CDLL | None:
    """``source`` compiled with ``flags`` (and ``optional`` flags, dropped if the compiler
    refuses them) into a cached shared library, loaded; None with a warning that ends in
    ``fallback`` (what runs instead) when there is no compiler or the build fails."""
    if platform.system() == "Windows":
        return None
    found = compiler()
    if found is None:
        warnings.warn(f"optforge: no C compiler found; {fallback}", RuntimeWarning, stacklevel=3)
        return None
    cc, version = found
    text = source.read_bytes()
    key = hashlib.sha256(
        b"\0".join([text, " ".join([*flags, *optional]).encode(), version.encode(),
                    _cpu_id().encode()])
    ).hexdigest()[:24]
    path = _cache_dir() / f"{source.stem}_{key}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                out = Path(tmp) / path.name
                for extra in ((tuple(optional), ()) if optional else ((),)):
                    done = subprocess.run(
                        [cc, *flags, *extra, str(source), "-o", str(out), "-lm"],
                        capture_output=True, text=True, timeout=300,
                    )
                    if done.returncode == 0:
                        break
                else:
                    raise RuntimeError(done.stderr.strip().splitlines()[-1:] or done.returncode)
                os.replace(out, path)  # atomic: concurrent builders never see half a file
        return ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        warnings.warn(
            f"optforge: building {source.name} failed ({exc}); {fallback}",
            RuntimeWarning, stacklevel=3,
        )
        return None


_LOADED: dict[Path, Any] = {}


def load(
    source: Path, flags: Sequence[str], *, switch: str, fallback: str,
    declare: Callable[[ctypes.CDLL], None], optional: Sequence[str] = (),
) -> ctypes.CDLL | None:
    """``build`` once per process and source, then ``declare`` (the functions' ctypes
    signatures); None when the environment variable ``switch`` is ``"0"`` or the build fails."""
    if source not in _LOADED:
        lib = None
        if os.environ.get(switch, "1") != "0":
            lib = build(source, flags, optional=optional, fallback=fallback)
            if lib is not None:
                declare(lib)
        _LOADED[source] = lib
    return _LOADED[source]
