"""Sampling throughput on this machine (a benchmark, never a timed test).

    .venv/bin/python benchmarks/bench_sample.py [--quick]

Reports images/s and network evaluations/s (an evaluation = one image through the network; a guided
step costs two) for a tiny model at 32² and PixelDiT-B/16 at 256² (random weights, fp32, CPU).
"""

import argparse
import json
import time

import torch

from pixeldit_cli.models import build_model
from pixeldit_cli.solvers import noise_for
from pixeldit_cli.solvers import solve

CASES = [("PixelDiT-S/4", 32, 16, 20), ("PixelDiT-T2I-S/16", 64, 2, 25), ("PixelDiT-B/16", 256, 2, 4)]  # name, res, batch, steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model only")
    args = ap.parse_args()
    for name, res, batch, steps in CASES[:2] if args.quick else CASES:
        t2i = "T2I" in name
        model = build_model(name, init=False, **({} if t2i else {"num_classes": 10 if "S/" in name else 1000})).eval()
        x = noise_for(range(batch), 0, (3, res, res))
        if t2i:  # random "text states" of the model's width; DPM-Solver++ 2M with CFG, as the release samples
            y = torch.randn(batch, model.config.text_len, model.config.text_dim)
            u, solver, cfg = torch.randn(1, model.config.text_len, model.config.text_dim), "dpm++2m", 4.5
        else:
            y, u, solver, cfg = torch.zeros(batch, dtype=torch.long), None, "flowdpm", 2.0
        solve(model, x, y, u, solver=solver, steps=2, cfg=cfg)  # warm-up
        t0 = time.perf_counter()
        _, st = solve(model, x, y, u, solver=solver, steps=steps, cfg=cfg, interval=(0.0, 1.0))
        dt = time.perf_counter() - t0
        print(json.dumps(dict(model=name, res=res, batch=batch, steps=steps, solver=solver, cfg=cfg, nfe_per_sample=st.evals,
                              images_per_s=round(batch / dt, 3), evals_per_s=round(batch * st.evals / dt, 2),
                              seconds=round(dt, 2))), flush=True)


if __name__ == "__main__":
    main()
