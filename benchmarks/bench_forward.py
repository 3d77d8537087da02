"""Forward throughput vs this machine's fp32 matmul rate (a benchmark, never a timed test).

    .venv/bin/python benchmarks/bench_forward.py [--quick]

Reports, for each case, achieved GFLOP/s (paper-convention FLOPs / best wall time) and the ratio to the
2048³ matmul rate measured in the same run, interleaved so that machine noise hits both alike.
"""

import argparse
import json

import torch

from pixeldit_cli.flops import analytic_flops, example_inputs, matmul_rate, measure_forward
from pixeldit_cli.models import build_model

CASES = [("PixelDiT-S/4", 32, 8), ("PixelDiT-B/16", 256, 1), ("PixelDiT-XL/16", 256, 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only the tiny and B/16 cases")
    args = ap.parse_args()
    rows = []
    for name, res, batch in CASES[:2] if args.quick else CASES:
        model = build_model(name, init=False).eval()
        flops = analytic_flops(model.config, res, res, batch)["total"]
        before = matmul_rate()
        m = measure_forward(model, example_inputs(model.config, res, res, batch), flops, repeats=5)
        rate = max(before, matmul_rate())
        rows.append(dict(model=name, res=res, batch=batch, gflops_per_s=round(m["gflops_per_s"], 1),
                         matmul_gflops_per_s=round(rate, 1), efficiency=round(m["gflops_per_s"] / rate, 3),
                         seconds=round(m["seconds_best"], 4), threads=torch.get_num_threads()))
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
