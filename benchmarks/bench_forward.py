"""Forward throughput vs this machine's fp32 matmul rate, and ours vs the plain network (a benchmark,
never a timed test).

    .venv/bin/python benchmarks/bench_forward.py [--quick]

For each case: achieved GFLOP/s (paper-convention FLOPs / best wall time) of

  * plain  — the network through PyTorch's own Linear: the official code's structure and its numbers
             bit for bit (the library's `model(x, t, y)`), the unfused reference, in a process of its own
             (benchmarks/isolated.py: the fast path makes its process keep freed memory in the heap, which
             would speed up a plain forward in the same process);
  * ours   — the same weights as `sample` and `edit` run them on a CPU (pixeldit_cli/models/packed.py
             `fast_linears`): packed Linear weights (MKL or oneDNN, as the probe found), the pixel MLP's
             GELU fused, the PiT block's elementwise chain in fewer passes, freed memory kept in the heap;

calls interleaved, plain / ours / plain / ours ..., so that machine noise hits both alike, and each
against the 2048³ fp32 matmul rate measured in the same run. Prints the speed-up and max |Δ| between
the two outputs (random weights of the released scale). Then the same under bf16 autocast (plain: the
weights cast on every call; ours: cast once, packed for oneDNN, the fused blocks), against the bf16 matmul rate.
"""

import argparse
import json
import time

import torch
from isolated import Isolated  # benchmarks/: the plain network in a process of its own

from pixeldit_cli.flops import analytic_flops, example_inputs, matmul_rate
from pixeldit_cli.models import build_model
from pixeldit_cli.models.packed import fast_linears

CASES = [("PixelDiT-S/4", 32, 8), ("PixelDiT-B/16", 256, 1), ("PixelDiT-XL/16", 256, 1)]


def network(name, res, batch):
    """Seed 0: the same weights in every process (PyTorch's layer inits: random, released scale)."""
    torch.manual_seed(0)
    net = build_model(name, init=False).eval()
    return net, example_inputs(net.config, res, res, batch)


def plain_calls(name, res, batch):
    """The plain forwards, fp32 and bf16 autocast, for the child process; one warm-up each."""
    net, inputs = network(name, res, batch)

    def fp32():
        with torch.inference_mode():
            return net(*inputs)

    def bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(*inputs)

    fp32(), bf16()
    return {"fp32": fp32, "bf16": bf16}


def interleaved(plain, label, ours, repeats: int) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Best wall time of the child's plain call and of ours, called in turn `repeats` times after a warm-up."""
    out = ours()
    best = [float("inf")] * 2
    for _ in range(repeats):
        seconds, ref = plain(label)
        best[0] = min(best[0], seconds)
        t0 = time.perf_counter()
        out = ours()
        best[1] = min(best[1], time.perf_counter() - t0)
    return best[0], best[1], ref, out


def rows(name, res, batch, repeats) -> list[dict]:
    net, inputs = network(name, res, batch)
    flops = analytic_flops(net.config, res, res, batch)["total"]
    out = []
    with Isolated(plain_calls, name, res, batch) as plain:
        for prec in ("fp32", "bf16"):
            dtype = torch.bfloat16 if prec == "bf16" else torch.float32
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16")
            with torch.inference_mode(), autocast, fast_linears(net, prec):
                rate = matmul_rate(dtype=dtype)
                t_plain, t_ours, ref, mine = interleaved(plain, prec, lambda: net(*inputs), repeats)
                rate = max(rate, matmul_rate(dtype=dtype))
            diff = (ref.float() - mine.float()).abs().max().item()
            out.append(dict(model=name, precision=prec, res=res, batch=batch, matmul_gflops_per_s=round(rate, 1),
                            plain_gflops_per_s=round(flops / t_plain / 1e9, 1),
                            ours_gflops_per_s=round(flops / t_ours / 1e9, 1),
                            plain_efficiency=round(flops / t_plain / 1e9 / rate, 3),
                            efficiency=round(flops / t_ours / 1e9 / rate, 3),
                            speedup_vs_plain=round(t_plain / t_ours, 3), max_abs_diff=float(f"{diff:.2e}"),
                            seconds_plain=round(t_plain, 4), seconds_ours=round(t_ours, 4),
                            threads=torch.get_num_threads()))  # fmt: skip
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only the tiny and B/16 cases")
    ap.add_argument("--case", type=int, default=None, help="one case by index")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cases = [CASES[args.case]] if args.case is not None else CASES[:2] if args.quick else CASES
    for name, res, batch in cases:
        for row in rows(name, res, batch, args.repeats):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
