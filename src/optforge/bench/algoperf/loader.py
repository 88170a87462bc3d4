"""Loading an AlgoPerf submission file (a path, or ``module:attribute``) unmodified.

While the file loads, and only then, ``import algoperf`` (``algoperf.spec``,
``algoperf.pytorch_utils``, ``algoperf.random_utils``) is answered by optforge's stand-in
(:mod:`optforge.bench.algoperf.compat`) when the real ``algoperf`` package is not installed; the
file's own folder is on ``sys.path`` too, so it can import its helper modules. Afterwards both
are removed again: nothing outside the file sees the stand-in.

Example::

    >>> is_submission_ref("adamw"), is_submission_ref("subs/my_submission.py")
    (False, True)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["REQUIRED_FUNCTIONS", "LoadedSubmission", "is_submission_ref", "load_submission"]

#: The functions a submission must define (``prepare_for_eval`` is optional, as in AlgoPerf).
REQUIRED_FUNCTIONS = ("init_optimizer_state", "update_params", "data_selection",
                      "get_batch_size")
_COMPAT_MODULES = ("algoperf", "algoperf.spec", "algoperf.pytorch_utils", "algoperf.random_utils")


def is_submission_ref(name: str) -> bool:
    """Whether ``name`` names a submission file (``*.py`` or a path) or ``module:attribute``."""
    return name.endswith(".py") or os.sep in name or "/" in name or ":" in name


class LoadedSubmission:
    """The five functions of a loaded submission, and the ``spec`` module it was written against.

    Attributes:
        ref: the name as given.
        path: the file (None for ``module:attribute``).
        functions: name -> callable, for the four required functions and
            ``prepare_for_eval`` where defined.
        spec: the ``algoperf.spec`` module whose enums the submission compares against.
    """

    def __init__(self, ref: str, path: Path | None, source: Any, spec: ModuleType) -> None:
        self.ref, self.path, self.spec = ref, path, spec
        missing = [f for f in REQUIRED_FUNCTIONS if not callable(getattr(source, f, None))]
        if missing:
            raise ValueError(f"submission {ref!r} does not define {', '.join(missing)} "
                             "(AlgoPerf's submission API)")
        self.functions = {f: getattr(source, f) for f in
                          (*REQUIRED_FUNCTIONS, "prepare_for_eval")
                          if callable(getattr(source, f, None))}


def _real_algoperf() -> bool:
    if "algoperf" in sys.modules:
        return not getattr(sys.modules["algoperf"], "__optforge_compat__", False)
    return importlib.util.find_spec("algoperf") is not None


def _compat_modules() -> dict[str, ModuleType]:
    from optforge.bench.algoperf.compat import algoperf as pkg
    from optforge.bench.algoperf.compat.algoperf import pytorch_utils, random_utils, spec

    pkg.__optforge_compat__ = True
    return {"algoperf": pkg, "algoperf.spec": spec, "algoperf.pytorch_utils": pytorch_utils,
            "algoperf.random_utils": random_utils}


class _Serving:
    """Context: the stand-in ``algoperf`` and the file's folder are importable."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = str(folder) if folder is not None else None
        self.saved: dict[str, ModuleType | None] = {}
        self.compat = not _real_algoperf()

    def __enter__(self) -> _Serving:
        if self.compat:
            for name, mod in _compat_modules().items():
                self.saved[name] = sys.modules.get(name)
                sys.modules[name] = mod
        if self.folder is not None:
            sys.path.insert(0, self.folder)
        return self

    def spec(self) -> ModuleType:
        if self.compat:
            return sys.modules["algoperf.spec"]
        return importlib.import_module("algoperf.spec")

    def __exit__(self, *exc: object) -> None:
        if self.folder is not None and self.folder in sys.path:
            sys.path.remove(self.folder)
        for name, old in self.saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


_CACHE: dict[tuple[str, float], LoadedSubmission] = {}


def _explain(ref: str, exc: BaseException) -> ValueError:
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] == "absl":
        return ValueError(f"submission {ref!r} imports absl: pip install 'optforge[algoperf]'")
    return ValueError(f"cannot load submission {ref!r}: {type(exc).__name__}: {exc}")


def load_submission(ref: str) -> LoadedSubmission:
    """Load the submission file or ``module:attribute`` named ``ref`` (cached per process).

    Raises:
        ValueError: a missing or unloadable file, or a missing function (one line).
    """
    if ":" in ref and not ref.endswith(".py") and not os.path.exists(ref):
        module_name, _, attr = ref.partition(":")
        key = (ref, 0.0)
        if key not in _CACHE:
            with _Serving(None) as serving:
                try:
                    source = getattr(importlib.import_module(module_name), attr)
                except (ImportError, AttributeError, SyntaxError) as e:
                    raise _explain(ref, e) from None
                _CACHE[key] = LoadedSubmission(ref, None, source, serving.spec())
        return _CACHE[key]
    path = Path(ref).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"submission file {ref!r} does not exist")
    key = (str(path), path.stat().st_mtime)
    if key not in _CACHE:
        # A module name unique to the path, so two files called submission.py can coexist.
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        name = f"_optforge_submission_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"submission file {ref!r} is not a Python module")
        module = importlib.util.module_from_spec(spec)
        with _Serving(path.parent) as serving:
            sys.modules[name] = module  # dataclasses and pickling look the module up by name
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 - any error in user code is one line
                sys.modules.pop(name, None)
                raise _explain(ref, e) from None
            _CACHE[key] = LoadedSubmission(ref, path, module, serving.spec())
    return _CACHE[key]
