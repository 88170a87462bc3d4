"""``algoperf.random_utils`` for PyTorch submission files: AlgoPerf's numpy key functions.

A key is a numpy int32 array of two seeds; ``split`` and ``fold_in`` derive new keys with
``numpy.random.RandomState``, as AlgoPerf's PyTorch (numpy) path does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PRNGKey", "fold_in", "split"]

_MAX = 2**31 - 1


def _state(seed: Any) -> np.random.RandomState:
    if isinstance(seed, (list, tuple, np.ndarray)):
        seed = [int(s) % _MAX for s in np.asarray(seed).ravel().tolist()]
    else:
        seed = int(seed) % _MAX
    return np.random.RandomState(seed=seed)


def split(seed: Any, num: int = 2) -> np.ndarray:
    """``num`` new keys, shape ``(num, 2)``."""
    return _state(seed).randint(0, _MAX, dtype=np.int32, size=[num, 2])


def fold_in(seed: Any, data: Any) -> list[Any]:
    """A key mixing ``seed`` with ``data`` (e.g. the step)."""
    return [_state(seed).randint(0, _MAX, dtype=np.int32), data]


def PRNGKey(seed: Any) -> np.ndarray:  # noqa: N802 - AlgoPerf's name
    """The key for an integer seed."""
    return split(seed, num=2)[0]
