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


def count(name: str, value, lo: int, hi: int, hint: str = ""):
    """An integer in [lo, hi]. Every count a user gives has an upper bound: a typo such as --n 10^12 or
    --steps 1e9 is one line at once, not hours of work or a todo list that fills the memory."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PixelDiTError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise PixelDiTError(f"{name} must be at least {lo}, got {value}", hint)
    if value > hi:
        raise PixelDiTError(f"{name} must be at most {hi:,}, got {value:,}", hint or "is it a typo?")
    return value


# The bounds: far above any real job, far below what breaks (memory, int64 seeds, hours of compute).
MAX_IMAGES = 10_000_000  # --n (ImageNet's 50K evaluations are 200x below this)
MAX_STEPS = 10_000  # solver / edit steps (the release samples with 25-250)
MAX_SEEDS = 10_000  # edit --num-seeds
MAX_PROCS = 1024  # --nproc
MAX_SEED = 2**62  # seed + i stays a valid 64-bit generator seed for every index
MAX_CFG = 1_000.0  # a guidance scale beyond this only overflows (black images)
SHIFT_RANGE = (1e-4, 1e4)  # t / (t + (1 - t)·s): outside this every step collapses to t = 0 or 1


def seed(name: str, value: int, n: int = 1):
    """A seed such that seed + i (i < n) is still a 64-bit generator seed."""
    if isinstance(value, int) and value < 0:
        raise PixelDiTError(f"{name} must be 0 or more, got {value}", "sample i uses seed + i")
    count(name, value, 0, MAX_SEED - n, "sample i uses seed + i, which must stay a 64-bit seed")
    return value


def shift(name: str, value):
    """A time shift: positive and within SHIFT_RANGE."""
    positive(name, value)
    return finite(name, value, *SHIFT_RANGE)
