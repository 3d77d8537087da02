"""FlowEdit on PixelDiT (Kulikov et al., 2025; docs/editing.md), and background-preservation metrics.

Inversion-free editing: integrate dZ = [v_tar(Z + Ẑ_src − X) − v_src(Ẑ_src)] dτ from the source image,
where Ẑ_src = τ·X + (1 − τ)·ε is a fresh noisy version of the source at every step (shared by both
branches, so the noise cancels). In the project's convention (τ = 0 noise, τ = 1 data, v = x − ε) the
update is z ← z + (τ_next − τ)·(v_tar − v_src): FlowEdit's two sign flips cancel.

  n_max   edited steps counted from the data end (FlowEdit's index i = T − k); editing starts at
          τ = grid[T − n_max]. n_max = 0 returns the source.
  n_min   the last n_min steps are plain target sampling from a re-noised edit (stronger edits).
  n_avg   noise draws averaged per step.
Pixel space means no VAE round trip: with source == target and equal guidance the output is the input,
bit for bit (the velocity difference is exactly zero).
"""

import math
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import EditSection
from .dist import device_report, pick_device
from .errors import PixelDiTError
from .families import family_of
from .folders import claim, differences, lock, read_marker, remove_own
from .io import ensure_writable_dir, file_sha256, read_image, to_channels, write_json, write_png
from .memory import check_fits
from .models.loading import checkpoint_sha256, load_model
from .models.lora import apply_loras
from .models.packed import fast_linears
from .models.packed import report as fast_path_report
from .precision import autocast_dtype, choose
from .settings import EditSettings, n_max_of
from .solvers import Velocity, c2i_grid, to_uint8

#################################################################################
#                                  FlowEdit                                     #
#################################################################################


# FlowEdit's defaults live in the config's edit section (config.EditSection: T = 50, strength 0.66, CFG 1.5 -> 4).
DEFAULTS = asdict(EditSection())


def edit_steps(steps: int, n_max: int, n_min: int = 0, shift: float = 1.0):
    """(edited (τ, τ_next) pairs, tail pairs, the grid). Edited dts sum to 1 − τ_start when n_min = 0."""
    grid = c2i_grid(steps, shift)
    first, switch = steps - n_max, steps - n_min
    pairs = [(k, k + 1) for k in range(first, switch)]
    tail = [(k, k + 1) for k in range(switch, steps)]
    return pairs, tail, grid


def _noise(seed: int, step: int, draw: int, shape, device):
    s = np.random.SeedSequence([seed, step, draw, 0xED17]).generate_state(2, np.uint32)
    g = torch.Generator("cpu").manual_seed(int(s[0]) << 31 | int(s[1]) >> 1)
    return torch.randn(*shape, generator=g).to(device)


def flowedit(
    model,
    x_src,
    src,
    tgt,
    *,
    steps: int = DEFAULTS["steps"],
    n_max: int | None = None,
    n_min: int = DEFAULTS["n_min"],
    n_avg: int = DEFAULTS["n_avg"],
    src_cfg: float = DEFAULTS["src_cfg"],
    tgt_cfg: float = DEFAULTS["tgt_cfg"],
    shift: float = DEFAULTS["shift"],
    seed: int = 0,
    uncond=None,
    autocast=None,
    strength: float = DEFAULTS["strength"],
    fast: bool = True,
    on_step=None,
):
    """Edit images x_src (B, C, H, W) in [-1, 1] from condition `src` to `tgt`; returns (edited, stats).

    How far to edit: `strength` (editing starts at that noise level), or `n_max` edited steps in
    FlowEdit's notation, which wins when given.

    src / tgt: class ids (B,) or text states for T2I; uncond: the null condition (class-conditional: the
    null class by default). Guidance is applied at every step (no interval). `fast`: the jobs' fast Linear
    path for this precision (models/packed.py: fp32 within ~1e-6, bf16 within bf16 rounding); False: plain.
    `on_step(done, total)`: after each of the edit's steps (a progress bar).
    """
    n_max = n_max_of(strength, steps) if n_max is None else n_max
    if not 0 <= n_min <= n_max <= steps:
        raise ValueError(f"need 0 <= n_min <= n_max <= steps, got n_min {n_min}, n_max {n_max}, steps {steps}")
    if n_avg < 1:
        raise ValueError(f"n_avg must be >= 1, got {n_avg}")
    always = (-math.inf, math.inf)
    v_src = Velocity(model, src, uncond, src_cfg, always, autocast)
    v_tgt = Velocity(model, tgt, uncond, tgt_cfg, always, autocast)
    same = src_cfg == tgt_cfg and src.shape == tgt.shape and torch.equal(src, tgt)
    pairs, tail, grid = edit_steps(steps, n_max, n_min, shift)
    ts, tv = grid.to(x_src.device), grid.tolist()
    x = x_src.float()
    z = x.clone()
    evals, first = 0, steps - n_max  # the edit runs steps first .. steps - 1: n_max of them

    def tick(k):
        if on_step is not None:
            on_step(k + 1 - first, n_max)

    precision = "bf16" if autocast == torch.bfloat16 else "fp32"
    with torch.inference_mode(), fast_linears(model, precision, enabled=fast):
        for k, k1 in pairs:
            dv = torch.zeros_like(z)
            for j in range(n_avg):
                eps = _noise(seed, k, j, z.shape, z.device)
                z_src = ts[k] * x + (1 - ts[k]) * eps
                z_tgt = z_src + (z - x)  # exactly z_src while the edit is still zero
                a = v_src(z_src, tv[k], ts[k])
                b = a if same and torch.equal(z_tgt, z_src) else v_tgt(z_tgt, tv[k], ts[k])
                dv = dv + (b - a)
            z = z + (ts[k1] - ts[k]) * (dv / n_avg)
            tick(k)
        if tail:  # re-noise the edit to the switch time, then sample with the target alone
            k0 = tail[0][0]
            eps = _noise(seed, k0, n_avg, z.shape, z.device)
            z = (ts[k0] * x + (1 - ts[k0]) * eps) + (z - x)
            for k, k1 in tail:
                z = z + (ts[k1] - ts[k]) * v_tgt(z, tv[k], ts[k])
                tick(k)
    evals = v_src.stats.evals + v_tgt.stats.evals
    return z, {
        "network_evaluations_per_image": evals,
        "edited_steps": len(pairs),
        "tail_steps": len(tail),
        "start_time_noise_convention": 1 - tv[steps - n_max],
    }


#################################################################################
#                        Background-preservation metrics                        #
#################################################################################


def _gauss(size=11, sigma=1.5):
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def _symmetric_pad(t, r: int):
    """Pad the last two dims by r, mirroring the edge sample too (`cba|abc`; torch's "reflect" is `dcb|abcd`)."""
    t = torch.cat([t[..., :r].flip(-1), t, t[..., -r:].flip(-1)], dim=-1)
    return torch.cat([t[..., :r, :].flip(-2), t, t[..., -r:, :].flip(-2)], dim=-2)


def ssim_map(a, b, data_range: float = 1.0):
    """SSIM map (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03), per pixel, mean over channels.

    a, b: (C, H, W) in [0, data_range]. The map covers every pixel: borders are padded half-sample
    symmetrically (`cba|abc`, scipy.ndimage's "reflect"), the convention of scikit-image's
    `structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)`,
    whose map this equals everywhere (tested).
    """
    C1, C2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    a, b = a.double().unsqueeze(1), b.double().unsqueeze(1)  # (C, 1, H, W)
    w = _gauss().to(a).view(1, 1, 11, 11)
    pad = lambda t: _symmetric_pad(t, 5) if min(t.shape[-2:]) >= 5 else F.pad(t, (5, 5, 5, 5), mode="replicate")
    mu_a, mu_b = F.conv2d(pad(a), w), F.conv2d(pad(b), w)
    saa = F.conv2d(pad(a * a), w) - mu_a**2
    sbb = F.conv2d(pad(b * b), w) - mu_b**2
    sab = F.conv2d(pad(a * b), w) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + C1) * (2 * sab + C2)) / ((mu_a**2 + mu_b**2 + C1) * (saa + sbb + C2))
    return m.mean(0)[0]  # (H, W)


def background_metrics(src_u8, out_u8, region):
    """MSE (images in [0, 1]) and mean SSIM over pixels where `region` (H, W bool, True = edited) is False."""
    bg = ~region
    if not bg.any():
        raise ValueError("the edit region covers the whole image; there is no background to measure")
    a, b = src_u8.double() / 255, out_u8.double() / 255
    mse = ((a - b) ** 2).mean(0)[bg].mean().item()
    ssim = ssim_map(a, b)[bg].mean().item()
    return {"background_mse": mse, "background_ssim": ssim, "background_fraction": bg.double().mean().item()}


def bbox_region(h: int, w: int, box):
    x0, y0, x1, y1 = box
    r = torch.zeros(h, w, dtype=torch.bool)
    r[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)] = True
    return r


#################################################################################
#                       The `pixeldit edit` job (files in, files out)           #
#################################################################################


def read_rgb(path):
    """(uint8 (3, H, W), note) — every accepted format and depth becomes 8-bit RGB; the note says what changed."""
    return read_image(path)


def _in_model_channels(img, note: str, channels: int):
    """The input in the model's channels (a 1-channel model edits the gray image), the notes joined."""
    img, changed = to_channels(img, channels)
    return img, "; ".join(n for n in (note, changed) if n)


def fit_image(img, p: int, how: str):
    """Make H and W multiples of p: centre 'crop', replicate-'pad' (undone after the edit), or 'resize'."""
    _, H, W = img.shape
    if how == "crop":
        h, w = H // p * p, W // p * p
        if h == 0 or w == 0:
            raise PixelDiTError(f"image {W}x{H} is smaller than one {p}x{p} patch", "use --fit pad or --fit resize")
        top, left = (H - h) // 2, (W - w) // 2
        return img[:, top : top + h, left : left + w], dict(fit="crop", box=[left, top, left + w, top + h])
    if how == "pad":
        h, w = -(-H // p) * p, -(-W // p) * p
        out = F.pad(img[None].float(), (0, w - W, 0, h - H), mode="replicate")[0].to(torch.uint8)
        return out, dict(fit="pad", pad=[0, w - W, 0, h - H])
    if how == "resize":
        from torchvision.transforms.v2.functional import resize  # noqa: PLC0415 (heavy: only when used)

        h, w = max(p, round(H / p) * p), max(p, round(W / p) * p)
        return resize(img, [h, w], antialias=True), dict(fit="resize", size=[w, h])
    raise PixelDiTError(f"unknown --fit {how!r}", "use crop, pad or resize")


def unfit(img, info, H: int, W: int):
    """Undo --fit pad (crop back to the input size); crop and resize outputs keep their fitted size."""
    return img[:, :H, :W] if info["fit"] == "pad" else img


def run_edit(
    image,
    ckpt,
    src: str,
    tgt: str,
    out,
    settings: EditSettings = EditSettings(),
    *,
    fit="crop",
    mask=None,
    bbox=None,
    model=None,
    text_encoder=None,
    negative_prompt: str = "",
    device: str = "auto",
    precision: str = "auto",
    unsafe_pickle: bool = False,
    provenance: dict | None = None,
    packed: bool = True,
    overwrite: bool = False,
    lora: tuple = (),
    on_step=None,
) -> dict:
    """Edit one image file with `settings` (settings.resolve_edit); writes edited*.png, strip.png, run.json
    and results.json into `out`.

    `on_step(done, total)`: after every FlowEdit step over all seeds (the app's progress bar).
    `packed`: the CPU fast path (models/packed.py: packed fp32 weights, fused pixel-level ops; the last bits move).
    Every user error is found before the model loads, and `out` is created only when the edits are made: a
    rejected input leaves nothing behind. `out` holding another edit (other input, checkpoint or settings)
    is refused unless `overwrite`; a folder pixeldit did not make is always refused."""
    image, out, es = Path(image), Path(out), settings
    _check_input(image)
    dev = pick_device(device)
    prec = (choice := choose(precision, dev)).precision
    names = _output_names(image, out, es.seed, es.num_seeds)
    claim(out, "edit")  # a folder of someone else's files is refused before any work
    img, note = read_rgb(image)
    region = edit_region(img, mask, bbox)
    ck_rec = _checkpoint_record(ckpt)
    request = dict(src=src, tgt=tgt, negative_prompt=negative_prompt, **asdict(es), fit=fit)
    identity = _identity(image, ck_rec, request, dev, prec, packed, lora)
    _check_folder(out, identity, overwrite)
    if model is None:
        model = load_model(ckpt, device=dev, unsafe_pickle=unsafe_pickle)
        apply_loras(model, lora)
    dev, cfg = next(model.parameters()).device, model.config
    img, note = _in_model_channels(img, note, cfg.in_channels)
    cond_src, cond_tgt, uncond, rec_src, rec_tgt = family_of(cfg).edit_conditions(
        model, src, tgt, text_encoder, negative_prompt, dev
    )
    fitted, info = fit_image(img, cfg.patch_size, fit)
    check_fits(cfg, fitted.shape[1], fitted.shape[2], 2, dev, "one guided FlowEdit step")
    x = ((fitted.float() / 255 - 0.5) / 0.5).to(dev)  # the training normalisation
    runs = _edit_seeds(model, x[None], cond_src, cond_tgt, uncond, es, prec, packed, on_step)
    edits, stats = [unfit(to_uint8(z)[0].cpu(), info, *img.shape[1:]) for z, _ in runs], runs[-1][1]
    src_shown = unfit(fitted, info, *img.shape[1:])
    _write_outputs(out, identity, overwrite, names, src_shown, edits)
    result = {
        "input": str(image.resolve()),
        "input_note": "; ".join(n for n in (note, _size_note(model, fitted)) if n),
        **ck_rec,
        "source": {**rec_src, "cfg": es.src_cfg},
        "target": {**rec_tgt, "cfg": es.tgt_cfg},
        "negative_prompt": negative_prompt if uncond is not None else None,
        **asdict(es),
        "lora": [list(x) for x in lora] or None,
        "strength": es.strength,
        "packed": packed,
        "fit": info,
        "size": [int(fitted.shape[2]), int(fitted.shape[1])],
        "outputs": names,
        "strip": "strip.png",
        **stats,
        "region": ({"mask": str(mask)} if mask is not None else {"bbox": list(bbox)} if bbox is not None else None),
        "background": _background(region, info, fitted, src_shown, edits, es.seed),
        "to_source": [dict(seed=es.seed + k, **change_metrics(src_shown, e)) for k, e in enumerate(edits)],
        **device_report(dev, prec, choice.reason),
        "fast_path": fast_path_report(model, enabled=packed),
        **(provenance or {}),
    }
    write_json(out / "results.json", result)
    return result


def _identity(image, ck_rec, request, dev, prec, packed, lora) -> dict:
    """What determines an edit (a folder holding another is refused): the input, the checkpoint, the request,
    the arithmetic, and the LoRA adapters merged into the weights (models/lora.py)."""
    identity = dict(input_sha256=file_sha256(image), **ck_rec, **request, device_type=dev.type, precision=prec,
                    packed=packed)  # fmt: skip
    if lora:
        identity["lora"] = [list(x) for x in lora]
    return identity


def _size_note(model, fitted) -> str:
    """A remark when the image is not at the size the model was trained at (its own config says which)."""
    data = (getattr(model, "train_config", None) or {}).get("data") or {}
    res = data.get("resolution") if isinstance(data, dict) else None
    h, w = fitted.shape[1:]
    if isinstance(res, int) and (h, w) != (res, res):
        return (
            f"the model was trained at {res}x{res}; this edit runs at {w}x{h} (resize the input to "
            f"{res}x{res}, or --fit resize, for edits the model has seen)"
        )
    return ""


def change_metrics(src_u8, out_u8) -> dict:
    """How far an edit moved from its source over the whole image: MSE (in [0, 1]), mean SSIM, and
    whether not one pixel changed (a model too weak for the target can return its input as it was)."""
    a, b = src_u8.double() / 255, out_u8.double() / 255
    return {
        "mse": ((a - b) ** 2).mean().item(),
        "ssim": ssim_map(a, b).mean().item(),
        "unchanged": bool(torch.equal(src_u8, out_u8)),
    }


def _check_folder(out, identity: dict, overwrite: bool) -> None:
    """An edit folder holds one edit: the same request again rewrites it (same bytes); another is refused
    unless --overwrite, which replaces the files an edit writes."""
    before = read_marker(out) if out.is_dir() else None
    diff = differences(before, identity) if before is not None else []
    if diff and not overwrite:
        raise PixelDiTError(
            f"{out} holds another edit (different {', '.join(diff[:4])})",
            "choose another --out, or pass --overwrite to replace it",
        )
    if diff:
        remove_own(
            out,
            lambda n: (
                bool(re.fullmatch(r"edited(_seed\d+)?\.png", n)) or n in ("strip.png", "results.json", "run.json")
            ),
        )


def _check_input(image) -> None:
    if image.is_dir():
        raise PixelDiTError(f"{image} is a folder, not an image", "pass one image file")
    if not image.is_file():
        raise PixelDiTError(f"input image {image} does not exist")


def _output_names(image, out, seed: int, num_seeds: int) -> list[str]:
    """edited.png (or edited_seedK.png per seed); refused when one would overwrite the input."""
    names = [f"edited_seed{seed + k}.png" for k in range(num_seeds)] if num_seeds > 1 else ["edited.png"]
    for n in names + ["strip.png"]:
        if (out / n).resolve() == image.resolve():
            raise PixelDiTError(f"the output {out / n} would overwrite the input image", "choose another --out")
    return names


def _edit_seeds(model, x, cond_src, cond_tgt, uncond, es: EditSettings, prec, packed, on_step=None):
    """One FlowEdit per seed (seed, seed + 1, ...): [(edited, stats)], with one running step count."""
    runs = []
    for k in range(es.num_seeds):
        tick = None if on_step is None else (lambda d, t, k=k: on_step(k * t + d, es.num_seeds * t))
        runs.append(flowedit(model, x, cond_src, cond_tgt, **es.flowedit_kwargs(), seed=es.seed + k, uncond=uncond,
                             autocast=autocast_dtype(prec), fast=packed, on_step=tick))  # fmt: skip
    return runs


def edit_region(img, mask=None, bbox=None):
    """The edited region as a bool (H, W) map from --mask (white = edit) or --bbox; None without either."""
    _, H0, W0 = img.shape
    region = None
    if mask is not None:
        m, _ = read_rgb(mask)
        if m.shape[1:] != img.shape[1:]:
            raise PixelDiTError(
                f"mask is {m.shape[2]}x{m.shape[1]} but the image is {W0}x{H0}", "the mask must have the image's size"
            )
        region = m.float().mean(0) > 127.5
    elif bbox is not None:
        x0, y0, x1, y1 = bbox
        if not (0 <= x0 < x1 <= W0 and 0 <= y0 < y1 <= H0):
            raise PixelDiTError(
                f"--bbox {x0} {y0} {x1} {y1} is not inside the {W0}x{H0} image",
                f"need 0 <= X0 < X1 <= {W0} and 0 <= Y0 < Y1 <= {H0}",
            )
        region = bbox_region(H0, W0, bbox)
    if region is not None and bool(region.all()):
        raise PixelDiTError(
            "the edit region covers the whole image, so there is no background to measure",
            "give a smaller --bbox or --mask, or leave both out",
        )
    return region


def _write_outputs(out, identity, overwrite, names, src_shown, edits) -> None:
    """Under the folder's lock: run.json (the edit's identity, pixeldit's marker), each edit as a PNG, and
    strip.png: the source, then every edit, 2-pixel white separators."""
    ensure_writable_dir(out)
    with lock(out):
        _check_folder(out, identity, overwrite)  # again under the lock: another edit may have started meanwhile
        write_json(out / "run.json", {"format": "pixeldit-edit", **identity})
        _write_images(out, names, src_shown, edits)


def _write_images(out, names, src_shown, edits) -> None:
    """edited*.png at the input's size; strip.png upscaled by an integer factor when the images are small."""
    for name, e in zip(names, edits):
        write_png(e, out / name)
    sep = torch.full((src_shown.shape[0], src_shown.shape[1], 2), 255, dtype=torch.uint8)
    strip = torch.cat([t for e in [src_shown, *edits] for t in (e, sep)][:-1], dim=2)
    k = max(1, -(-96 // src_shown.shape[1]))  # small images shown at >= 96 px high (nearest: pixels stay pixels)
    write_png(strip.repeat_interleave(k, 1).repeat_interleave(k, 2), out / "strip.png")


def _background(region, info, fitted, src_shown, edits, seed: int):
    """Background preservation per seed, with the region brought to the fitted image's frame."""
    if region is None:
        return None
    if info["fit"] == "crop":
        l, t, r, b = info["box"]
        region = region[t:b, l:r]
    elif info["fit"] == "resize":
        from torchvision.transforms.v2.functional import InterpolationMode, resize  # noqa: PLC0415 (heavy: only when used)

        region = (
            resize(region[None].float(), [fitted.shape[1], fitted.shape[2]], interpolation=InterpolationMode.NEAREST)[0]
            > 0.5
        )
    return [dict(seed=seed + k, **background_metrics(src_shown, e, region)) for k, e in enumerate(edits)]


def _checkpoint_record(ckpt) -> dict:
    return {
        "checkpoint": str(Path(ckpt).resolve()) if ckpt else None,
        "checkpoint_sha256": checkpoint_sha256(ckpt) if ckpt and Path(ckpt).exists() else None,
    }
