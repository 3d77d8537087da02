"""Sampling jobs: per-sample seeds and labels, sharding over processes, resume, and self-describing outputs.

Contracts (DESIGN.md):
  * noise of sample i = randn(3, H, W) from a CPU generator seeded with seed + i, float32 — so sample i
    is the same image whatever the batch size or the number of processes;
  * uint8 = clip((x + 1)·127.5 + 0.5, 0, 255), truncated (the release's rounding);
  * the output folder holds 000000.png …, grid.png, results.json and, with npz=True, an ADM samples.npz.
Re-running the same job skips indices already on disk, so an interrupted 50K run finishes where it stopped.
"""

import hashlib
import json
import math
import os
import platform
import re
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import PixelDiTError
from .solvers import SOLVERS, solve

_DATA = Path(__file__).resolve().parent / "data"


#################################################################################
#                         Public API: sample a batch                            #
#################################################################################


def sample(model, noise, cond, uncond=None, *, solver="flowdpm", steps=100, cfg=1.0, interval=(0.0, 1.0),
           shift=1.0, autocast=None):
    """Images in [-1, 1] (unclipped) from `noise` for either model. interval/shift in the c2i convention."""
    return solve(model, noise, cond, uncond, solver=solver, steps=steps, cfg=cfg, interval=interval,
                 shift=shift, autocast=autocast)[0]


def to_uint8(x):
    """(B, C, H, W) in [-1, 1] -> uint8, the release's rounding."""
    return ((x + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)


def noise_for(indices, seed: int, shape) -> torch.Tensor:
    """The per-sample noise contract: sample i draws from Generator('cpu').manual_seed(seed + i)."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator("cpu").manual_seed(seed + i)) for i in indices])


#################################################################################
#                                  Labels                                       #
#################################################################################


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


def imagenet_names() -> list[str]:
    return (_DATA / "imagenet_classes.txt").read_text().splitlines()


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def parse_class(spec: str, num_classes: int, names: list[str] | None) -> int:
    """'291' or 'lion' / 'golden_retriever' -> class id, with a one-line error for anything else."""
    if re.fullmatch(r"\d+", spec.strip()):
        k = int(spec)
        if k >= num_classes:
            raise PixelDiTError(f"class id {k} is out of range for a model with {num_classes} classes",
                                f"use 0..{num_classes - 1} (id {num_classes} is the null class)")
        return k
    if names:
        table = {_norm(n): i for i, n in enumerate(names)}
        if _norm(spec) in table:
            return table[_norm(spec)]
        close = [n for n in names if _norm(spec) in _norm(n)][:3]
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "use a class id or an ImageNet class name"
        raise PixelDiTError(f"unknown class name {spec!r}", hint)
    raise PixelDiTError(f"class {spec!r} is not an id and this model has no class names", f"use an id in 0..{num_classes - 1}")


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


#################################################################################
#                                   The job                                     #
#################################################################################


@dataclass(frozen=True)
class SampleJob:
    ckpt: str
    n: int
    out: str = ""
    classes: tuple = ()          # explicit class ids (cycled over indices); empty -> `mode`
    mode: str = "uniform"        # uniform | balanced
    solver: str = "flowdpm"
    steps: int = 100
    cfg: float = 1.0
    interval: tuple = (0.0, 1.0)
    shift: float = 1.0
    height: int = 256
    width: int = 256
    seed: int = 0
    batch_size: int = 32
    precision: str = "auto"      # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    npz: bool = False
    compile: bool = False
    weights: str = "ema"
    prompts: tuple = ()          # text-to-image: cycled over indices like classes
    negative_prompt: str = ""
    text_encoder: str = ""       # local Gemma-2-2b-it directory

    def identity(self) -> dict:
        """What determines the images (a re-run must match it to resume into the same folder)."""
        d = asdict(self)
        for k in ("out", "batch_size", "npz", "compile", "n", "text_encoder"):
            d.pop(k)
        d["ckpt"] = os.path.abspath(self.ckpt)
        return json.loads(json.dumps(d))  # tuples as lists, so it compares equal to what run.json holds


def default_out(job: SampleJob) -> str:
    """A folder named after every knob (as DiT's sample_ddp does)."""
    stem = Path(job.ckpt).stem
    lo, hi = job.interval
    return (f"samples/{stem}-{job.solver}{job.steps}-cfg{job.cfg:g}-int{lo:g}-{hi:g}-shift{job.shift:g}"
            f"-{job.height}x{job.width}-seed{job.seed}")


def file_sha256(path, chunk=1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def validate(job: SampleJob, cfg) -> None:
    """Every user error before any work (cfg: the model's ModelConfig)."""
    if job.n < 1:
        raise PixelDiTError(f"--n must be at least 1, got {job.n}")
    if job.steps < 1:
        raise PixelDiTError(f"--steps must be at least 1, got {job.steps}")
    if job.batch_size < 1:
        raise PixelDiTError(f"--batch-size must be at least 1, got {job.batch_size}")
    if job.solver not in SOLVERS:
        raise PixelDiTError(f"unknown solver {job.solver!r}", f"use one of {', '.join(SOLVERS)}")
    lo, hi = job.interval
    if not (0.0 <= lo <= hi <= 1.0):
        raise PixelDiTError(f"--cfg-interval {lo:g} {hi:g} is invalid", "need 0 <= LO <= HI <= 1 (t: 0 noise -> 1 data)")
    if job.shift <= 0:
        raise PixelDiTError(f"--shift must be positive, got {job.shift:g}")
    p = cfg.patch_size
    if job.height <= 0 or job.width <= 0 or job.height % p or job.width % p:
        raise PixelDiTError(f"image size {job.height}x{job.width} is not a multiple of the patch size {p}",
                            f"use --height/--width divisible by {p}")


#################################################################################
#                         Distributed plumbing (done once)                      #
#################################################################################


def dist_env():
    """(rank, world, local_rank) from torchrun's environment; (0, 1, 0) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed():
    rank, world, local = dist_env()
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def barrier(world):
    if world > 1:
        torch.distributed.barrier()


#################################################################################
#                                 Writing                                       #
#################################################################################


def _write_png(img_u8, path: Path):
    """Atomically: a killed job never leaves a half-written PNG that a resume would trust."""
    from torchvision.io import write_png

    tmp = path.with_name(f".{path.name}.tmp")
    write_png(img_u8.cpu(), str(tmp))
    os.replace(tmp, path)


def _read_png(path: Path):
    from torchvision.io import ImageReadMode, decode_png, read_file

    return decode_png(read_file(str(path)), ImageReadMode.RGB)


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "empty"


def png_name(i: int, prompt: str | None = None) -> str:
    """000042.png for classes; 000042-a-red-fox.png for prompts (index first, so sorting keeps order)."""
    return f"{i:06d}.png" if prompt is None else f"{i:06d}-{slug(prompt)}.png"


def png_path(out: Path, i: int):
    hits = sorted(out.glob(f"{i:06d}*.png"))
    return hits[0] if hits else None


def existing(out: Path, n: int) -> set[int]:
    have = {int(p.name[:6]) for p in out.glob("[0-9][0-9][0-9][0-9][0-9][0-9]*.png") if p.name[:6].isdigit()}
    return {i for i in have if i < n}


def write_grid(out: Path, n: int, k: int = 64, columns: int = 0):
    """The first images as a grid; `columns` > 1 (the number of cycled classes/prompts) aligns one per column."""
    from torchvision.io import write_png
    from torchvision.utils import make_grid

    k = min(n, k)
    if 1 < columns <= 16 and k >= columns:
        k = max(columns, min(n, 8 * columns) // columns * columns)
    nrow = columns if 1 < columns <= 16 else max(1, math.ceil(math.sqrt(k)))
    imgs = torch.stack([_read_png(png_path(out, i)) for i in range(k)])
    grid = make_grid(imgs, nrow=nrow, padding=2, pad_value=255)
    write_png(grid, str(out / "grid.png"))


def write_npz(out: Path, n: int, labels: list[int]):
    """ADM samples.npz (arr_0 uint8 NHWC, arr_1 labels), streamed through a memory map, never all in RAM."""
    first = _read_png(png_path(out, 0))
    H, W = first.shape[1:]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        arr = np.lib.format.open_memmap(Path(tmp) / "arr_0.npy", mode="w+", dtype=np.uint8, shape=(n, H, W, 3))
        for i in range(n):
            arr[i] = _read_png(png_path(out, i)).permute(1, 2, 0).numpy()
        arr.flush()
        del arr
        np.save(Path(tmp) / "arr_1.npy", np.asarray(labels, dtype=np.int64))
        part = out / ".samples.npz.tmp"
        with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            z.write(Path(tmp) / "arr_0.npy", "arr_0.npy")
            z.write(Path(tmp) / "arr_1.npy", "arr_1.npy")
        os.replace(part, out / "samples.npz")


def _write_json(path: Path, obj):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


#################################################################################
#                                  Running                                      #
#################################################################################


def run(job: SampleJob, model=None, progress=True) -> dict:
    """Run (or finish) a sampling job on this process's share; rank 0 writes grid/npz/results.json."""
    from .convert import load_model

    rank, world, device = init_distributed()
    if model is None:
        model = load_model(job.ckpt, weights=job.weights, device=device)
    cfg = model.config
    validate(job, cfg)
    if job.classes and max(job.classes) >= cfg.num_classes:
        raise PixelDiTError(f"class id {max(job.classes)} is out of range for a model with {cfg.num_classes} classes")
    encoder = None
    if cfg.kind == "t2i":
        if not job.prompts:
            raise PixelDiTError("this is a text-to-image checkpoint: give --prompt or --prompts FILE")
        if not job.text_encoder:
            raise PixelDiTError("text-to-image sampling needs the Gemma-2 text encoder", "pass --text-encoder DIR (gemma-2-2b-it)")
        from .text import TextEncoder

        encoder = TextEncoder(job.text_encoder, device=device, max_length=cfg.text_len, expected_dim=cfg.text_dim)
    elif job.prompts:
        raise PixelDiTError("--prompt was given but this is a class-conditional checkpoint", "use --class")
    precision = job.precision if job.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision == "bf16" and device.type == "cpu":
        raise PixelDiTError("bf16 on this CPU runs matmuls ~500x slower than fp32", "use --precision fp32 (the default on CPU)")
    if precision not in ("fp32", "bf16"):
        raise PixelDiTError(f"unknown precision {precision!r}", "use auto, fp32 or bf16")
    autocast = torch.bfloat16 if precision == "bf16" else None

    names = getattr(model, "class_names", None) or (imagenet_names() if cfg.num_classes == 1000 else None)
    out = Path(job.out or default_out(job))
    identity = dict(job.identity(), num_classes=cfg.num_classes)
    run_file = out / "run.json"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if run_file.exists():
            before = json.loads(run_file.read_text())
            if before != identity:
                diff = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
                raise PixelDiTError(f"{out} holds samples made with other settings ({', '.join(diff)})",
                                    "choose another --out, or the same settings to resume")
        else:
            if any(out.glob("[0-9]*.png")):
                raise PixelDiTError(f"{out} already holds PNGs from an unknown run", "choose another --out")
            _write_json(run_file, identity)
    barrier(world)

    done = existing(out, job.n)
    todo = [i for i in range(job.n) if i not in done]
    mine = todo[rank::world]
    net = torch.compile(model) if job.compile else model
    stats, t0 = None, time.perf_counter()

    bar = None
    if progress and rank == 0 and mine:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(), transient=False)
        task = bar.add_task("", total=len(todo), rate="-")
        bar.start()
    try:
        for b in range(0, len(mine), job.batch_size):
            idx = mine[b: b + job.batch_size]
            x = noise_for(idx, job.seed, (cfg.in_channels, job.height, job.width)).to(device)
            if encoder is not None:
                texts = [job.prompts[i % len(job.prompts)] for i in idx]
                y, uncond = encoder.encode(texts).to(device), encoder.null(job.negative_prompt).to(device)
            else:
                texts, uncond = [None] * len(idx), None
                y = torch.tensor(labels_for(idx, classes=list(job.classes), mode=job.mode, n=job.n,
                                            num_classes=cfg.num_classes, seed=job.seed), device=device)
            imgs, stats = solve(net, x, y, uncond, solver=job.solver, steps=job.steps, cfg=job.cfg,
                                interval=job.interval, shift=job.shift, autocast=autocast)
            for i, img, text in zip(idx, to_uint8(imgs), texts):
                _write_png(img, out / png_name(i, text))
            if bar is not None:
                done_here = b + len(idx)
                rate = done_here * world / (time.perf_counter() - t0)
                bar.update(task, completed=min(len(todo), done_here * world), rate=f"{rate:.2f}")
    finally:
        if bar is not None:
            bar.stop()
    elapsed = time.perf_counter() - t0
    barrier(world)

    result = {}
    if rank == 0:
        have = existing(out, job.n)
        missing = [i for i in range(job.n) if i not in have]
        if missing:
            raise PixelDiTError(f"{len(missing)} samples are missing after the run (first: {missing[0]})", "re-run the same command to finish")
        if encoder is not None:  # arr_1 holds the prompt index
            all_labels = [i % len(job.prompts) for i in range(job.n)]
        else:
            all_labels = labels_for(range(job.n), classes=list(job.classes), mode=job.mode, n=job.n,
                                    num_classes=cfg.num_classes, seed=job.seed)
        write_grid(out, job.n, columns=len(job.prompts) if encoder is not None else len(job.classes))
        if job.npz:
            write_npz(out, job.n, all_labels)
        if stats is None:  # nothing left to do: count one solve's evaluations analytically from a dry run
            stats = _dry_stats(job, cfg)
        result = {
            "settings": dict(asdict(job), out=str(out), precision=precision),
            "num_classes": cfg.num_classes,
            "class_names": [names[c] for c in sorted(set(all_labels))][:20] if names and encoder is None else None,
            "prompts": list(job.prompts) if encoder is not None else None,
            "negative_prompt": job.negative_prompt if encoder is not None else None,
            "truncated_prompts": encoder.truncated if encoder is not None else None,
            "nfe_per_sample": stats.evals,            # network evaluations actually made per sample
            "network_calls_per_batch": stats.calls,
            "guided_steps": sum(stats.guided_steps),
            "generated_this_run": len(todo),
            "resumed_from_disk": len(done),
            "seconds": round(elapsed, 3),
            "images_per_second": round(len(todo) / elapsed, 4) if todo and elapsed > 0 else None,
            "checkpoint": os.path.abspath(job.ckpt),
            "checkpoint_sha256": file_sha256(job.ckpt) if Path(job.ckpt).is_file() else None,
            "dtype": precision,
            "device": str(device),
            "world_size": world,
            "versions": {"pixeldit": _version(), "torch": torch.__version__, "python": platform.python_version()},
        }
        _write_json(out / "results.json", result)
    barrier(world)
    return result


def _dry_stats(job, cfg):
    """The evaluation count of one solve, from a stand-in network (the count depends only on the schedule)."""
    from types import SimpleNamespace

    class Zero(torch.nn.Module):
        config = SimpleNamespace(kind=cfg.kind, num_classes=cfg.num_classes)

        def forward(self, x, t, y):
            return torch.zeros_like(x)

    cond = torch.zeros(1, dtype=torch.long) if cfg.kind == "c2i" else torch.zeros(1, 1, 1)
    _, st = solve(Zero(), torch.zeros(1, 1, 1, 1), cond, None if cfg.kind == "c2i" else cond, solver=job.solver,
                  steps=job.steps, cfg=job.cfg, interval=job.interval, shift=job.shift)
    return st


def _version():
    from . import __version__

    return __version__
