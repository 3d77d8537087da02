"""How much memory one forward needs, from the config alone — and a one-line refusal of what cannot fit.

A 100000² request used to allocate for 22 s and die with an allocator traceback. The estimate counts the
largest set of activations alive at once in an inference forward (weights are already loaded when it
is checked, so they are not in what the device still has free):

  pixel level   per pixel: the token (d), the pixel-wise AdaLN's 6·d values, the normalised and modulated
                copies, the compaction's reshapes, the MLP's 4·d hidden units before and after the GELU,
                the gated updates and residuals — 32·d floats (counted by hand: ~26·d, and measured:
                up to 30·d floats per pixel on S/4 and B/16 at 128²–512²);
  patch level   per patch token: x, qkv (3·D), the attention output, the norm and modulated copies and
                the SwiGLU's two hidden projections — about 12·D + 2·mlp_hidden floats.
Attention runs through SDPA's fused kernels (flash / memory-efficient on CUDA, the flash kernel on CPU),
which never hold the N×N score matrix. A 2× margin covers the allocator and temporaries; a test
checks that the estimate is above the measured peak of a real forward.
"""

import torch

from .errors import PixelDiTError
from .families import family_of
from .heap import mem_available
from .models.registry import build_model

MARGIN = 2.0  # 1.5 was exceeded on a fresh clone (S/4 128², batch 2: 109 MB measured vs 102 MB)


def forward_bytes(cfg, height: int, width: int, batch: int) -> int:
    """Estimated activation bytes of one fp32 inference forward of `batch` images (weights not included)."""
    pixels = height * width

    tokens = (height // cfg.patch_size) * (width // cfg.patch_size) + family_of(cfg).text_tokens(cfg)
    pixel_level = 32 * cfg.pixel_hidden * pixels + 2 * cfg.in_channels * pixels
    patch_level = tokens * (12 * cfg.hidden_size + 2 * cfg.mlp_hidden)
    return int(MARGIN * 4 * batch * max(pixel_level, patch_level))


def available_bytes(device) -> int | None:
    """Free memory on `device`: CUDA's free bytes, or the kernel's MemAvailable; None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return mem_available()


def check_fits(cfg, height: int, width: int, batch: int, device, what: str = "one forward") -> int:
    """Refuse, in one line and before any allocation, a forward that cannot fit. Returns the estimate."""
    need = forward_bytes(cfg, height, width, batch)
    have = available_bytes(device)
    if have is not None and need > have:
        gb = lambda b: f"{b / 1024**3:,.1f} GB"
        raise PixelDiTError(
            f"{height}x{width} images need about {gb(need)} for {what} (batch {batch}), but {device} "
            f"has {gb(have)} free",
            "use a smaller --height/--width or --batch-size",
        )
    return need


# Training state per parameter, fp32: the weights, their EMA copy, the gradient, AdamW's two moments.
TRAIN_BYTES_PER_PARAM = 4 * 5


def train_state_bytes(cfg, lora_rank: int = 0, lora_targets: str = "", extra_params: int = 0) -> tuple[int, int]:
    """(bytes of the training state, parameters trained): 20 bytes per trained parameter (weights, EMA,
    gradient, two AdamW moments); with LoRA the frozen base costs 8 (the weights and the EMA network's copy)
    and each adapter parameter 20 (rank × (in + out) per adapted Linear)."""
    with torch.device("meta"):
        net = build_model(cfg, init=False)
    params = sum(p.numel() for p in net.parameters()) + extra_params
    if not lora_rank:
        return TRAIN_BYTES_PER_PARAM * params, params
    from .models.lora import DEFAULT_TARGETS, targets_of  # noqa: PLC0415

    mods = dict(net.named_modules())
    adapters = sum(lora_rank * (mods[n].in_features + mods[n].out_features)
                   for n in targets_of(net, lora_targets or DEFAULT_TARGETS))  # fmt: skip
    return 8 * params + TRAIN_BYTES_PER_PARAM * adapters, adapters


def check_train_fits(cfg, resolution: int, micro_batch: int, device, extra_params: int = 0, lora_rank: int = 0,
                     lora_targets: str = "") -> int:  # fmt: skip
    """Refuse, before a network is built, a training run whose state alone cannot fit (train_state_bytes)
    plus one micro-batch's inference-forward activations (a lower bound of training's: it never refuses
    what fits). The parameter count comes from a network built on the meta device (no memory)."""
    state, _ = train_state_bytes(cfg, lora_rank, lora_targets, extra_params)
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(cfg, init=False).parameters()) + extra_params
    need = state + forward_bytes(cfg, resolution, resolution, micro_batch) // 2
    have = available_bytes(device)
    if have is not None and need > have:
        gb = lambda b: f"{b / 1024**3:,.1f} GB"
        raise PixelDiTError(
            f"training this {params / 1e6:,.0f}M-parameter model needs at least {gb(need)} (weights, EMA, "
            f"gradients, AdamW state and a micro-batch of {micro_batch}), but {device} has {gb(have)} free",
            "train a smaller model, or on a machine with more memory (FSDP over GPUs shards the state)",
        )
    return need
