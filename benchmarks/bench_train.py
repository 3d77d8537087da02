"""Training throughput and memory on this machine (a benchmark, never a timed test).

    .venv/bin/python benchmarks/bench_train.py [--quick]

Each case runs in its own process: a few optimizer steps of the real loss and optimizer (AdamW, EMA,
clip) on random data, in fp32 and in bf16 autocast (what `train.precision auto` runs on a CPU with native
bf16), for the plain network (the official structure) and ours (compiled pixel blocks, models/compiled.py)
interleaved. Reports img/s of each, the ratio, efficiency (3 × forward FLOPs per image over the 2048³
matmul rate of the matching dtype, measured in the same process), the first step's time with the
compilation, and the process's peak resident memory (both networks).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = [("PixelDiT-S/4", 32, 64, 4), ("PixelDiT-B/16", 256, 4, 3)]  # model, res, batch, timed steps


def one(name, res, batch, steps, precision="fp32"):
    """plain (the official structure) and ours (compiled pixel blocks, what `train` runs where auto turns it
    on) from the same weights, their steps interleaved in this process; the median step of each."""
    import copy
    import statistics

    import torch

    from pixeldit_cli.config import load_preset
    from pixeldit_cli.flops import analytic_flops, matmul_rate
    from pixeldit_cli.models import build_model
    from pixeldit_cli.models.compiled import compile_pixel_blocks
    from pixeldit_cli.train.loop import ema_update, make_optimizer
    from pixeldit_cli.train.objective import draw, flow_loss

    autocast = torch.bfloat16 if precision == "bf16" else None
    dtype = autocast or torch.float32
    torch.manual_seed(0)
    plain = build_model(name, num_classes=10 if "S/" in name else 1000)
    ours = copy.deepcopy(plain)
    compile_pixel_blocks(ours)
    nets = {"plain": plain, "ours": ours}
    tc = load_preset("xl256").train
    opts = {k: make_optimizer(list(m.parameters()), tc, torch.device("cpu")) for k, m in nets.items()}  # as the trainer
    emas = {k: [p.detach().clone() for p in m.parameters()] for k, m in nets.items()}
    x = torch.rand(batch, 3, res, res) * 2 - 1
    y = torch.randint(0, plain.config.num_classes, (batch,))

    def step(k, s):
        noise, t, drop = draw(0, s, range(batch), (3, res, res), 0.1, 1.0)
        opts[k].zero_grad(set_to_none=True)
        loss, _, _ = flow_loss(nets[k], x, y, t, noise, drop, plain.config.num_classes, autocast=autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nets[k].parameters(), 1.0)
        opts[k].step()
        ema_update(emas[k], list(nets[k].parameters()), 0.9999)

    t0 = time.perf_counter()
    step("ours", 0)  # warm-up: compiles (or loads the cached kernels)
    compile_s = time.perf_counter() - t0
    step("plain", 0)
    rate0 = matmul_rate(dtype=dtype)
    times = {k: [] for k in nets}
    for s in range(1, steps + 1):
        for k in nets:
            t0 = time.perf_counter()
            step(k, s)
            times[k].append(time.perf_counter() - t0)
    rate = max(rate0, matmul_rate(dtype=dtype))
    flops = 3 * analytic_flops(plain.config, res, res, batch)["total"]
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(
        model=name,
        precision=precision,
        res=res,
        batch=batch,
        steps=steps,
        **{f"{k}_img_per_s": round(batch / med[k], 2) for k in nets},
        **{f"{k}_efficiency": round(flops / med[k] / 1e9 / rate, 3) for k in nets},
        ours_vs_plain=round(med["plain"] / med["ours"], 3),
        first_step_with_compile_s=round(compile_s, 1),
        matmul_gflops_per_s=round(rate, 1),
        peak_rss_gb_both=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default=None, help="fp32 or bf16 (default: both)")
    a = ap.parse_args()
    if a.case is not None:
        print(json.dumps(one(*CASES[a.case], a.precision or "fp32")), flush=True)
        return
    for i in range(1 if a.quick else len(CASES)):
        for prec in [a.precision] if a.precision else ["fp32", "bf16"]:
            cmd = [sys.executable, __file__, "--case", str(i), "--precision", prec]
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
