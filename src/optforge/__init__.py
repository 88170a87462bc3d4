"""optforge: optimization algorithms for PyTorch.

Drop-in optimizers (``optforge.optim``), low-rank training (``optforge.lowrank``), zeroth-order
training (``optforge.zo``), search (``optforge.search``), fused kernels (``optforge.kernels``),
the conformance suite (``optforge.testing``) and an AlgoPerf-style benchmark harness
(``optforge.bench``, command ``optforge bench``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "create_optimizer",
    "list_optimizers",
    "register_optimizer",
]

_REGISTRY_NAMES = ("create_optimizer", "list_optimizers", "register_optimizer")
_SUBPACKAGES = ("bench", "kernels", "lowrank", "optim", "search", "testing", "zo")


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one subpackage (e.g. optforge.search, which never depends on the
    # training optimizers) does not import the others; `optforge.optim.Lion` still works after
    # a bare `import optforge`.
    if name in _REGISTRY_NAMES:
        from optforge import registry

        return getattr(registry, name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"optforge.{name}")
    raise AttributeError(f"module 'optforge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_REGISTRY_NAMES, *_SUBPACKAGES})
