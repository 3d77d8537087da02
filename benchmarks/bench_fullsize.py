"""Full-size checkpoints: convert and load files of the released size (a benchmark, never a timed test).

    .venv/bin/python benchmarks/bench_fullsize.py [--dir DIR] [--only c2i|t2i] [--keep]

Writes, with random weights and the released key layout (tests/fixtures/keys_*.txt):
  * an official class-conditional Lightning `.ckpt` of PixelDiT-XL/16 — raw `denoiser.*`, `ema_denoiser.*`
    and the REPA projector `diffusion_trainer.proj.*` in one file (~6.4 GB fp32);
  * an official text-to-image `.pth` of PixelDiT-T2I — `{"state_dict": {"core.*", "_repa_projector.*"}}` (~5.3 GB).
Then, each in a fresh process: `pixeldit convert` to safetensors, `load_model` of the result, and
`load_model` of the official file directly. Reports wall time and peak RSS (from wait4) against the
size of the weights that are used (EMA for c2i); the target is peak RSS <= 1.5x that size.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "tests" / "fixtures"


def listing(name: str):
    for line in (KEYS / name).read_text().splitlines():
        key, shape = line.split(" ", 1)
        yield key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())


def write_official(kind: str, path: Path) -> int:
    """Write the official-format file; returns the bytes of the weights a sampler uses."""
    g = torch.Generator().manual_seed(0)
    sd, used = {}, 0
    for key, shape in listing("keys_c2i_xl256.txt" if kind == "c2i" else "keys_t2i_1024.txt"):
        t = torch.empty(shape).normal_(0, 0.02, generator=g)
        sd[key] = t
        if key.startswith("ema_denoiser." if kind == "c2i" else "core."):
            used += t.numel() * 4
    obj = {"state_dict": sd}
    if kind == "c2i":  # what Lightning adds around the state dict (no optimizer states in the release)
        obj.update({"epoch": 319, "global_step": 1_601_280, "pytorch-lightning_version": "2.3.0"})
    torch.save(obj, path)
    return used


_HWM = """
import atexit, sys
def _hwm():
    kb = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
    sys.stderr.write(f'\\nVmHWM_KB={kb}\\n')
atexit.register(_hwm)
"""


def measured(code: str) -> dict:
    """Run `code` in a fresh interpreter; wall seconds and its peak RSS (GB).

    VmHWM of the exec'd image, not wait4's ru_maxrss: Linux carries the parent's high-water mark across
    fork + exec, so ru_maxrss would report the benchmark's own size."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _HWM + code], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {code}\n{p.stderr[-2000:]}")
    kb = int(p.stderr.rsplit("VmHWM_KB=", 1)[1].split()[0])
    return {"seconds": round(wall, 2), "peak_rss_gb": round(kb / 1024**2, 3), "stdout": p.stdout.strip()}


def run(kind: str, folder: Path) -> list[dict]:
    src = folder / ("xl256_official.ckpt" if kind == "c2i" else "t2i1024_official.pth")
    dst = folder / f"{kind}.safetensors"
    t0 = time.perf_counter()
    r = measured(
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from bench_fullsize import write_official; "
        f"print(write_official({kind!r}, __import__('pathlib').Path({str(src)!r})))"
    )
    used = int(r["stdout"])
    written = time.perf_counter() - t0
    used_gb = used / 1024**3
    rows = []
    steps = [
        ("convert", f"from pixeldit_cli.convert import convert; convert({str(src)!r}, {str(dst)!r}, force=True)"),
        (
            "load converted",
            f"from pixeldit_cli import load_model; m = load_model({str(dst)!r}); print(sum(p.numel() for p in m.parameters()))",
        ),
        (
            "load official directly",
            f"from pixeldit_cli import load_model; m = load_model({str(src)!r}); print(sum(p.numel() for p in m.parameters()))",
        ),
    ]
    for label, code in steps:
        r = measured(code)
        rows.append(
            {
                "model": kind,
                "step": label,
                "file_gb": round(
                    (src if "official" in label or label == "convert" else dst).stat().st_size / 1024**3, 3
                ),
                "weights_gb": round(used_gb, 3),
                "seconds": r["seconds"],
                "peak_rss_gb": r["peak_rss_gb"],
                "rss_over_weights": round(r["peak_rss_gb"] / used_gb, 3),
                "params": r["stdout"] or None,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        json.dumps({"model": kind, "step": "write official file (setup, not measured)", "seconds": round(written, 1)}),
        flush=True,
    )
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="", help="where to write the ~12 GB of files (default: a temporary folder)")
    ap.add_argument("--only", choices=["c2i", "t2i"], default=None)
    ap.add_argument("--keep", action="store_true", help="keep the files")
    args = ap.parse_args()
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pixeldit-fullsize-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rows = []
        for kind in [args.only] if args.only else ["c2i", "t2i"]:
            rows += run(kind, folder)
            for f in folder.iterdir():
                if not args.keep:
                    f.unlink()
        worst = max(r["rss_over_weights"] for r in rows)
        print(
            json.dumps(
                {"summary": "peak RSS / used weights, worst step", "ratio": worst, "target": 1.5, "met": worst <= 1.5}
            ),
            flush=True,
        )
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
