"""Zeroth-order training: estimators, the MeZO family, DeepZero and a ZO2-style offload engine.

Nothing here reads ``.grad``: every optimizer's ``step(closure)`` takes a closure that returns
the loss (no backward), and every random direction comes from a dedicated generator keyed by
(seed, step, direction, parameter index).
"""

from optforge.zo.deepzero import DeepZero, cge, cge_sequential, zo_grasp_keep_ratios
from optforge.zo.directions import DISTRIBUTIONS, chunks, draw, sphere_scale
from optforge.zo.estimators import ZORecord, forward_gradient, perturb_, replay, spsa
from optforge.zo.mezo import MeZO, ZOAdam
from optforge.zo.offload import ZO2Offload

__all__ = [
    "DISTRIBUTIONS",
    "DeepZero",
    "MeZO",
    "ZOAdam",
    "ZO2Offload",
    "ZORecord",
    "cge",
    "cge_sequential",
    "chunks",
    "draw",
    "forward_gradient",
    "perturb_",
    "replay",
    "sphere_scale",
    "spsa",
    "zo_grasp_keep_ratios",
]
