"""Fused update kernels and the dispatch that picks them.

Kernels know nothing of optimizer classes: they take a pure per-tensor update rule and lists of
tensors. ``apply_rule_`` runs the rule eagerly or compiles it with ``torch.compile`` (CPU and CUDA).
"""

from optforge.kernels.compiled import apply_rule_

__all__ = ["apply_rule_"]
