"""The sample job's own overhead per image, at n = 1K, 8K and 50K (a benchmark, never a timed test).

    .venv/bin/python benchmarks/bench_sample_job.py [--ns 1000 8000 50000] [--format npz]

A tiny network (PixelDiT-S/4 at width 32, 32x32, 1 Euler step, no guidance) makes the network's share
small, so what is measured is the job: noise, labels, records, PNGs, the npz and grid assembly, the
bookkeeping. Each n runs in a fresh process (peak RSS from wait4). Targets (issue: paper-scale
sampling): time outside the network per image flat within 1.5x from 1K to 50K and <= 1 ms in the
npz-only mode; peak RSS flat; the 50K job's assembly (npz + grid) under 60 s.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time, torch
from safetensors.torch import save_file
from pixeldit_cli import build_model
import importlib
S = importlib.import_module("pixeldit_cli.sampling")

n, fmt, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.manual_seed(0)
m = build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=1, num_classes=10).eval()
ckpt = f"{folder}/tiny.safetensors"
save_file(m.state_dict(), ckpt, metadata={"pixeldit_config": json.dumps(m.config.to_dict())})
net_time = [0.0]
forward = m.forward
def timed(*a, **k):
    t0 = time.perf_counter(); out = forward(*a, **k); net_time[0] += time.perf_counter() - t0; return out
m.forward = timed
finish = S._finish
fin_time = [0.0]
def timed_finish(*a, **k):
    t0 = time.perf_counter(); out = finish(*a, **k); fin_time[0] += time.perf_counter() - t0; return out
S._finish = timed_finish
job = S.SampleJob(ckpt=ckpt, n=n, out=f"{folder}/out", solver="euler", steps=1, cfg=1.0, height=32, width=32,
                  batch_size=256, format=fmt)
t0 = time.perf_counter()
S.run(job, model=m, progress=False)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "network": net_time[0], "assembly": fin_time[0]}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", type=int, nargs="+", default=[1000, 8000, 50000])
    ap.add_argument("--format", default="npz", choices=["npz", "png", "both"])
    args = ap.parse_args()
    rows = []
    for n in args.ns:
        with tempfile.TemporaryDirectory(prefix="pixeldit-job-") as folder:
            p = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(n), args.format, folder],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "2"},
            )
            _, status, usage = os.wait4(p.pid, 0)
            out, err = p.stdout.read(), p.stderr.read()
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(err[-2000:])
            r = json.loads(out.strip().splitlines()[-1])
            outside = r["wall"] - r["network"]
            rows.append(
                {
                    "n": n,
                    "format": args.format,
                    "seconds": round(r["wall"], 2),
                    "network_s": round(r["network"], 2),
                    "outside_network_ms_per_image": round(1000 * outside / n, 4),
                    "assembly_s": round(r["assembly"], 2),
                    "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    per = [r["outside_network_ms_per_image"] for r in rows]
    rss = [r["peak_rss_gb"] for r in rows]
    print(
        json.dumps(
            {
                "summary": "job overhead",
                # how the per-image cost moves from the smallest n to the largest: growth is what the target
                # bounds (a fixed start-up cost spread over more images makes it fall, which is fine)
                "overhead_growth": round(max(per[i] / per[0] for i in range(len(per))), 3),
                "target_growth": 1.5,
                "max_outside_ms_per_image": max(per),
                "target_ms": 1.0 if args.format == "npz" else None,
                "rss_growth": round(max(rss) / min(rss), 3),
                "largest_assembly_s": rows[-1]["assembly_s"],
                "target_assembly_s": 60,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
