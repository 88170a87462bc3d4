"""First-order drop-in optimizers and gradient transforms.

Optimizers (``torch.optim.Optimizer`` subclasses): ``Lion``, ``LAMB``, ``LARS``.
Wrappers around any optimizer: ``GradientNoise``, ``AGVM``. First-layer transform: ``TrAct``.
"""

from optforge.optim.agvm import AGVM
from optforge.optim.gradient_noise import GradientNoise
from optforge.optim.lamb import LAMB
from optforge.optim.lars import LARS
from optforge.optim.lion import Lion
from optforge.optim.registry import (
    create_optimizer,
    decay_param_groups,
    list_optimizers,
    register_optimizer,
)
from optforge.optim.tract import TrAct
from optforge.optim.wrapper import OptimizerWrapper

__all__ = [
    "AGVM",
    "LAMB",
    "LARS",
    "GradientNoise",
    "Lion",
    "OptimizerWrapper",
    "TrAct",
    "create_optimizer",
    "decay_param_groups",
    "list_optimizers",
    "register_optimizer",
]
