"""Which precision a network runs in, chosen from the hardware it runs on.

`auto` (every command's default) is bf16 autocast on CUDA, as the release runs; on a CPU it is bf16 when
the CPU multiplies bf16 natively (AVX512-BF16 or AMX: a bf16 GEMM several times the fp32 rate) and fp32
elsewhere — on a CPU without those instructions bf16 GEMMs are emulated and run hundreds of times slower.
CPUs of one machine type differ, so this is found out, not assumed: the CPU's flags (Linux
/proc/cpuinfo) and a short timed GEMM probe, once per process. An explicit `--precision bf16` on a CPU
without native bf16 runs, after a warning that gives the measured ratio. What stays fp32 under bf16 and
why: docs/conventions.md#bf16.

PIXELDIT_CPU_BF16=1 or 0 overrides the detection (a CPU the probe misjudges; tests).
"""

import functools
import os
import sys
import time
from dataclasses import dataclass

import torch

from .choices import Precision, values
from .errors import PixelDiTError

PRECISIONS = values(Precision)  # ("auto", "fp32", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the x86 instructions that multiply bf16 natively
PROBE_SIZE = 512  # the probe's GEMM where the flags say native: 0.27 GFLOP, ~1 ms in bf16 there
NATIVE_RATIO = 1.2  # bf16 at least this many times the fp32 rate counts as native


@dataclass(frozen=True)
class CpuBf16:
    """What this CPU does with bf16: native or not, its bf16 / fp32 GEMM rate ratio, and why we think so."""

    native: bool
    ratio: float | None  # measured bf16 / fp32 GEMM rate (None: not measured)
    flags: tuple  # the BF16_FLAGS this CPU reports
    how: str  # "flags and probe", "probe", "PIXELDIT_CPU_BF16"


@dataclass(frozen=True)
class Choice:
    precision: str  # fp32 | bf16
    reason: str  # one line for results.json and --json


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is not there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def gemm_ratio(n: int = PROBE_SIZE, seconds: float = 0.02) -> float:
    """bf16 / fp32 rate of an n³ GEMM on this CPU, best of repeated runs within `seconds` each."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up: thread pool, kernel selection
        t_best, start = float("inf"), time.perf_counter()
        while True:
            t0 = time.perf_counter()
            x @ y
            t_best = min(t_best, time.perf_counter() - t0)
            if time.perf_counter() - start > seconds:
                break
        best[dtype] = t_best
    return best[torch.float32] / best[torch.bfloat16]


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> CpuBf16:
    """Whether this CPU multiplies bf16 natively (cached for the process)."""
    forced = os.environ.get("PIXELDIT_CPU_BF16", "").strip()
    flags = tuple(f for f in BF16_FLAGS if f in cpu_flags())
    if forced in ("0", "1"):
        return CpuBf16(forced == "1", None, flags, "PIXELDIT_CPU_BF16")
    if not flags and cpu_flags():  # a Linux x86 CPU without the instructions: emulated, no need to time it
        return CpuBf16(False, None, flags, "flags")
    ratio = gemm_ratio() if flags else gemm_ratio(n=256)  # no flags to go by (not Linux): a smaller probe
    return CpuBf16(ratio >= NATIVE_RATIO, ratio, flags, "flags and probe" if flags else "probe")


def _describe(info: CpuBf16) -> str:
    if info.how == "PIXELDIT_CPU_BF16":
        return f"PIXELDIT_CPU_BF16={int(info.native)} says so"
    said = f"{', '.join(info.flags)}" if info.flags else "no avx512_bf16 / amx_bf16"
    measured = f", bf16 GEMM {info.ratio:.1f}x the fp32 rate" if info.ratio is not None else ""
    return f"{said}{measured}"


def choose(precision: str, device: torch.device) -> Choice:
    """The precision a network runs in on `device`, and why; one line for an unknown name."""
    if precision not in PRECISIONS:
        raise PixelDiTError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if device.type != "cpu":
        if precision == "auto":
            return Choice("bf16", f"auto: bf16 autocast on {device.type}, as the release runs")
        return Choice(precision, f"asked for ({precision})")
    if precision == "fp32":
        return Choice("fp32", "asked for (fp32)")
    info = cpu_bf16()
    if precision == "auto":
        if info.native:
            return Choice("bf16", f"auto: this CPU multiplies bf16 natively ({_describe(info)})")
        return Choice("fp32", f"auto: fp32, this CPU has no native bf16 ({_describe(info)})")
    if not info.native:  # asked for bf16 where it is emulated: run it, but say what it costs
        if info.ratio is None and info.how != "PIXELDIT_CPU_BF16":
            info = CpuBf16(False, gemm_ratio(seconds=0.005), info.flags, info.how)
        _warn_once(f"warning: bf16 on this CPU is emulated ({_describe(info)}): expect a slow run; --precision "
                   "fp32 (or auto) is faster here")  # fmt: skip
        return Choice("bf16", f"asked for (bf16), emulated on this CPU ({_describe(info)})")
    return Choice("bf16", f"asked for (bf16); this CPU multiplies bf16 natively ({_describe(info)})")


@functools.cache
def _warn_once(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' | 'fp32' | 'bf16' -> what runs: 'fp32' or 'bf16' (choose() also says why)."""
    return choose(precision, device).precision


def autocast_dtype(precision: str):
    """The autocast dtype a resolved precision stands for (None: plain fp32)."""
    return torch.bfloat16 if precision == "bf16" else None
