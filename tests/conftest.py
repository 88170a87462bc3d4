"""Seed torch for every test; skip ``gpu`` tests where no CUDA device exists; Triton interpreter."""

import os
import random

import numpy as np
import pytest
import torch

# The Triton interpreter must be on before any @triton.jit function is defined, and collecting
# any test module imports optforge.optim, which imports optforge.kernels.triton: set it here, in
# the first conftest pytest loads. Only without CUDA (on a GPU the kernels run compiled; on CPU
# inductor emits C++, which the variable does not touch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
