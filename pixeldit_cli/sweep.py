"""`pixeldit sweep`: a grid over sampling settings, each cell a normal sample job, scored against one reference.

    pixeldit sweep --ckpt xl256.safetensors --ref VIRTUAL_imagenet256_labeled.npz --out sweeps/xl256 \
        --n 10000 --cfg 1.5,2,2.75,3.5 --interval 0.1-0.9,0.1-1.0 --metrics fid,kid

Every cell is `sampling.run` on a SampleJob made by `sampling.job_for` (the very path of `pixeldit sample`:
sharded, resumable, npz) in OUT/cells/NAME, then `metrics.evaluate` with the reference's features cached in
OUT/cache (computed once for the whole grid). A cell's scores are written to OUT/cells/NAME/scores.json
as soon as they exist: killed and re-run, the sweep skips every scored cell and the interrupted cell's job
finishes where it stopped. At the end: sweep.json (every cell, its settings, metrics, NFE, seconds, the
best cell per metric), sweep.md (the table) and sweep.png (each metric against the first swept axis, one
line per combination of the others).
"""

import itertools
import json
import math
import time
from pathlib import Path

from .errors import PixelDiTError
from .folders import MARKER, claim, differences, lock, marker_format, read_marker
from .io import atomic_path, ensure_writable_dir, file_sha256, write_json, write_text
from .metrics.evaluate import evaluate, parse_metrics
from .models.loading import checkpoint_sha256
from .npz import open_images
from .sampling import execute, prepare
from .solvers import SOLVERS

AXES = ("cfg", "interval", "steps", "solver", "semantic_reuse", "shift")  # SampleJob fields a sweep may vary
LOWER_IS_BETTER = {"fid": True, "sfid": True, "kid": True, "fd_dinov2": True, "is": False, "precision": False,
                   "recall": False, "clip_score": False}  # fmt: skip


#################################################################################
#                               The grid                                        #
#################################################################################


def _number(axis: str, text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise PixelDiTError(f"--{axis.replace('_', '-')} value {text!r} is not a number",
                            f"give a comma-separated list, e.g. --{axis.replace('_', '-')} 1.5,2,3") from None  # fmt: skip
    if isinstance(value, float) and not math.isfinite(value):
        raise PixelDiTError(f"--{axis.replace('_', '-')} value {text!r} is not finite")
    return value


def parse_axis(axis: str, text: str | None) -> list:
    """'1.5,2,3' -> [1.5, 2.0, 3.0]; intervals 'LO-HI'; solvers by name. None: the axis is not swept."""
    if text is None:
        return []
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(items):
        raise PixelDiTError(f"--{axis.replace('_', '-')} {text!r} has an empty value", "give a comma-separated list")
    if axis == "interval":
        out = []
        for t in items:
            lo, sep, hi = t.partition("-")
            if not sep:
                raise PixelDiTError(f"--interval value {t!r} is not LO-HI", "e.g. --interval 0.1-0.9,0.1-1.0")
            out.append((_number(axis, lo, float), _number(axis, hi, float)))
        return list(dict.fromkeys(out))
    if axis == "solver":
        unknown = [t for t in items if t not in SOLVERS]
        if unknown:
            raise PixelDiTError(f"unknown --solver {unknown[0]!r}", f"use some of {','.join(SOLVERS)}")
        return list(dict.fromkeys(items))
    kind = int if axis in ("steps", "semantic_reuse") else float
    return list(dict.fromkeys(_number(axis, t, kind) for t in items))


def grid(axes: dict) -> list[dict]:
    """Every combination of the swept values, the first axis varying slowest."""
    swept = {k: v for k, v in axes.items() if v}
    if not swept:
        raise PixelDiTError("the grid is empty", "sweep at least one of --cfg, --interval, --steps, --solver, "
                                                  "--semantic-reuse, --shift")  # fmt: skip
    return [dict(zip(swept, values, strict=True)) for values in itertools.product(*swept.values())]


def cell_name(cell: dict) -> str:
    """A folder name that says the cell's settings: cfg2-int0.1-0.9-steps50."""
    short = {
        "cfg": "cfg",
        "interval": "int",
        "steps": "steps",
        "solver": "",
        "semantic_reuse": "reuse",
        "shift": "shift",
    }
    parts = []
    for k, v in cell.items():
        text = f"{v[0]:g}-{v[1]:g}" if k == "interval" else (f"{v:g}" if isinstance(v, float) else str(v))
        parts.append(short[k] + text.replace("+", ""))
    return "-".join(parts)


#################################################################################
#                               Running                                         #
#################################################################################


def check_reference(ref: Path, height: int, width: int) -> None:
    """Before any sampling: the reference exists and, if it holds images, has the cells' resolution."""
    if not ref.exists():
        raise PixelDiTError(f"reference {ref} does not exist", "pass an ADM reference batch or an image folder")
    src = open_images(ref, require_images=False)
    if len(src) and tuple(src.shape[1:3]) != (height, width):
        raise PixelDiTError(
            f"reference {ref} holds {src.shape[2]}x{src.shape[1]} images but the cells sample {width}x{height}",
            "use a reference of the samples' resolution (or --height/--width to match it)",
        )


def run_sweep(model, ckpt, axes: dict, make_job, ref, out, metrics, eval_kwargs: dict, progress=True,
              process=None) -> dict:  # fmt: skip
    """Sample and score every cell of the grid (skipping those already scored), then write the artefacts.

    make_job(cell, out) -> (SampleJob, config) for one cell's settings (cli: `sampling.job_for` with the
    sweep's flags); eval_kwargs: what `metrics.evaluate` takes besides samples, ref and metrics."""
    metrics = parse_metrics(metrics)
    cells = grid(axes)
    out, ref = Path(out), Path(ref)
    jobs = [(cell, *make_job(cell, out / "cells" / cell_name(cell))) for cell in cells]  # every cell validated first
    job0 = jobs[0][1]
    check_reference(ref, job0.height, job0.width)
    if "fd_dinov2" in metrics and not eval_kwargs.get("dinov2"):
        raise PixelDiTError("fd_dinov2 needs the DINOv2 model", "pass --dinov2 DIR")
    if "clip" in metrics and not eval_kwargs.get("clip"):
        raise PixelDiTError("the CLIP score needs a CLIP model", "pass --clip DIR")
    identity = {"format": marker_format("sweep"), "checkpoint_sha256": checkpoint_sha256(ckpt),
                "reference_sha256": file_sha256(ref), "n": job0.n, "seed": job0.seed,
                "metrics": list(metrics), "height": job0.height, "width": job0.width}  # fmt: skip
    claim(out, "sweep")
    ensure_writable_dir(out)
    with lock(out):
        before = read_marker(out)
        if before is not None:
            diff = differences(before, identity)
            if diff:
                raise PixelDiTError(f"{out} holds a sweep with other settings ({', '.join(diff)})",
                                    "choose another --out, or the same checkpoint, reference, --n, --seed and --metrics")  # fmt: skip
        else:
            write_json(out / MARKER, identity)
        rows = []
        for i, (cell, job, config) in enumerate(jobs):
            rows.append(_cell(i, len(jobs), cell, job, config, model, ref, identity, metrics, eval_kwargs,
                              out, progress, process))  # fmt: skip
        result = _summary(rows, axes, metrics, identity, ref, out)
        write_json(out / "sweep.json", result)
        write_text(out / "sweep.md", _table(rows, metrics, result["best"]))
        result["plot"] = _plot(rows, metrics, axes, out / "sweep.png")
        write_json(out / "sweep.json", result)
    return result


def _cell(i, total, cell, job, config, model, ref, identity, metrics, eval_kwargs, out, progress, process) -> dict:
    folder = Path(job.out)
    scores_path = folder / "scores.json"
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in job.solving.kwargs().items()}
    want = {"settings": settings, "metrics": list(metrics), "reference_sha256": identity["reference_sha256"]}
    if scores_path.is_file():
        try:
            done = json.loads(scores_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            done = {}
        if isinstance(done, dict) and all(done.get(k) == v for k, v in want.items()):
            if progress:
                print(f"cell {i + 1}/{total} {cell_name(cell)}: scored already", flush=True)
            return done
    if progress:
        print(f"cell {i + 1}/{total} {cell_name(cell)}: sampling {job.n} images", flush=True)
    res = execute(prepare(job, model, process, {"config": config.to_dict()}), progress)
    t0 = time.perf_counter()
    kwargs = {"cache_dir": out / "cache", **eval_kwargs}  # eval_kwargs may name a shared cache
    scores = evaluate(folder / "samples.npz", ref, metrics=metrics, progress=progress, **kwargs)
    row = {
        "name": cell_name(cell),
        "cell": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cell.items()},
        **want,
        "scores": {k: scores.get(k) for k in LOWER_IS_BETTER if k in scores} | _extra_scores(scores),
        "skipped": scores.get("skipped", {}),
        "nfe_per_sample": res.get("nfe_per_sample"),
        "seconds": {"sampling": res.get("seconds"), "scoring": round(time.perf_counter() - t0, 2)},
        "folder": str(folder),
    }
    write_json(scores_path, row)
    return row


def _extra_scores(scores: dict) -> dict:
    return {k: scores[k] for k in ("kid_std",) if k in scores}


def best_cells(rows: list[dict], metrics) -> dict:
    """Per metric, the cell with the best value (lowest FID / sFID / KID / FD, highest IS / P / R / CLIP)."""
    best = {}
    for key, lower in LOWER_IS_BETTER.items():
        scored = [r for r in rows if r["scores"].get(key) is not None]
        if scored:
            pick = min(scored, key=lambda r: r["scores"][key] if lower else -r["scores"][key])
            best[key] = {"cell": pick["name"], "value": pick["scores"][key]}
    return best


def _summary(rows, axes, metrics, identity, ref, out) -> dict:
    return {
        "format": "pixeldit-sweep-results",
        "axes": {k: [list(x) if isinstance(x, tuple) else x for x in v] for k, v in axes.items() if v},
        "metrics": list(metrics),
        "n_per_cell": identity["n"],
        "seed": identity["seed"],
        "reference": str(ref),
        "reference_sha256": identity["reference_sha256"],
        "checkpoint_sha256": identity["checkpoint_sha256"],
        "cells": rows,
        "best": best_cells(rows, metrics),
        "seconds": round(sum((r["seconds"]["sampling"] or 0) + r["seconds"]["scoring"] for r in rows), 2),
        "out": str(out),
    }


def _table(rows, metrics, best) -> str:
    keys = [k for k in LOWER_IS_BETTER if any(r["scores"].get(k) is not None for r in rows)]
    axes = list(rows[0]["cell"])
    head = "| " + " | ".join([*axes, *keys, "NFE", "seconds"]) + " |"
    lines = [head, "|" + "---|" * (len(axes) + len(keys) + 2)]
    for r in rows:
        cells = [f"{v[0]:g}–{v[1]:g}" if isinstance(v, list) else (f"{v:g}" if isinstance(v, float) else str(v))
                 for v in r["cell"].values()]  # fmt: skip
        vals = []
        for k in keys:
            v = r["scores"].get(k)
            text = "—" if v is None else (f"{v:.5f}" if k == "kid" else f"{v:.3f}")
            vals.append(f"**{text}**" if best.get(k, {}).get("cell") == r["name"] else text)
        secs = (r["seconds"]["sampling"] or 0) + r["seconds"]["scoring"]
        lines.append("| " + " | ".join([*cells, *vals, str(r["nfe_per_sample"]), f"{secs:.0f}"]) + " |")
    best_line = ", ".join(f"{k}: {v['cell']} ({v['value']:.4g})" for k, v in best.items())
    return "\n".join(lines) + f"\n\nBest (bold): {best_line}\n"


def _plot(rows, metrics, axes, path: Path) -> str | None:
    """Each metric against the first swept axis, one line per combination of the other axes; None without
    matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 (optional)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    keys = [k for k in LOWER_IS_BETTER if any(r["scores"].get(k) is not None for r in rows)]
    if not keys:
        return None
    swept = list(rows[0]["cell"])
    x_axis, others = swept[0], swept[1:]
    xs = list(dict.fromkeys(json.dumps(r["cell"][x_axis]) for r in rows))
    fig, axs = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axs[0], keys, strict=True):
        groups = {}
        for r in rows:
            label = ", ".join(f"{k}={_show(r['cell'][k])}" for k in others) or key
            groups.setdefault(label, []).append(r)
        for label, rs in groups.items():
            pts = [(xs.index(json.dumps(r["cell"][x_axis])), r["scores"].get(key)) for r in rs]
            pts = [(x, y) for x, y in pts if y is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xticks(range(len(xs)), [_show(json.loads(x)) for x in xs])
        ax.set_xlabel(x_axis)
        ax.set_title(f"{key} ({'lower' if LOWER_IS_BETTER[key] else 'higher'} is better)")
        if len(groups) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return str(path)


def _show(v) -> str:
    if isinstance(v, list):
        return f"{v[0]:g}–{v[1]:g}"
    return f"{v:g}" if isinstance(v, float) else str(v)
