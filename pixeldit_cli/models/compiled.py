"""Compiled pixel blocks for training: the pixel level's elementwise chain fused by torch.compile.

The pixel level works on (B·L, p², d) tensors with d = 16: per pixel, RMSNorm, the pixel-wise AdaLN
modulate, the gate and the residual, GELU in the MLP. Each is a separate memory-bound pass over a tensor
as large as the image times d, forward and backward — on a CPU about a third of a B/16 training step at 256²
(the GEMMs are the rest). torch.compile (inductor) fuses those passes into a few loops per block; the GEMMs
stay the same library calls. Measured on a B/16 @256 training step, fp32, 2 CPU threads: 1.23× (README,
`benchmarks/bench_train.py`), with about 30 s of compilation on the first step — paid once per machine:
inductor's cache is kept in ~/.cache/pixeldit/inductor (`TORCHINDUCTOR_CACHE_DIR` overrides), so later runs
and resumes load the kernels instead of compiling them.

Only the blocks' `forward` is replaced (an instance attribute): the module tree, the parameter names and
the state dict are the network's, so checkpoints, EMA, LoRA and the plain `model(x, t, y)` of an
uncompiled copy are unchanged. Sampling gains nothing from it (XL/16 @256: 0.98×, the patch-level GEMMs
dominate), so only the trainer uses it.

`train.compile_pixel_blocks auto` turns it on where it was measured to pay: a CPU, a pixel level of at least
64² pixels per image (the smoke preset's 32² gains too little to repay the compile in a short run), and
neither `train.compile` (the whole network compiled already), FSDP nor gradient checkpointing (not measured),
and what compiling needs on a CPU: a C++ compiler and a writable kernel cache (without them auto is off, and
`true` is one line before the run starts).
"""

import os
import warnings
from pathlib import Path

import torch

from ..errors import PixelDiTError

CHOICES = ("auto", "true", "false")
MIN_PIXELS = 64 * 64  # auto: per image


def cache_dir() -> Path:
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path.home() / ".cache" / "pixeldit" / "inductor")


def cpu_compiler() -> str | None:
    """The C++ compiler inductor would build CPU kernels with (its own search: $CXX, g++, ...), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler  # noqa: PLC0415 (heavy: only when training)

        return get_cpp_compiler()
    except Exception:  # not found, or a compiler that does not run
        return None


def _cache_writable() -> bool:
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        return os.access(cache_dir(), os.W_OK)
    except OSError:
        return False


def decide(choice: str, device, resolution: int, *, whole_compile: bool, fsdp: bool, checkpointing: bool):
    """(on, why) for train.compile_pixel_blocks; `choice` is auto | true | false (checked by the caller).
    What compiling needs on a CPU — a C++ compiler, a writable kernel cache — is checked here, before any
    work: `true` without it is one line; `auto` turns off and says why."""
    choice, cpu = str(choice).lower(), torch.device(device).type == "cpu"
    missing = None
    if cpu and choice != "false":
        if cpu_compiler() is None:
            missing = "no C++ compiler for inductor's CPU kernels (install g++, or set $CXX)"
        elif not _cache_writable():
            missing = f"the kernel cache {cache_dir()} is not writable (set TORCHINDUCTOR_CACHE_DIR)"
    if choice == "true" and missing:
        raise PixelDiTError(f"train.compile_pixel_blocks true: {missing}", "or use train.compile_pixel_blocks auto")
    if choice != "auto":
        return choice == "true", f"train.compile_pixel_blocks {choice}"
    for off, why in (
        (not cpu, "not a CPU (measured on CPUs only)"),
        (missing is not None, missing),
        (resolution * resolution < MIN_PIXELS, f"{resolution}² pixels: too few to repay the compile"),
        (whole_compile, "train.compile compiles the whole network"),
        (fsdp, "FSDP (not measured)"),
        (checkpointing, "gradient checkpointing (not measured)"),
    ):
        if off:
            return False, f"auto: off ({why})"
    return True, f"auto: on ({resolution}² pixels on a CPU)"


def compile_pixel_blocks(model) -> int:
    """Replace each pixel block's forward by its compiled version, in place; the number of blocks."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
    # RoPE's complex multiply stays an eager op inside the graph; inductor says so once per compile
    warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
    blocks = list(getattr(model, "pixel_blocks", []))
    for block in blocks:
        block.forward = torch.compile(block.forward, dynamic=False)
    return len(blocks)
