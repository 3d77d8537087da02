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
neither `train.compile` (the whole network compiled already), FSDP nor gradient checkpointing (not measured).
"""

import os
import warnings
from pathlib import Path

import torch

CHOICES = ("auto", "true", "false")
MIN_PIXELS = 64 * 64  # auto: per image


def cache_dir() -> Path:
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path.home() / ".cache" / "pixeldit" / "inductor")


def decide(choice: str, device, resolution: int, *, whole_compile: bool, fsdp: bool, checkpointing: bool):
    """(on, why) for train.compile_pixel_blocks; `choice` is auto | true | false (checked by the caller)."""
    choice = str(choice).lower()
    if choice != "auto":
        return choice == "true", f"train.compile_pixel_blocks {choice}"
    for off, why in (
        (torch.device(device).type != "cpu", "not a CPU (measured on CPUs only)"),
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
