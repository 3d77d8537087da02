"""`pixeldit eval-fid`: ADM-protocol FID / sFID / IS / precision / recall of a sample set against a reference,
and on request KID, FD_DINOv2 and the CLIP score (`metrics=`; docs/evaluation.md#more-metrics).

ADM's rules, kept: a file's stored mu/sigma/mu_s/sigma_s are used instead of its images for FID/sFID;
precision/recall always use reference *images* (10K in ADM's batches); IS uses the samples in file
order. KID uses the same pool3 features and the reference images, FD_DINOv2 the images of both sides.
A metric the inputs cannot support is skipped with its reason, never a crash. Reference features are
cached by (file hash, weights hash, feature version).
"""

import hashlib
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..dist import device_report, dist_env, gather, init_distributed
from ..errors import PixelDiTError
from ..io import atomic_path, ensure_writable_dir, ensure_writable_file, file_sha256, write_json
from ..npz import NpzImages, NpzWriter, open_images
from ..progress import progress as progress_bar
from .inception import load_inception
from .scores import (
    KID_SEED,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    frechet_distance,
    inception_score,
    kid,
    looks_sorted,
    precision_recall,
    statistics,
)

FEATURE_VERSION = "tf1-bilinear/x-128d128/pool3+mixed6d.1x1[:7]nhwc/v1"
METRICS = ("fid", "sfid", "is", "pr", "kid", "fd_dinov2", "clip")
DEFAULT_METRICS = ("fid", "sfid", "is", "pr")  # the ADM suite
_RESULT_KEYS = {"fid": ("fid",), "sfid": ("sfid",), "is": ("is",), "pr": ("precision", "recall"),
                "kid": ("kid", "kid_std", "kid_subset_size"), "fd_dinov2": ("fd_dinov2",), "clip": ("clip_score",)}  # fmt: skip


def parse_metrics(spec) -> tuple[str, ...]:
    """'fid,kid' (or a sequence) -> the metrics in the order given; one line for an unknown name."""
    names = [m.strip().lower() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise PixelDiTError(
            f"unknown metric {', '.join(unknown) or '(none given)'}", f"use some of {','.join(METRICS)}"
        )
    return tuple(dict.fromkeys(names))


def _device_setup(device):
    """(rank, world, device) with TF32 off: TF32 changes Inception features at ~1e-3, FID in the 2nd decimal."""
    rank, world, dev = init_distributed(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return rank, world, dev


def extract(source, net, batch_size: int = 64, device="cpu", progress=None, label="features"):
    """pool3 (N, 2048) float32, spatial (N, 2023) float32 and logits (N, 1008) or None, in file order.

    Under torchrun each rank takes a contiguous share and rank 0 re-assembles them in order."""
    rank, world, _ = dist_env()
    n = len(source)
    lo, hi = rank * n // world, (rank + 1) * n // world
    pool, spatial, logits = [], [], []
    task = progress.add(label, total=hi - lo) if progress is not None else None
    with torch.inference_mode():
        for batch in source.batches(batch_size, lo, hi):
            x = torch.from_numpy(np.array(batch)).to(device).permute(0, 3, 1, 2).float()
            out = net(x)
            pool.append(out["pool3"].cpu().numpy())
            spatial.append(out["spatial"].cpu().numpy())
            if out["logits"] is not None:
                logits.append(out["logits"].cpu().numpy())
            if task is not None:
                progress.advance(task, len(batch))
    empty = {"pool3": np.zeros((0, 2048), np.float32), "spatial": np.zeros((0, 2023), np.float32)}
    part = {k: np.concatenate(v) if v else empty.get(k) for k, v in (("pool3", pool), ("spatial", spatial))}
    part["logits"] = np.concatenate(logits) if logits else None
    if world > 1:
        parts = gather(part, world)
        part = {
            k: (np.concatenate([p[k] for p in parts if p[k] is not None]) if parts[0][k] is not None else None)
            for k in part
        }
    return part


def _check_images(source, what):
    if len(source) < 2:
        raise PixelDiTError(f"{what} has {len(source)} image(s); statistics need at least 2")


def _read_cache(cache: Path) -> dict:
    """The cached reference features, or {} when there are none or the file does not load (a torn or
    corrupted cache is rebuilt, never fatal: it is only a cache)."""
    if not cache.exists():
        return {}
    try:
        with np.load(cache, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        if "mu" in out and "sigma" in out:
            return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        pass
    print(f"note: the feature cache {cache} did not load; computing the reference features again", file=sys.stderr)
    return {}


def reference_stats(path: Path, net, weights_hash: str, batch_size, device, cache_dir, progress):
    """(ref dict with pool3 / mu / sigma / mu_s / sigma_s where available, skipped reasons, ref hash)."""
    src = open_images(path, require_images=False)
    ref_hash = file_sha256(path)
    key = hashlib.sha256(f"{ref_hash}/{weights_hash}/{FEATURE_VERSION}".encode()).hexdigest()[:24]
    cache = Path(cache_dir) / f"ref-{key}.npz" if cache_dir else None
    out = _read_cache(cache) if cache is not None else {}
    if not out:
        stored = {k: src.array(k) for k in ("mu", "sigma", "mu_s", "sigma_s")} if isinstance(src, NpzImages) else {}
        dims = {"mu": (2048,), "sigma": (2048, 2048), "mu_s": (2023,), "sigma_s": (2023, 2023)}
        for k, v in stored.items():
            if v is not None:
                if v.shape != dims[k]:
                    raise PixelDiTError(
                        f"reference {path}: '{k}' has shape {v.shape}, expected {dims[k]}",
                        "ADM reference batches hold pool3 (2048) and sFID (2023) statistics",
                    )
                if not np.isfinite(v).all():
                    raise PixelDiTError(f"reference {path}: '{k}' contains NaN or infinity")
                out[k] = v.astype(np.float64)
        if len(src):
            _check_images(src, f"reference {path}")
            feats = extract(src, net, batch_size, device, progress, "reference")
            out["pool3"] = feats["pool3"]  # precision/recall always use the reference images
            if "mu" not in out:  # ADM: stored statistics win; otherwise measure the images
                out["mu"], out["sigma"] = statistics(feats["pool3"])
                out["mu_s"], out["sigma_s"] = statistics(feats["spatial"])
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with NpzWriter(cache) as w:
                    for k, v in out.items():
                        w.add(k, v)
            except (OSError, PixelDiTError) as e:  # a cache that cannot be written is not an error
                print(f"note: reference features not cached ({e})", file=sys.stderr)
    return out, ref_hash


def evaluate(
    samples,
    ref,
    inception=None,
    inception_sha256=None,
    batch_size: int = 64,
    pr_mode: str = "fp16",
    fid_method: str = "scipy",
    cache_dir=None,
    device=None,
    progress=True,
    metrics=DEFAULT_METRICS,
    dinov2=None,
    clip=None,
    save_features=None,
) -> dict:
    """The chosen `metrics` of `samples` (npz or folder) against a reference (an ADM batch or images),
    with the reference's features cached by content hash; `dinov2` / `clip` are local model folders for
    fd_dinov2 / clip; `save_features` a folder for every feature array. Rank 0 returns the result; other
    ranks {}."""
    metrics = parse_metrics(metrics)
    if "fd_dinov2" in metrics and not dinov2:
        raise PixelDiTError("fd_dinov2 needs the DINOv2 model", "pass --dinov2 DIR (a saved facebook/dinov2-large)")
    if "clip" in metrics and not clip:
        raise PixelDiTError(
            "the CLIP score needs a CLIP model", "pass --clip DIR (a saved openai/clip-vit-large-patch14)"
        )
    rank, world, device = _device_setup(device)
    samples, ref = Path(samples), Path(ref)
    if not ref.exists():
        raise PixelDiTError(f"reference {ref} does not exist")
    src = open_images(samples)
    if src.array("mu") is None:  # stored statistics need no images; otherwise at least two
        _check_images(src, f"samples {samples}")
    prompts = sample_prompts(samples, src) if "clip" in metrics else None
    if save_features is not None and rank == 0:
        ensure_writable_dir(Path(save_features))
    inception_metrics = {"fid", "sfid", "is", "pr", "kid"} & set(metrics)
    net, winfo = load_inception(inception, inception_sha256) if inception_metrics else (None, {"sha256": ""})
    net = net.to(device) if net is not None else None

    t0 = time.perf_counter()
    skipped, notes, saved = {}, [], {}
    with progress_bar(progress and rank == 0) as bar:
        r, ref_hash, feats, stored_mu = {}, file_sha256(ref), None, None
        if net is not None:
            r, ref_hash = reference_stats(ref, net, winfo["sha256"], batch_size, device, cache_dir, bar)
            stored_mu = src.array("mu") if isinstance(src, NpzImages) else None
            feats = extract(src, net, batch_size, device, bar, "samples")
        extra = _other_networks(metrics, src, ref, ref_hash, dinov2, clip, prompts, batch_size, device, cache_dir, bar)
    if rank != 0:
        return {}

    res = {"n": int(len(src)), "resolution": list(src.shape[1:3])}
    ref_src = open_images(ref, require_images=False)
    if len(ref_src) and tuple(ref_src.shape[1:3]) != tuple(src.shape[1:3]):
        notes.append(
            f"samples are {src.shape[2]}x{src.shape[1]} but the reference images are "
            f"{ref_src.shape[2]}x{ref_src.shape[1]}: both are resized to 299 for Inception, but FID across "
            "resolutions is not the paper's protocol"
        )
    t_scores = time.perf_counter()
    if feats is not None:
        res.update(_scores(src, feats, r, stored_mu, fid_method, pr_mode, skipped, notes))
        if "kid" in metrics:
            res.update(_kid(feats, r, skipped))
        notes.extend(_caveats(len(src), fid_method, time.perf_counter() - t_scores))
    res.update(_other_scores(extra, fid_method, skipped))
    res = {k: v for k, v in res.items() if k in ("n", "resolution") or any(k in _RESULT_KEYS[m] for m in metrics)}
    skipped = {k: v for k, v in skipped.items() if any(k.startswith(m) or (m == "pr" and k == "precision/recall")
                                                        for m in metrics)}  # fmt: skip
    if save_features is not None:
        saved = _save_features(Path(save_features), samples, ref, ref_hash, feats, r, winfo, extra)
    provenance = dict(samples=samples, ref=ref, ref_hash=ref_hash, winfo=winfo if net is not None else None)
    res.update(_provenance(metrics, extra, fid_method, pr_mode, skipped, notes, saved, t0, device, **provenance))
    return res


def _provenance(metrics, extra, fid_method, pr_mode, skipped, notes, saved, t0, device, samples, ref, ref_hash,
                winfo) -> dict:  # fmt: skip
    """What results.json says besides the numbers: inputs, weights, protocol, what was skipped and why."""
    return {
        "metrics": list(metrics),
        "samples": str(samples),
        "reference": str(ref),
        "reference_sha256": ref_hash,
        "inception": winfo,
        **{f"{name}_model": e["info"] for name, e in extra.items()},
        "protocol": _protocol(fid_method, pr_mode, metrics),
        "skipped": skipped,
        "notes": notes,
        "saved_features": saved or None,
        "seconds": round(time.perf_counter() - t0, 2),
        **device_report(device, "fp32"),
    }


def _kid(feats, r, skipped: dict) -> dict:
    if "pool3" not in r or len(r["pool3"]) < 2 or len(feats["pool3"]) < 2:
        skipped["kid"] = "the reference holds no images (KID compares image features, not stored statistics)"
        return {"kid": None, "kid_std": None}
    mean, std, m = kid(feats["pool3"], r["pool3"])
    return {"kid": mean, "kid_std": std, "kid_subset_size": m}


#################################################################################
#                 FD_DINOv2 and the CLIP score (metrics/embeddings.py)          #
#################################################################################


def sample_prompts(samples: Path, src) -> list[str]:
    """The prompt of every sample, from the sample folder's results.json (a T2I `pixeldit sample` job):
    arr_1 holds each image's prompt index; a PNG folder cycles the prompts over the indices, as the job does."""
    folder = samples if samples.is_dir() else samples.parent
    path = folder / "results.json"
    try:
        prompts = json.loads(path.read_text(encoding="utf-8")).get("prompts")
    except (OSError, ValueError, AttributeError):
        prompts = None
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise PixelDiTError(
            f"the CLIP score needs the samples' prompts: {path} has none",
            "score the folder of a text-to-image `pixeldit sample` job (its results.json lists the prompts)",
        )
    labels = src.array("arr_1") if isinstance(src, NpzImages) else None
    index = labels if labels is not None and len(labels) == len(src) else np.arange(len(src)) % len(prompts)
    if int(np.max(index)) >= len(prompts) or int(np.min(index)) < 0:
        raise PixelDiTError(f"{samples}: arr_1 holds prompt indices beyond the {len(prompts)} prompts in {path}")
    return [prompts[int(i)] for i in index]


def _embed(source, fn, batch_size, progress, label, prompts=None) -> np.ndarray:
    """`fn` over every image in file order (under torchrun each rank a contiguous share, re-assembled)."""
    rank, world, _ = dist_env()
    n = len(source)
    lo, hi = rank * n // world, (rank + 1) * n // world
    task = progress.add(label, total=hi - lo) if progress is not None else None
    out, i = [], lo
    for batch in source.batches(batch_size, lo, hi):
        out.append(fn(batch) if prompts is None else fn(batch, prompts[i : i + len(batch)]))
        i += len(batch)
        if task is not None:
            progress.advance(task, len(batch))
    part = np.concatenate(out) if out else np.zeros((0,), np.float32)
    return np.concatenate([p for p in gather(part, world) if len(p)]) if world > 1 else part


def _other_networks(metrics, src, ref, ref_hash, dinov2, clip, prompts, batch_size, device, cache_dir, bar) -> dict:
    """{"dinov2": {info, samples, reference}, "clip": {info, scores}} for the metrics asked for."""
    from .embeddings import DINOV2_VERSION, ClipScorer, Dinov2Features  # noqa: PLC0415 (transformers)

    extra = {}
    if "fd_dinov2" in metrics:
        net = Dinov2Features(dinov2, device)
        ref_src = open_images(ref, require_images=False)
        key = hashlib.sha256(f"{ref_hash}/{net.sha256}/{DINOV2_VERSION}".encode()).hexdigest()[:24]
        cache = Path(cache_dir) / f"dinov2-{key}.npz" if cache_dir else None
        cached = _read_features(cache)
        ref_feats = cached if cached is not None else _embed(ref_src, net, batch_size, bar, "reference (DINOv2)")
        if cache is not None and cached is None and len(ref_feats):
            _write_features(cache, ref_feats)
        extra["dinov2"] = {"info": net.info(), "reference": ref_feats,
                           "samples": _embed(src, net, batch_size, bar, "samples (DINOv2)")}  # fmt: skip
    if "clip" in metrics:
        scorer = ClipScorer(clip, device)
        extra["clip"] = {"info": scorer.info(), "scores": _embed(src, scorer, batch_size, bar, "CLIP score", prompts)}
    return extra


def _other_scores(extra: dict, fid_method: str, skipped: dict) -> dict:
    out = {}
    if "dinov2" in extra:
        a, b = extra["dinov2"]["samples"], extra["dinov2"]["reference"]
        if len(a) < 2 or len(b) < 2:
            out["fd_dinov2"] = None
            skipped["fd_dinov2"] = "needs at least 2 images on each side (stored statistics are Inception's)"
        else:
            out["fd_dinov2"] = frechet_distance(*statistics(a), *statistics(b), method=fid_method)
    if "clip" in extra:
        out["clip_score"] = float(np.mean(extra["clip"]["scores"]))
    return out


def _read_features(cache: Path | None):
    if cache is None or not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            return z["features"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        return None


def _write_features(cache: Path, feats: np.ndarray) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with NpzWriter(cache) as w:
            w.add("features", feats)
    except (OSError, PixelDiTError) as e:  # only a cache
        print(f"note: DINOv2 reference features not cached ({e})", file=sys.stderr)


def _save_features(folder: Path, samples, ref, ref_hash, feats, r, winfo, extra) -> dict:
    """--save-features: each network's features as .npy with a sidecar JSON (file, its hash, weights, protocol)."""
    samples_hash = file_sha256(samples) if Path(samples).is_file() else None
    arrays = {}
    if feats is not None:
        arrays["samples-inception-pool3"] = (feats["pool3"], samples, samples_hash, winfo["sha256"], FEATURE_VERSION)
        arrays["samples-inception-spatial"] = (
            feats["spatial"],
            samples,
            samples_hash,
            winfo["sha256"],
            FEATURE_VERSION,
        )
        if "pool3" in r:
            arrays["reference-inception-pool3"] = (r["pool3"], ref, ref_hash, winfo["sha256"], FEATURE_VERSION)
    if "dinov2" in extra:
        e = extra["dinov2"]
        arrays["samples-dinov2"] = (e["samples"], samples, samples_hash, e["info"]["sha256"], e["info"]["protocol"])
        arrays["reference-dinov2"] = (e["reference"], ref, ref_hash, e["info"]["sha256"], e["info"]["protocol"])
    if "clip" in extra:
        e = extra["clip"]
        arrays["samples-clip-score"] = (e["scores"], samples, samples_hash, e["info"]["sha256"], e["info"]["protocol"])
    saved = {}
    for name, (arr, path, digest, weights, protocol) in arrays.items():
        with atomic_path(folder / f"{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(arr), allow_pickle=False)
        side = {"file": str(path), "file_sha256": digest, "weights_sha256": weights, "protocol": protocol,
                "shape": list(np.asarray(arr).shape)}  # fmt: skip
        write_json(folder / f"{name}.json", side)
        saved[name] = str(folder / f"{name}.npy")
    return saved


def _caveats(n: int, fid_method: str, seconds: float) -> list[str]:
    """What a reader of the numbers must know: too few samples for FID, and the sqrtm's cost."""
    out = []
    if n < 2048:
        out.append(
            f"N = {n} is below the 2048 dimensions of the pool3 features: the covariance is rank-deficient and "
            "FID is strongly biased upwards; it is comparable only to runs at the same N (papers use 50,000)"
        )
    elif n < 10000:
        out.append(f"N = {n}: FID is biased upwards at small N (papers use 50,000); compare only runs at the same N")
    if fid_method == "scipy" and seconds > 10:
        out.append(
            f"the scores took {seconds:.0f} s, mostly scipy's sqrtm (ADM's path, kept as the default for parity "
            "with ADM's evaluator); --sqrtm eigh gives the same FID to ~1e-6 relative in seconds"
        )
    return out


def _scores(src, feats, r, stored_mu, fid_method, pr_mode, skipped: dict, notes: list) -> dict:
    """FID, sFID, IS, precision and recall of the sample features against the reference statistics `r`;
    a score that cannot be computed is None, with the reason in `skipped`."""
    res = {"fid": None, "sfid": None, "is": None, "precision": None, "recall": None}
    if stored_mu is not None:
        notes.append("the sample file holds mu/sigma: FID/sFID use them, as ADM does")
        m1, s1 = stored_mu, src.array("sigma")
        ms1, ss1 = src.array("mu_s"), src.array("sigma_s")
    else:
        m1, s1 = statistics(feats["pool3"])
        ms1, ss1 = statistics(feats["spatial"])
    if "mu" in r:
        res["fid"] = frechet_distance(m1, s1, r["mu"], r["sigma"], method=fid_method)
    else:
        skipped["fid"] = "the reference has neither mu/sigma nor images"
    if "mu_s" in r and ms1 is not None:
        res["sfid"] = frechet_distance(ms1, ss1, r["mu_s"], r["sigma_s"], method=fid_method)
    else:
        skipped["sfid"] = (
            "the reference lacks mu_s/sigma_s (and holds stored mu, so its images are not re-measured)"
            if "mu" in r
            else "no spatial statistics"
        )
    if feats["logits"] is not None:
        res["is"] = inception_score(feats["logits"])
        labels = src.array("arr_1") if isinstance(src, NpzImages) else None
        if labels is not None and looks_sorted(labels):
            notes.append("arr_1 labels come in long runs: ADM's ordered 5000-image IS splits will understate IS")
    else:
        skipped["is"] = "these Inception weights have no 1008-way classifier (pass --inception pt_inception-2015-12-05)"
    if "pool3" in r and len(r["pool3"]) > 3 and len(feats["pool3"]) > 3:
        res["precision"], res["recall"] = precision_recall(r["pool3"], feats["pool3"], mode=pr_mode)
    else:
        skipped["precision/recall"] = (
            "the reference holds no images (ADM uses its 10K arr_0)"
            if "pool3" not in r
            else "need more than 3 images on each side"
        )
    return res


def _protocol(fid_method: str, pr_mode: str, metrics=DEFAULT_METRICS) -> dict:
    """What was computed, in words (results.json): enough to tell two evaluations apart."""
    out = {
        "resize": "TF1 bilinear to 299 (no half-pixel, no antialias)",
        "normalise": "(x - 128) / 128",
        "fid": f"pool3, {fid_method} sqrtm",
        "sfid": "Mixed_6d.branch1x1[:7], NHWC",
        "is": "1008 bias-free logits, 5000-image splits in order",
        "precision_recall": f"k=3, tiles 10000, {pr_mode} distances",
        "kid": f"pool3, unbiased MMD^2, kernel (x.y/d + 1)^3, {KID_SUBSETS} subsets of min({KID_SUBSET_SIZE}, N), "
        f"RandomState({KID_SEED}) (torch-fidelity / clean-fid)",
        "fd_dinov2": f"DINOv2 CLS after norm, /255, bicubic antialias 224, ImageNet mean/std (EDM2), {fid_method} sqrtm",
        "clip": "100 * max(cos, 0), mean over images, each against its prompt (results.json)",
        "feature_version": FEATURE_VERSION,
    }
    keep = {"fid": ("fid",), "sfid": ("sfid",), "is": ("is",), "pr": ("precision_recall",), "kid": ("kid",),
            "fd_dinov2": ("fd_dinov2",), "clip": ("clip",)}  # fmt: skip
    inception = {"fid", "sfid", "is", "pr", "kid"} & set(metrics)
    shown = {k for m in metrics for k in keep[m]} | ({"resize", "normalise", "feature_version"} if inception else set())
    return {k: v for k, v in out.items() if k in shown}


def _is_reference_batch(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return {"mu.npy", "sigma.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def make_reference(
    source,
    out,
    inception=None,
    inception_sha256=None,
    ref_images: int = 10000,
    batch_size: int = 64,
    force: bool = False,
    progress=True,
    device=None,
) -> dict:
    """An ADM reference batch: arr_0 = the first `ref_images` images, mu/sigma/mu_s/sigma_s over all of them.

    Under torchrun every rank runs Inception on its share; rank 0 writes the file, streaming arr_0."""
    out = Path(out)
    if out.suffix != ".npz":
        raise PixelDiTError(f"{out} must end in .npz")
    if ref_images < 0:
        raise PixelDiTError(f"--ref-images must be 0 or more, got {ref_images}")
    if out.resolve() == Path(source).resolve():  # --force must never turn the input into the output
        raise PixelDiTError(f"REF {out} is the source itself", "write the reference batch to another file")
    if force and out.exists() and not _is_reference_batch(out):
        raise PixelDiTError(
            f"{out} exists and is not an ADM reference batch (mu, sigma)",
            "--force only replaces a reference batch: choose another REF; nothing was changed",
        )
    rank, world, device = _device_setup(device)
    if rank == 0:
        ensure_writable_file(out, force, what="REF")  # before the feature pass, not after it
    src = open_images(source)
    _check_images(src, str(source))
    net, winfo = load_inception(inception, inception_sha256)
    with progress_bar(progress and rank == 0) as bar:
        feats = extract(src, net.to(device), batch_size, device, bar, "reference")
    if rank != 0:
        return {}
    mu, sigma = statistics(feats["pool3"])
    mu_s, sigma_s = statistics(feats["spatial"])
    k = min(ref_images, len(src))
    with NpzWriter(out) as w:
        rows = w.stream("arr_0", (k, *src.shape[1:]), np.uint8)
        for batch in src.batches(256, 0, k):
            rows.write(batch)
        for name, v in (("mu", mu), ("sigma", sigma), ("mu_s", mu_s), ("sigma_s", sigma_s)):
            w.add(name, v)
    return {
        "out": str(out),
        "images_in_arr_0": k,
        "statistics_over": len(src),
        "inception": winfo,
        **device_report(device, "fp32"),
    }
