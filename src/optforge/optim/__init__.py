"""First-order drop-in optimizers and gradient transforms.

Optimizers (``torch.optim.Optimizer`` subclasses): ``AdamW``, ``Lion``, ``LAMB``, ``LARS``,
``SGD``, and the 8-bit-state ``AdamW8bit`` and ``Lion8bit``.
Wrappers around any optimizer: ``GradientNoise``, ``AGVM``. First-layer transform: ``TrAct``.
The base classes (``OptimizerBase``, ``FirstOrderOptimizer``, ``ZerothOrderOptimizer``,
``StateSpec``) and the update rules (``optforge.optim.rules``) are what a new method builds on
(docs: "Adding an optimizer").
"""

from optforge.optim.adamw import AdamW
from optforge.optim.agvm import AGVM
from optforge.optim.base import (
    FirstOrderOptimizer,
    OptimizerBase,
    StateSpec,
    ZerothOrderOptimizer,
)
from optforge.optim.eightbit import AdamW8bit, Lion8bit
from optforge.optim.gradient_noise import GradientNoise
from optforge.optim.lamb import LAMB
from optforge.optim.lars import LARS
from optforge.optim.lion import Lion
from optforge.optim.sgd import SGD
from optforge.optim.tract import TrAct
from optforge.optim.wrapper import OptimizerWrapper
from optforge.registry import (
    create_optimizer,
    decay_param_groups,
    list_optimizers,
    register_optimizer,
)

__all__ = [
    "AGVM",
    "AdamW",
    "AdamW8bit",
    "Lion8bit",
    "FirstOrderOptimizer",
    "OptimizerBase",
    "StateSpec",
    "ZerothOrderOptimizer",
    "LAMB",
    "LARS",
    "GradientNoise",
    "Lion",
    "OptimizerWrapper",
    "SGD",
    "TrAct",
    "create_optimizer",
    "decay_param_groups",
    "list_optimizers",
    "register_optimizer",
]

# Triton kernels serve the rules above on CUDA when Triton is installed (no import otherwise).
from optforge.kernels.triton import register_if_available as _register_triton  # noqa: E402

_register_triton()

# The compile-free C loops serve Lion, AdamW and SGD-momentum on fp32 CPU tensors under
# ``auto`` (built on first use; without a C compiler the other tiers run).
from optforge.kernels.exact_cpu import register as _register_native  # noqa: E402

_register_native()
