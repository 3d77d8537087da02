"""torch.compile where it was measured to pay: the pixel blocks for training, the whole network (frozen) for
CPU sampling.

**Training: compiled pixel blocks.**
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

**Sampling: the frozen network** (`sample --compile`, `pixeldit.sample(..., compile=True)`). On a CPU in
fp32, inductor's *freezing* treats the weights as constants: it folds them and prepacks every Linear for
oneDNN, with the bias and the elementwise tail fused. XL/16 @256 sampling: 1.22–1.26× the plain network
(1.07× compiled without freezing), within 1e-6 of it, at about a minute of compilation per batch shape — a
gain for long jobs, a loss for a few images. Frozen weights are the compile's constants: a network changed
in place after compiling (a merged LoRA, an optimizer step) would be sampled with its old weights, so the
library keeps its compiled network only while the parameters are the same tensors at the same versions,
and compiles anew otherwise (`cached_for_inference`; tested). The jobs load their network once.
"""

import os
import warnings
import weakref
from pathlib import Path

import torch

from ..errors import PixelDiTError
from .packed import weights_key

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


def _inductor_setup() -> None:
    """Before any compile here: the persistent kernel cache, and quiet about RoPE's complex multiply (it
    stays an eager op inside the graph; inductor would say so once per compile)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
    warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")


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
    _inductor_setup()
    blocks = list(getattr(model, "pixel_blocks", []))
    for block in blocks:
        block.forward = torch.compile(block.forward, dynamic=False)
    return len(blocks)


def for_inference(model, precision: str = "fp32"):
    """The network compiled for sampling: frozen on a CPU in fp32 (see above), plain torch.compile elsewhere."""
    _inductor_setup()
    compiled = torch.compile(model, dynamic=False)
    if next(model.parameters()).device.type != "cpu" or precision != "fp32":
        return compiled
    return _Frozen(compiled)


class _Frozen:
    """The compiled network, called with inductor's freezing on. Compilation happens at the first call of
    each shape, so the setting must hold around the calls (torch.compile's options= did not reach the
    freezing pass: measured 1.10× instead of 1.24×). Attributes are the network's (config, semantics, ...)."""

    def __init__(self, compiled):
        self._compiled = compiled

    def __call__(self, *args, **kwargs):
        with torch._inductor.config.patch(freezing=True):
            return self._compiled(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._compiled, name)


_LIBRARY = weakref.WeakKeyDictionary()  # network -> (its weights' identity, compiled) for pixeldit.sample


def cached_for_inference(model, precision: str = "fp32"):
    """`for_inference`, kept per network across library calls while its weights stay the same tensors at
    the same versions. After a change in place (a merge, an optimizer step) the frozen graphs hold the old
    weights as constants and dynamo would reuse them for this network, even through a new torch.compile
    (tested): its caches are reset first, which makes every compiled function in the process compile again."""
    key = (precision, weights_key(model.parameters()))
    hit = _LIBRARY.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    if hit is not None:
        torch._dynamo.reset()
    compiled = for_inference(model, precision)
    _LIBRARY[model] = (key, compiled)
    return compiled
