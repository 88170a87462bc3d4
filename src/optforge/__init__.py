"""optforge: optimization algorithms for PyTorch.

Drop-in optimizers (``optforge.optim``), low-rank training (``optforge.lowrank``), zeroth-order
training (``optforge.zo``), search (``optforge.search``), fused kernels (``optforge.kernels``) and
an AlgoPerf-style benchmark harness (``optforge.bench``, command ``optforge bench``).
"""

from optforge.optim.registry import create_optimizer, list_optimizers, register_optimizer

__version__ = "0.1.0"
__all__ = ["__version__", "create_optimizer", "list_optimizers", "register_optimizer"]
