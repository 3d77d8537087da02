"""Conditions by index: class names and ids, the label of every sample, and the T2I aspect buckets.

A sample's label depends on its global index alone (like its noise), so the images of a job never
depend on batch size, process count or resume.
"""

import difflib
import json
import math
import re
from pathlib import Path

import numpy as np

from .choices import ClassMode, values
from .errors import PixelDiTError

_DATA = Path(__file__).resolve().parent / "data"
CLASS_MODES = values(ClassMode)  # ("uniform", "balanced")


def imagenet_names() -> list[str]:
    return (_DATA / "imagenet_classes.txt").read_text().splitlines()


def class_names_of(model) -> list[str] | None:
    """The model's own class names (stored in its checkpoint), else ImageNet's for a 1000-class model."""
    names = getattr(model, "class_names", None)
    if names:  # index-aligned; a shorter list (checked when the checkpoint was read) names the first ids only
        return list(names) + [str(i) for i in range(len(names), model.config.num_classes)]
    return imagenet_names() if model.config.num_classes == 1000 else None


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def parse_class(spec: str, num_classes: int, names: list[str] | None) -> int:
    """'291' or 'lion' / 'golden_retriever' -> class id, with a one-line error for anything else."""
    spec = str(spec)
    if re.fullmatch(r"\s*-?\d+\s*", spec):
        k = int(spec)
        if not 0 <= k < num_classes:
            raise PixelDiTError(
                f"class id {k} is out of range for a model with {num_classes} classes",
                f"use 0..{num_classes - 1} (id {num_classes} is the null class)",
            )
        return k
    if names:
        table = {_norm(n): i for i, n in enumerate(names)}
        if _norm(spec) in table:
            return table[_norm(spec)]
        close = [n for n in names if _norm(spec) in _norm(n) or _norm(n) in _norm(spec)][:3]
        if not close:
            close = difflib.get_close_matches(spec, names, n=3, cutoff=0.6)
        kind = (
            "an ImageNet class name"
            if num_classes == 1000 and names == imagenet_names()
            else f"one of this model's {num_classes} class names ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        )
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"use a class id or {kind}"
        raise PixelDiTError(f"unknown class name {spec!r}", hint)
    raise PixelDiTError(
        f"class {spec!r} is not an id and this model has no class names", f"use an id in 0..{num_classes - 1}"
    )


def labels_for(indices, *, classes: list[int] | None, mode: str, n: int, num_classes: int, seed: int) -> list[int]:
    """Label of each global index; like the noise, it depends on the index alone."""
    if classes:
        return [classes[i % len(classes)] for i in indices]
    if mode == "balanced":  # the release's evaluation order: idx // ceil(N / classes)
        per = math.ceil(n / num_classes)
        return [min(i // per, num_classes - 1) for i in indices]
    if mode == "uniform":
        return [int(np.random.default_rng([seed, i, 0x1AB]).integers(num_classes)) for i in indices]
    raise PixelDiTError(f"unknown --classes mode {mode!r}", "use uniform or balanced, or give --class")


def aspect_bucket(spec: str, resolution: int = 1024) -> tuple[int, int]:
    """'16:9' (width:height) -> the release's nearest (height, width) bucket, scaled to `resolution`."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*", spec)
    if not m or float(m.group(1)) <= 0 or float(m.group(2)) <= 0:
        raise PixelDiTError(f"aspect ratio {spec!r} is not W:H", "e.g. --aspect-ratio 16:9")
    want = float(m.group(2)) / float(m.group(1))  # height / width, the table's key
    table = json.loads((_DATA / "aspect_ratios_1024.json").read_text())["buckets"]
    h, w = min(table.values(), key=lambda hw: abs(math.log(hw[0] / hw[1]) - math.log(want)))
    scale = resolution / 1024
    return int(round(h * scale / 16) * 16), int(round(w * scale / 16) * 16)
