"""Argument checks shared by every optforge component.

Each check raises with a message that names the argument, the allowed range and the value
received, e.g. ``ValueError: lr must be >= 0 (got -1.0)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = [
    "check_betas",
    "check_count",
    "check_in_range",
    "check_int",
    "check_integer",
    "check_non_negative",
    "check_positive",
]


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number (got {type(value).__name__}: {value!r})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite (got {value})")
    return float(value)


def check_non_negative(name: str, value: object) -> float:
    """``value >= 0``, finite."""
    v = _check_number(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0 (got {value})")
    return v


def check_positive(name: str, value: object) -> float:
    """``value > 0``, finite."""
    v = _check_number(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0 (got {value})")
    return v


def check_in_range(
    name: str, value: object, low: float, high: float, *, high_inclusive: bool = False
) -> float:
    """``low <= value < high`` (or ``<= high`` with ``high_inclusive``)."""
    v = _check_number(name, value)
    ok = low <= v <= high if high_inclusive else low <= v < high
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket} (got {value})")
    return v


def check_betas(value: object, name: str = "betas") -> tuple[float, float]:
    """A pair of coefficients, each in [0, 1)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2) (got {value!r})")
    return (
        check_in_range(f"{name}[0]", value[0], 0.0, 1.0),
        check_in_range(f"{name}[1]", value[1], 0.0, 1.0),
    )


def check_int(name: str, value: object, low: int | None = None) -> int:
    """An ``int`` (not a bool), ``>= low`` when ``low`` is given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (got {type(value).__name__}: {value!r})")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low} (got {value})")
    return value


def check_integer(name: str, value: object, low: int | None = None) -> int:
    """``check_int`` that also takes numpy integers (array elements, ``np.arange``), as ``int``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    return check_int(name, value, low)


def check_count(name: str, value: object) -> int:
    """A non-negative integer count, given as an ``int`` or a 0-d integer tensor (checkpoints)."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer scalar (got {value.dtype} {value!r})")
        value = int(value)
    return check_int(name, value, 0)
