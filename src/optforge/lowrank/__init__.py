"""Low-rank and memory-frugal training: GaLore, Q-GaLore, Natural GaLore, Fira, FRUGAL, LISA.

Every method is one configuration of ``ProjectedOptimizer`` (projector + inner rule + residual
rule + switch policy, see ``optforge.lowrank.projected``), or a wrapper (LISA, per-layer steps):

=====================  ===============  ==============  ============  ==============
Method                 projector        inner           residual      on_switch
=====================  ===============  ==============  ============  ==============
``GaLoreAdamW``        svd              adam            none          keep
``GaLoreAdamW8bit``    svd              adam8bit        none          keep
``QGaLoreAdamW8bit``   svd, INT4 basis  adam8bit        none          keep, adaptive T
``NaturalGaLoreAdamW`` svd, two-sided   Woodbury, adam  none          keep
``FiraAdamW``          svd              adam            fira          keep
``FRUGAL``             svd/random/cols  adam on ρ       sign_sgd      reset
``LISA``               wrapper: γ sampled layers per period; the others' state freed
=====================  ===============  ==============  ============  ==============

Q-GaLore also keeps projected weights on an 8-bit grid by stochastic rounding; with
``quantize_linear_weights(model)`` they are stored as INT8 codes (``Int8Linear``).
``proj_type="std"`` is GaLore's official side; ``"reverse_std"`` (the default here) keeps the
moments on min(m, n) and uses the least memory. ``galore_param_groups`` builds the groups from a
model; ``PerLayerStep`` steps each parameter inside backward.
"""

from __future__ import annotations

from optforge.lowrank.fira import FiraAdamW
from optforge.lowrank.frugal import FRUGAL
from optforge.lowrank.galore import GaLoreAdamW, GaLoreAdamW8bit
from optforge.lowrank.groups import galore_param_groups
from optforge.lowrank.int8 import Int8Linear, quantize_linear_weights
from optforge.lowrank.lisa import LISA
from optforge.lowrank.natural_galore import NaturalGaLoreAdamW
from optforge.lowrank.per_layer import PerLayerStep
from optforge.lowrank.projected import ProjectedOptimizer
from optforge.lowrank.qgalore import QGaLoreAdamW8bit

__all__ = [
    "FRUGAL",
    "FiraAdamW",
    "GaLoreAdamW",
    "GaLoreAdamW8bit",
    "Int8Linear",
    "LISA",
    "NaturalGaLoreAdamW",
    "PerLayerStep",
    "ProjectedOptimizer",
    "QGaLoreAdamW8bit",
    "galore_param_groups",
    "quantize_linear_weights",
]
