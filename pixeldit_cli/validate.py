"""Checks for user-given numbers: finite, in range, said in one line before any work starts.

NaN compares false with everything, so `x < 0` lets a NaN through; every check here tests finiteness
first. Each returns the value, so a caller can check and use in one expression.
"""

import math

from .errors import PixelDiTError


def finite(name: str, value, lo: float | None = None, hi: float | None = None):
    """A finite number in [lo, hi] (either bound optional)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PixelDiTError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise PixelDiTError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and v < lo or hi is not None and v > hi:
        rng = f"at least {lo:g}" if hi is None else f"at most {hi:g}" if lo is None else f"in [{lo:g}, {hi:g}]"
        raise PixelDiTError(f"{name} must be {rng}, got {v:g}")
    return value


def positive(name: str, value):
    """A finite number > 0."""
    finite(name, value)
    if float(value) <= 0:
        raise PixelDiTError(f"{name} must be positive, got {float(value):g}")
    return value


def at_least(name: str, value: int, lo: int, hint: str = ""):
    """An integer >= lo."""
    if value is None or int(value) < lo:
        raise PixelDiTError(f"{name} must be at least {lo}, got {value}", hint)
    return value
