"""`pixeldit` — a thin Typer layer: parse, call one library function, print. No logic of its own."""

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

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
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def friendly(fn):
    """Turn a PixelDiTError into one line on stderr and a non-zero exit (PIXELDIT_DEBUG=1: traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PixelDiTError as e:
            if os.environ.get("PIXELDIT_DEBUG"):
                raise
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)

    return wrapper


def not_built(command: str, issue: int):
    raise PixelDiTError(f"`pixeldit {command}` is not built yet (tracked in issue {issue})", exit_code=2)


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
    res: Optional[int] = typer.Option(None, "--res", help="Square resolution (default: the preset's, else 256)."),
    height: Optional[int] = typer.Option(None, "--height", help="Image height (non-square allowed)."),
    width: Optional[int] = typer.Option(None, "--width", help="Image width."),
    patch: Optional[int] = typer.Option(None, "--patch", help="Patch size p (replaces the model's)."),
    model: Optional[str] = typer.Option(None, "--model", help="Registry name, e.g. PixelDiT-XL/16 (default), PixelDiT-T2I."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Take model and resolution from a preset."),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size."),
    text_len: Optional[int] = typer.Option(None, "--text-len", help="T2I text tokens (default: the 300-token window)."),
    measure: bool = typer.Option(False, "--measure", help="Also time real forwards here and compare to the matmul rate."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Parameters and GFLOPs of one forward, in the paper's convention (Linear 2·n·in·out, attention 4·B·N²·C)."""
    from .flops import run_flops

    result = run_flops(res=res, height=height, width=width, patch=patch, model=model, preset=preset,
                       batch=batch, text_len=text_len, measure=measure)
    if as_json:
        print(json.dumps(result))
        return
    t = Table(title=f"{result['model']} @ {result['height']}x{result['width']}, batch {result['batch']}", show_header=False)
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


#################################################################################
#                                   convert                                     #
#################################################################################


@app.command(
    epilog="Examples:\n\n"
    "  pixeldit convert imagenet256_pixeldit_xl_epoch320.ckpt xl256.safetensors\n\n"
    "  pixeldit convert imagenet256_pixeldit_xl_epoch320.ckpt xl256_raw.safetensors --weights raw\n\n"
    "  pixeldit convert pixeldit_t2i_v1.pth t2i1024.safetensors\n\n"
    "  pixeldit convert runs/demo/checkpoints/last.pt demo.safetensors"
)
@friendly
def convert(
    src: Path = typer.Argument(..., help="Official .ckpt (c2i), official .pth (T2I), our training .pt, or safetensors."),
    dst: Path = typer.Argument(..., help="Output .safetensors (config stored in its metadata)."),
    weights: str = typer.Option("ema", "--weights", help="ema (what the release samples with) or raw."),
    force: bool = typer.Option(False, "--force", help="Overwrite DST if it exists."),
    unsafe_pickle: bool = typer.Option(False, "--unsafe-pickle", help="Allow pickles that run code (only for files you trust)."),
):
    """Convert a checkpoint to safetensors; the architecture is read from the tensor shapes."""
    from .convert import convert as run

    rep = run(src, dst, weights=weights, force=force, unsafe_pickle=unsafe_pickle)
    for line in rep.lines():
        out.print(line, highlight=False)
    out.print(f"wrote {dst}", highlight=False)


#################################################################################
#                  Commands owned by later issues (not built yet)               #
#################################################################################

_later = dict(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})


@app.command(**_later, epilog="Example:\n\n  pixeldit train --preset xl256 --out runs/xl256")
@friendly
def train(ctx: typer.Context):
    """Train a PixelDiT (not built yet)."""
    not_built("train", 4)


@app.command(**_later, epilog="Example:\n\n  pixeldit sample --ckpt xl256.safetensors --class 291 --n 64")
@friendly
def sample(ctx: typer.Context):
    """Sample images from a checkpoint (not built yet)."""
    not_built("sample", 3)


@app.command(**_later, epilog="Example:\n\n  pixeldit edit cat.png --src tabby --tgt tiger --ckpt xl256.safetensors")
@friendly
def edit(ctx: typer.Context):
    """Edit an image with FlowEdit (not built yet)."""
    not_built("edit", 6)


@app.command("eval-fid", **_later, epilog="Example:\n\n  pixeldit eval-fid samples.npz VIRTUAL_imagenet256_labeled.npz --inception pt_inception.pth")
@friendly
def eval_fid(ctx: typer.Context):
    """FID / sFID / IS / precision / recall with the ADM protocol (not built yet)."""
    not_built("eval-fid", 5)


def main():
    app()
