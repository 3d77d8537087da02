"""`pixeldit eval-fid`: ADM-protocol FID / sFID / IS / precision / recall of a sample set against a reference.

ADM's rules, kept: a file's stored mu/sigma/mu_s/sigma_s are used instead of its images for FID/sFID;
precision/recall always use reference *images* (10K in ADM's batches); IS uses the samples in file
order. A metric the inputs cannot support is skipped with its reason, never a crash. Reference
features are cached by (file hash, weights hash, feature version).
"""

import hashlib
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..dist import device_report, dist_env, gather, init_distributed
from ..errors import PixelDiTError
from ..io import ensure_writable_file, file_sha256
from ..npz import NpzImages, NpzWriter, open_images
from ..progress import progress as progress_bar
from .inception import load_inception
from .scores import frechet_distance, inception_score, looks_sorted, precision_recall, statistics

FEATURE_VERSION = "tf1-bilinear/x-128d128/pool3+mixed6d.1x1[:7]nhwc/v1"


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
) -> dict:
    """FID / sFID / IS / precision / recall of `samples` (npz or folder) against an ADM reference batch,
    with the reference's features cached by content hash. Rank 0 returns the result; other ranks {}."""
    rank, world, device = _device_setup(device)
    net, winfo = load_inception(inception, inception_sha256)
    net = net.to(device)
    samples, ref = Path(samples), Path(ref)
    if not ref.exists():
        raise PixelDiTError(f"reference {ref} does not exist")
    src = open_images(samples)
    if src.array("mu") is None:  # stored statistics need no images; otherwise at least two
        _check_images(src, f"samples {samples}")

    t0 = time.perf_counter()
    skipped, notes = {}, []
    with progress_bar(progress and rank == 0) as bar:
        r, ref_hash = reference_stats(ref, net, winfo["sha256"], batch_size, device, cache_dir, bar)
        stored_mu = src.array("mu") if isinstance(src, NpzImages) else None
        feats = extract(src, net, batch_size, device, bar, "samples")
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
    res.update(_scores(src, feats, r, stored_mu, fid_method, pr_mode, skipped, notes))
    notes.extend(_caveats(len(src), fid_method, time.perf_counter() - t_scores))
    res.update(
        {
            "samples": str(samples),
            "reference": str(ref),
            "reference_sha256": ref_hash,
            "inception": winfo,
            "protocol": _protocol(fid_method, pr_mode),
            "skipped": skipped,
            "notes": notes,
            "seconds": round(time.perf_counter() - t0, 2),
            **device_report(device, "fp32"),
        }
    )
    return res


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


def _protocol(fid_method: str, pr_mode: str) -> dict:
    """What was computed, in words (results.json): enough to tell two evaluations apart."""
    return {
        "resize": "TF1 bilinear to 299 (no half-pixel, no antialias)",
        "normalise": "(x - 128) / 128",
        "fid": f"pool3, {fid_method} sqrtm",
        "sfid": "Mixed_6d.branch1x1[:7], NHWC",
        "is": "1008 bias-free logits, 5000-image splits in order",
        "precision_recall": f"k=3, tiles 10000, {pr_mode} distances",
        "feature_version": FEATURE_VERSION,
    }


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
