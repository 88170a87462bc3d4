"""Update kernels and the dispatch that picks them.

Kernels know nothing of optimizer classes: they take a pure per-tensor update ``Rule`` and lists
of tensors. ``apply_rule_`` groups the tensors by device and dtype and runs each group on a
backend: the eager loop (the reference), a tiled multi-tensor eager path, ``torch.compile``
graphs over chunks of the list, or a kernel registered for the rule with ``register_kernel``
(hand-written Triton kernels plug in there). An optimizer never imports Triton.
"""

from optforge.kernels.dispatch import (
    BACKENDS,
    Rule,
    all_finite,
    apply_rule_,
    check_backend,
    register_kernel,
    resolve_backend,
    unscaled,
)

__all__ = [
    "BACKENDS",
    "Rule",
    "all_finite",
    "apply_rule_",
    "check_backend",
    "register_kernel",
    "resolve_backend",
    "unscaled",
]
