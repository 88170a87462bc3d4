"""Hand-written Triton kernels for optforge's update rules, registered behind the dispatch.

Nothing here is imported unless Triton is installed: ``register()`` (called by
``optforge.optim`` on import when CUDA and Triton are both present) registers one kernel per
rule with ``optforge.kernels.register_kernel`` under the backend name ``"triton"``; ``auto``
then runs them on CUDA. Tests register them for CPU tensors under ``TRITON_INTERPRET=1``
(the variable must be set before this package's kernels are defined).

Kernels: AdamW (fp32/bf16/fp16 parameters, optional fp32 master weights and stochastic
rounding), Lion, SGD with momentum, LAMB (per-tensor norms as block partials, then the
update), the inner Adam of low-rank optimizers on projected states, and AdamW8bit/Lion8bit
on blockwise 8-bit state. Each is one launch per
(device, dtype) group per step (LAMB: two), over a table of per-tensor offsets
(``launch.TensorTable``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

__all__ = ["available", "register", "register_if_available"]

#: parameter dtypes the kernels serve.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def available() -> bool:
    """Triton importable and a CUDA device present (the kernels' production setting)."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def register(devices: Sequence[str] = ("cuda",)) -> None:
    """Register every kernel for ``devices`` (``("cpu",)`` under ``TRITON_INTERPRET=1`` in
    tests; ``()`` withdraws them)."""
    from optforge.kernels.triton import adam, eightbit, lamb, lion, sgd

    for module in (adam, eightbit, lamb, lion, sgd):
        module.register(tuple(devices), DTYPES)


def register_if_available() -> bool:
    """``register()`` on CUDA when Triton is installed; a no-op (no Triton import) otherwise."""
    if not available():
        return False
    register(("cuda",))
    return True
