"""Your own submissions and workloads by ``module:attr``, in the main process and every worker.

``optforge bench run --submissions adamw,mysubs:MY_ADAMW --workloads mywl:Quadratic ...``
imports ``mysubs`` (from the current folder or the Python path), takes ``MY_ADAMW`` and
registers it under its ``name``. The attribute may be a ``Submission`` or ``Workload``
instance, a subclass of either, or a function returning one. Trials look submissions and
workloads up by name, so each worker process (local pool, Dask, Ray) loads the same
``module:attr`` names before its trial: the module must be importable there too.

Example::

    load_plugin("mysubs:MY_ADAMW")   # -> ("submission", "my_adamw")
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Iterable

__all__ = ["is_plugin", "load_plugin", "load_plugins"]

_LOADED: dict[str, tuple[str, str]] = {}


def is_plugin(name: str) -> bool:
    """Whether ``name`` is a ``module:attr`` reference rather than a registered name."""
    return ":" in name


def load_plugin(spec: str) -> tuple[str, str]:
    """Import ``module:attr``, register it; return ``(kind, registered name)``.

    Raises:
        ValueError: a malformed reference, a module or attribute that cannot be found, or an
            object that is neither a submission nor a workload.
    """
    if spec in _LOADED:
        return _LOADED[spec]
    from optforge.bench.submission import Submission, register_submission
    from optforge.bench.workload import Workload
    from optforge.bench.workloads import register_workload

    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"expected module:attr (got {spec!r})")
    if os.getcwd() not in sys.path:  # as `python -m` would: modules next to the user first
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cannot import {module!r} for {spec!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module!r} has no attribute {attr!r} (in {spec!r})")
        obj = getattr(obj, part)
    kinds = (Submission, Workload)
    if isinstance(obj, kinds):

        def factory(_obj=obj):  # a fresh copy per trial, as the registry's factories give
            return copy.deepcopy(_obj)
    elif callable(obj):
        factory = obj
    else:
        raise ValueError(
            f"{spec} must be a Submission or Workload, a subclass of one, or a "
            f"function returning one (got {type(obj).__name__})"
        )
    made = factory()
    if not isinstance(made, kinds) or not made.name:
        raise ValueError(
            f"{spec} must give a Submission or Workload with a name (got {type(made).__name__})"
        )
    if isinstance(made, Submission):
        register_submission(made.name, factory, overwrite=True)
        _LOADED[spec] = ("submission", made.name)
    else:
        register_workload(made.name, factory, overwrite=True)
        _LOADED[spec] = ("workload", made.name)
    return _LOADED[spec]


def load_plugins(specs: Iterable[str]) -> None:
    """:func:`load_plugin` each of ``specs`` (cached: a worker imports each module once)."""
    for spec in specs:
        load_plugin(spec)
