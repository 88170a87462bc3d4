"""optforge: optimization algorithms for PyTorch.

Drop-in optimizers (``optforge.optim``), low-rank training (``optforge.lowrank``), zeroth-order
training (``optforge.zo``), search (``optforge.search``), fused kernels (``optforge.kernels``) and
an AlgoPerf-style benchmark harness (``optforge.bench``, command ``optforge bench``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_optimizer", "list_optimizers", "register_optimizer"]

_REGISTRY_NAMES = ("create_optimizer", "list_optimizers", "register_optimizer")


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a subpackage (e.g. optforge.search, which never depends on the
    # training optimizers) does not import optforge.optim.
    if name in _REGISTRY_NAMES:
        from optforge.optim import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'optforge' has no attribute {name!r}")
