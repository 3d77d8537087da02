"""Forward throughput vs this machine's fp32 matmul rate, and ours vs the plain network (a benchmark,
never a timed test).

    .venv/bin/python benchmarks/bench_forward.py [--quick]

For each case: achieved GFLOP/s (paper-convention FLOPs / best wall time) of

  * plain  — the network through PyTorch's own Linear: the official code's structure and its numbers
             bit for bit (the library's `model(x, t, y)`), the unfused reference;
  * ours   — the same weights as `sample` and `edit` run them on a CPU: oneDNN-packed Linear weights
             (pixeldit_cli/models/packed.py);

calls interleaved, plain / ours / plain / ours ..., so that machine noise hits both alike, and each
against the 2048³ fp32 matmul rate measured in the same run. Prints the speed-up and max |Δ| between
the two outputs (random weights of the released scale). Then the same under bf16 autocast (plain: the
weights cast on every call; ours: cast once), against the bf16 matmul rate.
"""

import argparse
import copy
import json
import time

import torch

from pixeldit_cli.flops import analytic_flops, example_inputs, matmul_rate
from pixeldit_cli.models import build_model
from pixeldit_cli.models.packed import bf16_linears, packed_linears

CASES = [("PixelDiT-S/4", 32, 8), ("PixelDiT-B/16", 256, 1), ("PixelDiT-XL/16", 256, 1)]


def interleaved(fns, repeats: int) -> list[float]:
    """Best wall time of each function, called in turn `repeats` times after one warm-up each."""
    for f in fns:
        f()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def bf16_row(name, res, batch, repeats) -> dict:
    """The same comparison under bf16 autocast: plain (weights cast on every call, the release's recipe)
    against ours (bf16 weight copies made once: models/packed.py bf16_linears), vs the bf16 GEMM rate."""
    torch.manual_seed(0)
    net = build_model(name, init=False).eval()
    inputs = example_inputs(net.config, res, res, batch)
    flops = analytic_flops(net.config, res, res, batch)["total"]

    def call(fast):
        with torch.autocast("cpu", dtype=torch.bfloat16), bf16_linears(net, enabled=fast):
            return net(*inputs)

    with torch.inference_mode():
        rate = matmul_rate(dtype=torch.bfloat16)
        t_plain, t_ours = interleaved([lambda: call(False), lambda: call(True)], repeats)
        rate = max(rate, matmul_rate(dtype=torch.bfloat16))
        same = torch.equal(call(False), call(True))
    return dict(model=name, res=res, batch=batch, precision="bf16", matmul_gflops_per_s=round(rate, 1),
                plain_efficiency=round(flops / t_plain / 1e9 / rate, 3),
                efficiency=round(flops / t_ours / 1e9 / rate, 3), speedup_vs_plain=round(t_plain / t_ours, 3),
                bit_identical=same, seconds_plain=round(t_plain, 4), seconds_ours=round(t_ours, 4))  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only the tiny and B/16 cases")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    for name, res, batch in CASES[:2] if args.quick else CASES:
        torch.manual_seed(0)
        plain = build_model(name, init=False).eval()  # PyTorch's layer inits: random, released scale
        ours = copy.deepcopy(plain)
        inputs = example_inputs(plain.config, res, res, batch)
        flops = analytic_flops(plain.config, res, res, batch)["total"]
        with torch.inference_mode(), packed_linears(ours):
            rate = matmul_rate()
            t_plain, t_ours = interleaved(
                [lambda m=plain, i=inputs: m(*i), lambda m=ours, i=inputs: m(*i)], args.repeats
            )
            rate = max(rate, matmul_rate())
            diff = (plain(*inputs) - ours(*inputs)).abs().max().item()
        row = dict(
            model=name,
            precision="fp32",
            res=res,
            batch=batch,
            matmul_gflops_per_s=round(rate, 1),
            plain_gflops_per_s=round(flops / t_plain / 1e9, 1),
            ours_gflops_per_s=round(flops / t_ours / 1e9, 1),
            plain_efficiency=round(flops / t_plain / 1e9 / rate, 3),
            efficiency=round(flops / t_ours / 1e9 / rate, 3),
            speedup_vs_plain=round(t_plain / t_ours, 3),
            max_abs_diff=float(f"{diff:.2e}"),
            seconds_plain=round(t_plain, 4),
            seconds_ours=round(t_ours, 4),
            threads=torch.get_num_threads(),
        )
        print(json.dumps(row), flush=True)
        print(json.dumps(bf16_row(name, res, batch, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
