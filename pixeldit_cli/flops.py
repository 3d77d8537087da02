"""FLOPs in the paper's convention (Table 16; docs/conventions.md#flops), counted analytically, by hooks, and measured.

Convention: every nn.Linear costs 2·n·in·out (n = input rows), every attention 4·B·N²·C (QKᵀ + AV;
for T2I over the joint text+image sequence). Nothing else counts: norms, RoPE, softmax, activations,
modulation, residuals, embedding lookups. Analytic counts are instant even for XL/8 at 1024².
"""

import contextlib
import re
import time
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import load_preset
from .dist import device_report, pick_device
from .errors import PixelDiTError
from .families import family_of
from .models.config import ModelConfig
from .models.registry import build_model, count_params, empty_model, model_config
from .precision import autocast_dtype, choose

#################################################################################
#                               Closed form                                     #
#################################################################################


def analytic_flops(cfg: ModelConfig, height: int, width: int, batch: int = 1, text_len: int | None = None) -> dict:
    """FLOPs of one forward by component, plus 'total'. T2I counts `text_len` text tokens (default: the window)."""
    p, C, D, d, A, F_ = (
        cfg.patch_size,
        cfg.in_channels,
        cfg.hidden_size,
        cfg.pixel_hidden,
        cfg.pixel_attn_hidden,
        cfg.mlp_hidden,
    )
    HW, L, P = height * width, (height // p) * (width // p), p * p
    family = family_of(cfg)
    Ly = family.text_tokens(cfg, text_len)
    N = L + Ly  # tokens in one patch-level attention
    streams = family.streams  # MM-DiT: image and text Linears
    parts = {
        "embedders": 2 * L * (C * P) * D + 2 * 256 * D + 2 * D * D + 2 * (2 * HW * C * d) + 2 * Ly * cfg.text_dim * D,
        # per patch block: adaLN on one vector per image (per stream), qkv + proj on all N tokens, attention, SwiGLU
        "patch_blocks": cfg.patch_depth
        * (streams * 2 * 6 * D * D + 2 * N * D * 3 * D + 2 * N * D * D + 4 * N * N * D + 3 * 2 * N * D * F_),
        # per PiT block: pixel-wise adaLN on every patch token, compaction, attention on L tokens, pixel MLP
        "pixel_blocks": cfg.pixel_depth
        * (
            2 * L * D * 6 * P * d
            + 2 * 2 * L * P * d * A
            + 2 * L * A * 3 * A
            + 2 * L * A * A
            + 4 * L * L * A
            + 2 * 2 * HW * d * 4 * d
        ),
    }
    parts = {k: v * batch for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def pathway_flops(cfg: ModelConfig, height: int, width: int, text_len: int | None = None) -> dict:
    """One forward's FLOPs split at PixelDiT's seam: the patch pathway (patch and text embedders, patch
    blocks) and the pixel pathway (time embedder, pixel embedder, PiT blocks, final layer). They add up
    to the total; semantic reuse skips the first on some evaluations."""
    p, C, D, d = cfg.patch_size, cfg.in_channels, cfg.hidden_size, cfg.pixel_hidden
    HW, L = height * width, (height // p) * (width // p)
    Ly = family_of(cfg).text_tokens(cfg, text_len)
    parts = analytic_flops(cfg, height, width, 1, text_len)
    patch_embed = 2 * L * (C * p * p) * D + 2 * Ly * cfg.text_dim * D
    time_embed = 2 * 256 * D + 2 * D * D
    pixel_io = 2 * (2 * HW * C * d)
    assert parts["embedders"] == patch_embed + time_embed + pixel_io
    return {"patch": parts["patch_blocks"] + patch_embed, "pixel": parts["pixel_blocks"] + time_embed + pixel_io}


#################################################################################
#                        Hook counter (the official method)                     #
#################################################################################


@contextmanager
def count_by_hooks(model: nn.Module):
    """Count FLOPs of whatever runs inside the block: Linear hooks + a wrapped SDPA. Yields a dict."""
    tally = {"linear": 0, "attention": 0}

    def on_linear(mod, inputs, _out):
        x = inputs[0]
        tally["linear"] += 2 * (x.numel() // mod.in_features) * mod.in_features * mod.out_features

    real_sdpa = F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kw):
        B, h, Nq, Dh = q.shape
        tally["attention"] += 2 * B * h * Nq * k.shape[2] * Dh + 2 * B * h * Nq * k.shape[2] * v.shape[-1]
        return real_sdpa(q, k, v, *args, **kw)

    handles = [m.register_forward_hook(on_linear) for m in model.modules() if isinstance(m, nn.Linear)]
    F.scaled_dot_product_attention = sdpa
    try:
        yield tally
    finally:
        F.scaled_dot_product_attention = real_sdpa
        for h in handles:
            h.remove()
        tally["total"] = tally["linear"] + tally["attention"]


def example_inputs(
    cfg: ModelConfig, height: int, width: int, batch: int = 1, text_len: int | None = None, seed: int = 0
):
    """The counter's inputs: t = 0.5 (·1000 for T2I), class 0 or random text states."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, height, width, generator=g)
    return (x, *family_of(cfg).example_inputs(cfg, x, batch, text_len, g))


#################################################################################
#                      Measured throughput on this machine                      #
#################################################################################


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(n: int = 2048, repeats: int = 5, dtype=torch.float32, device="cpu") -> float:
    """Best-of-`repeats` GFLOP/s of an n×n×n matmul on `device`: the machine's own reference rate."""
    # Its own generator: a trainer measures this after restoring a resumed run's RNG, which it must not move.
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure_forward(model: nn.Module, inputs, flops: int, repeats: int = 3, autocast=None) -> dict:
    """Time `repeats` forwards (after one warm-up) and report the best as GFLOP/s."""
    device = inputs[0].device
    ctx = (lambda: torch.autocast(device.type, dtype=autocast)) if autocast is not None else contextlib.nullcontext
    times = []
    with torch.inference_mode(), ctx():
        model(*inputs)
        _sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(*inputs)
            _sync(device)
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"seconds_best": best, "seconds_median": sorted(times)[len(times) // 2], "gflops_per_s": flops / best / 1e9}


#################################################################################
#                        The `pixeldit flops` entry point                       #
#################################################################################


def run_flops(
    res=None,
    height=None,
    width=None,
    patch=None,
    model=None,
    preset=None,
    batch=1,
    text_len=None,
    measure=False,
    repeats=3,
    device="auto",
    precision="auto",
) -> dict:
    """Resolve model and size (flags > preset > XL/16 @ 256), count, optionally measure. Returns a dict."""

    name, default_res, overrides = "PixelDiT-XL/16", 256, {}
    if preset:
        cfg = load_preset(preset)
        name, default_res = cfg.model.name, cfg.data.resolution
        overrides = family_of(model_config(name)).config_overrides(cfg)
    if model:
        name, overrides = model, {}
    for flag, v in (("--res", res), ("--height", height), ("--width", width), ("--patch", patch), ("--batch", batch)):
        if v is not None and v < 1:
            raise PixelDiTError(f"{flag} must be at least 1, got {v}")
    if text_len is not None and text_len < 0:
        raise PixelDiTError(f"--text-len must be 0 or more, got {text_len}")
    if patch is not None:
        name = re.sub(r"(/\d+)?$", f"/{patch}", name, count=1)
    mcfg = model_config(name, **overrides)
    H = height if height is not None else res if res is not None else default_res
    W = width if width is not None else res if res is not None else default_res
    for side in (H, W):
        if side <= 0 or side % mcfg.patch_size:
            raise PixelDiTError(
                f"image size {H}x{W} is not a positive multiple of the patch size {mcfg.patch_size}",
                f"use sizes divisible by {mcfg.patch_size}",
            )
    params = count_params(empty_model(mcfg))
    parts = analytic_flops(mcfg, H, W, batch, text_len)
    result = {
        "model": name,
        "height": H,
        "width": W,
        "batch": batch,
        "params": params,
        "gflops": parts["total"] / 1e9,
        "breakdown_gflops": {k: v / 1e9 for k, v in parts.items() if k != "total"},
    }
    if family_of(mcfg).text_tokens(mcfg, text_len):
        result["text_tokens"] = family_of(mcfg).text_tokens(mcfg, text_len)
    if measure:
        dev = pick_device(device)
        choice = choose(precision, dev)
        prec = choice.precision
        net = build_model(mcfg, init=False).eval().to(dev)
        inputs = [t.to(dev) for t in example_inputs(mcfg, H, W, batch, text_len)]
        m = measure_forward(net, inputs, parts["total"], repeats, autocast_dtype(prec))
        m["matmul_gflops_per_s"] = matmul_rate(dtype=autocast_dtype(prec) or torch.float32, device=dev)
        m["efficiency"] = m["gflops_per_s"] / m["matmul_gflops_per_s"]
        if m["efficiency"] > 1.0:  # a forward cannot beat a large square matmul: the reference read low
            m["note"] = (
                f"{100 * m['efficiency']:.0f}% of the matmul rate cannot be right: the reference matmul was "
                "measured while the machine was busy; re-run on a quiet machine"
            )
        m["threads"] = torch.get_num_threads()
        m.update(device_report(dev, prec, choice.reason))
        result["measured"] = m
    return result
