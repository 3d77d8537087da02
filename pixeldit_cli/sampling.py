"""Sampling jobs: per-sample seeds and labels, sharding over processes, resume, and self-describing outputs.

Contracts (README, Sampling; docs/conventions.md):
  * noise of sample i = randn(C, H, W) (C = the model's channels) from a CPU generator seeded with seed + i, float32 — so sample i
    is the same image whatever the batch size or the number of processes;
  * uint8 = clip((x + 1)·127.5 + 0.5, 0, 255), truncated (the release's rounding);
  * the output folder holds run.json, grid.png, results.json and, by --format, one PNG per sample
    (000000.png …) and/or an ADM samples.npz (arr_0 uint8 NHWC, arr_1 labels). A 1-channel model's PNGs and
    grid are gray; its samples.npz is RGB with the gray replicated, so ADM's evaluator reads it unchanged.

The job is linear in n: every process appends its images to its own record file as it makes them
(records.py), rank 0 assembles samples.npz by streaming those records once, and the bookkeeping is one
directory listing per run. Re-running the same job finishes where it stopped; the images are identical.
"""

import contextlib
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import __version__
from .choices import SampleFormat, values
from .config import command_config, with_values
from .dist import barrier, broadcast, device_report, gather, init_distributed
from .errors import PixelDiTError
from .families import family_of
from .flops import pathway_flops
from .folders import MARKER, claim, differences, lock, marker_format, read_marker, remove_own, remove_stale_temporaries
from .io import ensure_writable_dir, to_channels, write_grid, write_json, write_png
from .labels import CLASS_MODES, aspect_bucket
from .memory import check_fits
from .models.compiled import cached_for_inference, for_inference
from .models.loading import checkpoint_sha256, load_model
from .models.lora import apply_loras
from .models.packed import fast_linears
from .models.packed import report as fast_path_report
from .npz import NpzWriter
from .precision import autocast_dtype, choose
from .progress import progress as progress_bar
from .records import PNG_NAME, PartWriter, RecordReader, remove_parts, scan
from .settings import SolveSettings, solve_values
from .solvers import noise_for, solve, to_uint8
from .validate import MAX_IMAGES, count
from .validate import seed as seed_ok

FORMATS = values(SampleFormat)  # ("auto", "png", "npz", "both")
SOLVE_FIELDS = tuple(f.name for f in fields(SolveSettings))
AUTO_PNG_LIMIT = 1000  # --format auto: PNGs and npz up to this many images, the npz alone above it


#################################################################################
#                         Public API: sample a batch                            #
#################################################################################


def sample(
    model,
    noise,
    cond,
    uncond=None,
    *,
    solver="flowdpm",
    steps=100,
    cfg=1.0,
    interval=(0.0, 1.0),
    shift=1.0,
    autocast=None,
    semantic_reuse=1,
    reuse_schedule="uniform",
    precision: str | None = None,
    fast: bool = True,
    compile: bool = False,
):
    """Images in [-1, 1] (unclipped) from `noise` for either model. interval/shift in the c2i convention.
    semantic_reuse K recomputes the patch pathway every K-th evaluation (docs/semantic-reuse.md).

    precision: "fp32" (the default), "bf16" or "auto" (chosen from the hardware, precision.choose); the
    older `autocast=torch.bfloat16` means "bf16". fast: the jobs' CPU fast path (models/packed.py: packed
    fp32 weights and fused pixel-level ops, within ~1e-6 of the plain path; in bf16 the weights copied
    once and packed for oneDNN, the same fused ops, within bf16 rounding of plain autocast; freed memory
    kept in the process heap); fast=False runs the
    network's plain forward. compile: the frozen compiled network (models/compiled.py:
    on a CPU in fp32 XL/16 samples 1.22–1.26× faster after about a minute of compilation per batch shape;
    kept across calls while the weights are unchanged)."""
    settings = SolveSettings(
        solver=solver,
        steps=steps,
        cfg=cfg,
        interval=tuple(interval),
        shift=shift,
        semantic_reuse=semantic_reuse,
        reuse_schedule=reuse_schedule,
    )
    if precision is not None:
        autocast = autocast_dtype(choose(precision, noise.device).precision)
    prec = "bf16" if autocast == torch.bfloat16 else "fp32"
    net = cached_for_inference(model, prec) if compile else model
    with fast_linears(model, prec, enabled=fast and not compile):
        return solve(net, noise, cond, uncond, autocast=autocast, **settings.kwargs())[0]


#################################################################################
#                                   The job                                     #
#################################################################################


@dataclass(frozen=True)
class SampleJob:
    ckpt: str
    n: int
    out: str = ""
    classes: tuple = ()  # explicit class ids (cycled over indices); empty -> `mode`
    mode: str = "uniform"  # uniform | balanced
    solver: str = "flowdpm"
    steps: int = 100
    cfg: float = 1.0
    interval: tuple = (0.0, 1.0)
    shift: float = 1.0
    height: int = 256
    width: int = 256
    seed: int = 0
    batch_size: int = 32
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16
    npz: bool = False  # make sure samples.npz is written (whatever --format says)
    compile: bool = False
    weights: str = "ema"
    prompts: tuple = ()  # text-to-image: cycled over indices like classes
    negative_prompt: str = ""
    text_encoder: str = ""  # local Gemma-2-2b-it directory
    format: str = "auto"  # png | npz | both | auto (both up to AUTO_PNG_LIMIT images, npz above)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    semantic_reuse: int = 1  # run the patch pathway every K-th evaluation (1: always, the release's sampler)
    reuse_schedule: str = "uniform"  # uniform | ends (also every evaluation of the first and last 10%)
    packed: bool = True  # CPU: the fast path (models/packed.py: packed weights, fused ops); last bits only
    lora: tuple = ()  # ((folder, scale, sha256), ...): peft LoRA adapters merged into the weights (models/lora.py)

    overwrite: bool = False  # replace the outputs of another job in --out (pixeldit's own files only)
    solving: SolveSettings = field(init=False, compare=False, repr=False)  # solver ... reuse_schedule, checked

    def __post_init__(self):
        """Validated once, here: every later layer trusts the job."""
        count("--n", self.n, 1, MAX_IMAGES)
        object.__setattr__(self, "solving", SolveSettings(**{k: getattr(self, k) for k in SOLVE_FIELDS}))
        object.__setattr__(self, "interval", self.solving.interval)
        count("--batch-size", self.batch_size, 1, MAX_IMAGES)
        seed_ok("--seed", self.seed, self.n)
        if self.format not in FORMATS:
            raise PixelDiTError(f"unknown --format {self.format!r}", f"use one of {', '.join(FORMATS)}")
        if not self.classes and self.mode not in CLASS_MODES:
            raise PixelDiTError(f"unknown --classes mode {self.mode!r}", "use uniform or balanced, or give --class")
        if self.height <= 0 or self.width <= 0:  # no upper bound here: the memory check refuses what cannot fit
            raise PixelDiTError(
                f"image size {self.height}x{self.width} is invalid", "--height and --width must be positive"
            )

    def identity(self, checkpoint_sha256: str, device_type: str, precision: str) -> dict:
        """What determines the images (a re-run must match it to resume into the same folder): the settings,
        the checkpoint's contents (not only its path: a file retrained or converted again under the same name
        makes other images) and what the arithmetic ran as (device type, resolved precision, packed GEMMs,
        which move the last bits)."""
        d = self.values()
        for k in (
            "out",
            "batch_size",
            "npz",
            "compile",
            "n",
            "text_encoder",
            "format",
            "device",
            "packed",
            "overwrite",
        ):
            d.pop(k)
        if self.semantic_reuse == 1:  # the plain sampler: folders made before the option existed still resume
            d.pop("semantic_reuse"), d.pop("reuse_schedule")
        if not self.lora:  # likewise for the base weights alone
            d.pop("lora")
        d["ckpt"] = os.path.abspath(self.ckpt)
        d.update(
            checkpoint_sha256=checkpoint_sha256,
            device_type=device_type,
            precision=precision,
            packed=self.packs(device_type, precision),
        )
        return _plain(d)  # tuples as lists, so it compares equal to what run.json holds

    def values(self) -> dict:
        """Every field as plain values (the solve settings as their own fields, not nested)."""
        d = asdict(self)
        d.pop("solving")
        return d

    def packs(self, device_type: str, precision: str) -> bool:
        """Whether the job runs packed GEMMs (CPU fp32 only; see models/packed.py)."""
        return self.packed and not self.compile and device_type == "cpu" and precision == "fp32"

    def resolved_format(self) -> str:
        fmt = self.format if self.format != "auto" else ("both" if self.n <= AUTO_PNG_LIMIT else "npz")
        return "both" if self.npz and fmt == "png" else fmt


def _plain(d):
    return json.loads(json.dumps(d))


def read_prompts(path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise PixelDiTError(f"prompt file {path} does not exist")
    try:
        lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    except UnicodeDecodeError as e:
        raise PixelDiTError(f"prompt file {path} is not UTF-8 text (byte {e.start})", "save it as UTF-8") from None
    if not lines:
        raise PixelDiTError(f"prompt file {path} holds no prompts", "one prompt per line")
    return lines


def job_for(model, ckpt, *, preset=None, overrides=None, classes=(), prompts=(), aspect_ratio=None, **given):
    """(job, where its defaults came from, the resolved config) for a command line — the one place a
    sample command's settings are resolved: every value given (not None) wins; the rest come from --preset,
    else the checkpoint's own training config, else the release preset of the model's family
    (config.command_config), with dotted overrides (`sample.cfg=3`) applied on top. Class names or ids
    are resolved here; the job validates itself, `prepare` checks it against the network."""
    base, defaults_from = command_config(preset, overrides, model)
    sc, res = base.sample, base.data.resolution
    if aspect_ratio:
        if given.get("height") is not None or given.get("width") is not None:
            raise PixelDiTError("--aspect-ratio and --height/--width both given", "use one of them")
        given["height"], given["width"] = aspect_bucket(aspect_ratio, sc.height or res)
    defaults = {
        "height": sc.height or res,
        "width": sc.width or res,
        "seed": sc.seed,
        "batch_size": sc.batch_size,
        "negative_prompt": base.text.negative_prompt,
        "text_encoder": base.text.encoder or "",
    }
    solve = solve_values(base, **{k: given.pop(k, None) for k in SOLVE_FIELDS})
    kw = {**defaults, **{k: v for k, v in given.items() if v is not None}, **solve}
    kw["text_encoder"] = str(kw["text_encoder"])
    ids = family_of(model).class_ids(classes, model)
    job = SampleJob(ckpt=str(ckpt), classes=ids, prompts=tuple(prompts), **kw)
    base = with_values(
        base,
        "sample",
        solver=job.solver,
        steps=job.steps,
        cfg=job.cfg,
        interval=tuple(job.interval),
        shift=job.shift,
        height=job.height,
        width=job.width,
        seed=job.seed,
        batch_size=job.batch_size,
    )
    base = with_values(base, "text", negative_prompt=job.negative_prompt, encoder=job.text_encoder)
    return job, defaults_from, base  # base: the config with the job's values, as results.json records it


def default_out(job: SampleJob) -> str:
    """A folder named after every knob (as DiT's sample_ddp does)."""
    stem = Path(job.ckpt).stem
    lo, hi = job.interval
    return (
        f"samples/{stem}-{job.solver}{job.steps}-cfg{job.cfg:g}-int{lo:g}-{hi:g}-shift{job.shift:g}"
        f"-{job.height}x{job.width}-seed{job.seed}"
    )


def check_model(job: SampleJob, model, device) -> None:
    """What only the network can tell: the condition matches its family, the size its patch, the classes its table."""
    cfg = model.config
    family_of(cfg).check_request(job.classes, job.prompts)
    p = cfg.patch_size
    if job.height % p or job.width % p:
        raise PixelDiTError(
            f"image size {job.height}x{job.width} is not a multiple of the patch size {p}",
            f"use --height/--width divisible by {p}",
        )
    if job.classes and max(job.classes) >= cfg.num_classes:
        raise PixelDiTError(f"class id {max(job.classes)} is out of range for a model with {cfg.num_classes} classes")
    check_fits(cfg, job.height, job.width, min(job.batch_size, job.n) * (2 if job.solving.guided else 1), device)


#################################################################################
#                                  Running                                      #
#################################################################################


def png_name(i: int, prompt: str | None = None) -> str:
    """000042.png for classes; 000042-a-red-fox.png for prompts (index first, so sorting keeps order)."""
    if prompt is None:
        return f"{i:06d}.png"
    return f"{i:06d}-{re.sub(r'[^a-z0-9]+', '-', prompt.lower()).strip('-')[:40] or 'empty'}.png"


def _legacy_job(folder: Path, marker: dict | None) -> bool:
    """A sample folder made before run.json had a format field: its run.json is a bare job identity."""
    return marker is not None and "format" not in marker and {"ckpt", "solver", "steps"} <= set(marker)


def _open_folder(job: SampleJob, out: Path, identity: dict, rank: int, world: int, label_of):
    """Rank 0 checks the folder belongs to this job and takes stock; every rank gets the done set.
    (`claim` has already refused a folder pixeldit did not make; `lock` is held.)"""
    inv = None
    if rank == 0:
        before = read_marker(out)
        if before is not None:
            diff = differences(before, identity)
            if diff and not job.overwrite:
                if "checkpoint_sha256" in diff:
                    old = str(before.get("checkpoint_sha256") or "unknown")[:12]
                    raise PixelDiTError(
                        f"{out} holds samples of another checkpoint (sha256 {old}…, this one "
                        f"{identity['checkpoint_sha256'][:12]}…)",
                        "pass a new --out, or --overwrite to replace them",
                    )
                raise PixelDiTError(
                    f"{out} holds samples made with other settings ({', '.join(diff)})",
                    "choose another --out, the same settings to resume, or --overwrite to replace them",
                )
            if diff:
                clear_outputs(out)
                before = None
        elif any(out.glob("[0-9]*.png")) or (out / "samples.npz").exists():
            raise PixelDiTError(f"{out} already holds samples from an unknown run", "choose another --out")
        remove_stale_temporaries(out)
        inv = scan(out, (job.height, job.width, 3), label_of, want_png=True)
        beyond = [i for i in (*inv.records, *inv.pngs) if i >= job.n]
        if beyond:
            raise PixelDiTError(
                f"{out} already holds samples up to index {max(beyond)}; this run asks for --n {job.n}",
                f"use --n {max(beyond) + 1} or more to keep them, or another --out",
            )
        if before is None or before.get("format") != marker_format("sample"):
            write_json(out / MARKER, {"format": marker_format("sample"), **identity})
    done = broadcast(sorted(set(inv.records) | set(inv.pngs)) if rank == 0 else None, world)
    return inv, set(done)


def clear_outputs(out: Path) -> int:
    """--overwrite: delete the job outputs pixeldit wrote in `out` — numbered PNGs, samples.npz, grid.png,
    results.json, run.json and its own part files — and nothing else."""
    return remove_own(out, lambda name: bool(PNG_NAME.match(name)) or name in _JOB_FILES) + remove_parts(out / "parts")


_JOB_FILES = ("samples.npz", "grid.png", "results.json", MARKER)


@dataclass(frozen=True)
class Prepared:
    """A job checked against its network on this process: what `execute` runs."""

    job: SampleJob
    model: torch.nn.Module
    rank: int
    world: int
    device: torch.device
    precision: str  # resolved: fp32 | bf16
    precision_reason: str  # why (precision.choose): the hardware's answer or the flag
    provenance: dict


def prepare(job: SampleJob, model=None, process=None, provenance: dict | None = None) -> Prepared:
    """Set up the process group (unless `process` = (rank, world, device) says it is), resolve the precision,
    load the network (unless given) and check the job against it — each once."""
    rank, world, device = process or init_distributed(job.device)
    choice = choose(job.precision, device)
    if model is None:
        model = load_model(job.ckpt, weights=job.weights, device=device)
        apply_loras(model, job.lora)
    check_model(job, model, device)
    return Prepared(job, model, rank, world, device, choice.precision, choice.reason, provenance or {})


def run(job: SampleJob, model=None, progress=True, provenance: dict | None = None, process=None, on_step=None) -> dict:
    """Run (or finish) a sampling job on this process's share; rank 0 writes grid/npz/results.json
    (with `provenance`, e.g. the resolved config and where its defaults came from, when given).
    `on_step(done, total)`: after every solver step of this rank's share (batches × steps), e.g. the app's bar."""
    return execute(prepare(job, model, process, provenance), progress, on_step)


def execute(p: Prepared, progress=True, on_step=None) -> dict:
    """Run a prepared job: claim and lock the folder (rank 0), generate this rank's share, assemble."""
    job, model, rank, device = p.job, p.model, p.rank, p.device
    cfg = model.config
    conds = family_of(cfg).sample_conditions(  # labels by index, tensors by batch
        model,
        device,
        classes=job.classes,
        mode=job.mode,
        n=job.n,
        seed=job.seed,
        prompts=job.prompts,
        negative_prompt=job.negative_prompt,
        text_encoder_path=job.text_encoder,
    )
    fmt = job.resolved_format()
    out = Path(job.out or default_out(job))
    digest = checkpoint_sha256(job.ckpt) if rank == 0 else ""
    identity = dict(job.identity(digest, device.type, p.precision), num_classes=cfg.num_classes)
    if rank == 0:
        claim(out, "sample", legacy=_legacy_job)  # a folder pixeldit did not make is never written to
        ensure_writable_dir(out)
    with lock(out) if rank == 0 else contextlib.nullcontext():
        return _run_locked(p, out, fmt, identity, digest, conds, progress, on_step)


def _run_locked(p: Prepared, out, fmt, identity, digest, conds, progress, on_step=None):
    job, model, rank, world, device = p.job, p.model, p.rank, p.world, p.device
    inv, done = _open_folder(job, out, identity, rank, world, conds.label)
    barrier(world)

    todo = [i for i in range(job.n) if i not in done]
    mine = todo[rank::world]
    writer = PartWriter(out / "parts", rank, job.height, job.width) if fmt != "png" else None
    t0 = time.perf_counter()
    stats, written = _generate(
        job,
        model,
        conds,
        device,
        p.precision,
        mine,
        len(todo),
        world,
        out,
        fmt,
        writer,
        progress and rank == 0,
        on_step,
    )
    elapsed = time.perf_counter() - t0
    made = gather((writer.entries() if writer else [], written), world)  # what each rank wrote, for rank 0
    barrier(world)
    result = {}
    if rank == 0:
        for entries, names in made:
            inv.add(entries)
            inv.pngs.update(names)
        result = _finish(job, out, fmt, inv, conds, model.config.in_channels)
        result.update(_report(p, stats, todo, done, elapsed, out, fmt, conds, digest))
        result.update(p.provenance)
        write_json(out / "results.json", result)
    barrier(world)
    return result


def _generate(job, model, conds, device, precision, mine, total, world, out, fmt, writer, show, on_step=None):
    """Make this rank's images batch by batch; each is on disk (record and/or PNG) before the next batch."""
    net = for_inference(model, precision) if job.compile else model
    stats, t0, made, written = None, time.perf_counter(), 0, {}
    cfg = model.config
    tick = _step_counter(on_step, -(-len(mine) // job.batch_size) * job.steps)
    try:
        with (
            progress_bar(show and bool(mine)) as bar,
            fast_linears(model, precision, enabled=job.packed and not job.compile),
        ):
            task = bar.add("sampling", total=total)
            for b in range(0, len(mine), job.batch_size):
                idx = mine[b : b + job.batch_size]
                x = noise_for(idx, job.seed, (cfg.in_channels, job.height, job.width)).to(device)
                y, uncond = conds.batch(idx, device)
                imgs, stats = solve(net, x, y, uncond, autocast=autocast_dtype(precision), on_step=tick,
                                    **job.solving.kwargs())  # fmt: skip
                if made == 0:
                    _warn_if_nonfinite(imgs)
                u8 = to_uint8(imgs).cpu()
                for i, img in zip(idx, u8):
                    if writer is not None:  # records are ADM's RGB rows (a gray sample replicated)
                        writer.append(i, conds.label(i), to_channels(img, 3)[0].permute(1, 2, 0).numpy())
                    if fmt != "npz":
                        written[i] = png_name(i, conds.text(i))
                        write_png(img, out / written[i])
                if writer is not None:
                    writer.flush()
                made += len(idx)
                bar.advance(task, len(idx) * world, info=f"{made * world / (time.perf_counter() - t0):.2f} img/s")
    finally:
        if writer is not None:
            writer.close()
    return stats, written


def _step_counter(on_step, total: int):
    """A no-argument callback for the solver that calls on_step(done, total) with a running count."""
    if on_step is None:
        return None
    done = 0

    def tick():
        nonlocal done
        done += 1
        on_step(done, total)

    return tick


def _warn_if_nonfinite(imgs):
    if not torch.isfinite(imgs).all():
        print(
            "warning: the network produced NaN or infinite values (NaN weights in the checkpoint, or bf16 overflow?); "
            "those pixels are written as 0",
            file=sys.stderr,
            flush=True,
        )


def _finish(job, out: Path, fmt: str, inv, conds, channels: int = 3) -> dict:
    """Rank 0: check completeness, export PNGs made earlier as records only, grid, npz, and drop the parts.
    PNGs and the grid have the model's channels (gray for a 1-channel model); samples.npz is always RGB."""
    missing = [i for i in range(job.n) if i not in inv.records and i not in inv.pngs]
    if missing:
        raise PixelDiTError(
            f"{len(missing)} samples are missing after the run (first: {missing[0]})",
            "re-run the same command to finish",
        )
    reader = RecordReader(inv, out)
    exported = 0
    try:
        if fmt in ("png", "both"):
            for i in range(job.n):
                if i not in inv.pngs:
                    rgb = torch.from_numpy(np.array(reader.pixels(i))).permute(2, 0, 1)
                    write_png(to_channels(rgb, channels)[0], out / png_name(i, conds.text(i)))
                    exported += 1
        _write_grid(reader, out, job.n, conds.columns, conds.column_labels, channels)
        if fmt in ("npz", "both"):
            _write_npz(reader, out, job.n, conds.label)
    finally:
        reader.close()
    if fmt in ("npz", "both"):  # every record is in samples.npz now
        remove_parts(out / "parts")
    return {"format": fmt, "exported_from_records": exported, "records_dropped": inv.dropped}


def grid_layout(n: int, columns: int = 0, k: int = 64) -> tuple[int, int]:
    """(images shown, images per row): one column per cycled class/prompt when there are a few."""
    k = min(n, k)
    if 1 < columns <= 16 and k >= columns:
        k = max(columns, min(n, 8 * columns) // columns * columns)
        return k, columns
    return k, max(1, int(np.ceil(np.sqrt(k))))


def _write_grid(reader, out: Path, n: int, columns: int, labels=None, channels: int = 3):
    """The first images; with one column per cycled class or prompt, each column is labelled."""
    k, nrow = grid_layout(n, columns)
    imgs = torch.stack([torch.from_numpy(np.array(reader.pixels(i))).permute(2, 0, 1) for i in range(k)])
    imgs = imgs[:, :1] if channels == 1 else imgs  # records are RGB; a gray model's grid is gray
    write_grid(imgs, out / "grid.png", nrow, column_labels=labels if nrow == columns and labels else None)


def _write_npz(reader, out: Path, n: int, label_of):
    """ADM samples.npz streamed row by row from the records: never all in RAM, never a PNG decoded."""
    H, W, C = reader.inv.shape
    with NpzWriter(out / "samples.npz") as w:
        rows = w.stream("arr_0", (n, H, W, C), np.uint8)
        for i in range(n):
            rows.write(reader.pixels(i))
        w.add("arr_1", np.asarray([label_of(i) for i in range(n)], dtype=np.int64))


def _report(p: Prepared, stats, todo, done, elapsed, out, fmt, conds, digest) -> dict:
    job, cfg, device, precision = p.job, p.model.config, p.device, p.precision
    if stats is None:  # nothing left to do: count one solve's evaluations analytically from a dry run
        stats = _dry_stats(job, cfg)
    return {
        "settings": dict(job.values(), out=str(out), precision=precision, format=fmt),
        "num_classes": cfg.num_classes,
        **conds.report(),
        "nfe_per_sample": stats.evals,  # network evaluations actually made per sample
        "patch_path_evals_per_sample": stats.patch_evals,  # < pixel-path evals with --semantic-reuse
        "pixel_path_evals_per_sample": stats.evals,
        "gflops_per_image": _gflops_per_image(cfg, job, stats),
        "network_calls_per_batch": stats.calls,
        "guided_steps": sum(stats.guided_steps),
        "generated_this_run": len(todo),
        "resumed_from_disk": len(done),
        "seconds": round(elapsed, 3),
        "images_per_second": round(len(todo) / elapsed, 4) if todo and elapsed > 0 else None,
        "checkpoint": os.path.abspath(job.ckpt),
        "checkpoint_sha256": digest,  # of the file, or of a folder's config, index and shards
        "dtype": precision,
        **device_report(device, precision, p.precision_reason),
        "fast_path": fast_path_report(p.model, enabled=job.packed and not job.compile),
        "versions": versions(),
    }


def _gflops_per_image(cfg, job, stats) -> float:
    """Analytic FLOPs of one image's solve: patch pathway × its runs + pixel pathway × its runs."""
    f = pathway_flops(cfg, job.height, job.width)
    return round((f["patch"] * stats.patch_evals + f["pixel"] * stats.evals) / 1e9, 4)


def versions() -> dict:
    return {"pixeldit": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _dry_stats(job, cfg):
    """The evaluation count of one solve, from a stand-in network (the count depends only on the schedule)."""

    class Zero(torch.nn.Module):
        config = SimpleNamespace(kind=cfg.kind, num_classes=cfg.num_classes)

        def forward(self, x, t, y):
            return torch.zeros_like(x)

        def semantics(self, x, t, y):
            return SimpleNamespace(s=torch.zeros(x.shape[0], 1, 1), t_emb=None)

        def time_embedding(self, t):
            return None

        def pixels(self, x, t_emb, s):
            return torch.zeros_like(x)

    cond = torch.zeros(1, 1, 1)  # any condition, with an explicit uncond: the count does not depend on them
    _, st = solve(Zero(), torch.zeros(1, 1, 1, 1), cond, cond, **job.solving.kwargs())
    return st
