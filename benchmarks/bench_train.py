"""Training throughput and memory on this machine (a benchmark, never a timed test).

    .venv/bin/python benchmarks/bench_train.py [--quick]

Each case runs in its own process (so peak RSS is its own): a few optimizer steps of the real loss and
optimizer (AdamW, EMA, clip) on random data, in fp32 and in bf16 autocast (what `train.precision auto`
runs on a CPU with native bf16). Reports img/s, achieved GFLOP/s counted as 3 × forward FLOPs per image
(forward + backward), the 2048³ matmul rate of the matching dtype measured in the same process, and
peak resident memory.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = [("PixelDiT-S/4", 32, 64, 4), ("PixelDiT-B/16", 256, 4, 3)]  # model, res, batch, timed steps


def one(name, res, batch, steps, precision="fp32"):
    import torch

    from pixeldit_cli.config import load_preset
    from pixeldit_cli.flops import analytic_flops, matmul_rate
    from pixeldit_cli.models import build_model
    from pixeldit_cli.train.loop import ema_update, make_optimizer
    from pixeldit_cli.train.objective import draw, flow_loss

    autocast = torch.bfloat16 if precision == "bf16" else None
    dtype = autocast or torch.float32
    torch.manual_seed(0)
    model = build_model(name, num_classes=10 if "S/" in name else 1000)
    ema = [p.detach().clone() for p in model.parameters()]
    opt = make_optimizer(
        list(model.parameters()), load_preset("xl256").train, torch.device("cpu")
    )  # as the trainer builds it
    x = torch.rand(batch, 3, res, res) * 2 - 1
    y = torch.randint(0, model.config.num_classes, (batch,))

    def step(s):
        noise, t, drop = draw(0, s, range(batch), (3, res, res), 0.1, 1.0)
        opt.zero_grad(set_to_none=True)
        loss, _, _ = flow_loss(model, x, y, t, noise, drop, model.config.num_classes, autocast=autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, list(model.parameters()), 0.9999)

    step(0)  # warm-up (allocations, optimizer state)
    rate0 = matmul_rate(dtype=dtype)
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        step(s)
    dt = time.perf_counter() - t0
    rate = max(rate0, matmul_rate(dtype=dtype))
    flops = 3 * analytic_flops(model.config, res, res, batch)["total"] * steps
    return dict(
        model=name,
        precision=precision,
        res=res,
        batch=batch,
        steps=steps,
        img_per_s=round(batch * steps / dt, 2),
        gflops_per_s=round(flops / dt / 1e9, 1),
        matmul_gflops_per_s=round(rate, 1),
        efficiency=round(flops / dt / 1e9 / rate, 3),
        peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
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
