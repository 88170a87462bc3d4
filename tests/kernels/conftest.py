"""The Triton interpreter must be on before any kernel is defined (triton 3.9: the variable is
read when ``@triton.jit`` runs, even after ``import triton``); set it here, before the test
modules import ``optforge.kernels.triton``. Only without CUDA: on a GPU machine it would also
turn inductor's generated kernels into interpreted ones."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
