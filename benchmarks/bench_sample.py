"""Sampling throughput on this machine (a benchmark, never a timed test).

    .venv/bin/python benchmarks/bench_sample.py [--quick]

Images/s and network evaluations/s (an evaluation = one image through the network; a guided step costs
two) with CFG on every step, for the demo model (S/4 at 32²), a tiny T2I, B/16 and XL/16 at 256² —
plain (PyTorch's Linear) and ours (the oneDNN-packed Linears `sample` uses on a CPU), interleaved — and
the share of the wall time spent outside the network (solver arithmetic, CFG bookkeeping).
"""

import argparse
import copy
import json
import time

import torch

from pixeldit_cli.models import build_model
from pixeldit_cli.models.packed import packed_linears
from pixeldit_cli.solvers import noise_for, solve

# name, res, batch, steps
CASES = [
    ("PixelDiT-S/4", 32, 16, 20),
    ("PixelDiT-T2I-S/16", 64, 2, 25),
    ("PixelDiT-B/16", 256, 2, 4),
    ("PixelDiT-XL/16", 256, 1, 2),
]


class NetworkClock:
    """Wall time spent inside a module's forward (hooks on the top module)."""

    def __init__(self, model):
        self.seconds, self._t0 = 0.0, 0.0
        model.register_forward_pre_hook(lambda *_: setattr(self, "_t0", time.perf_counter()))
        model.register_forward_hook(lambda *_: setattr(self, "seconds", self.seconds + time.perf_counter() - self._t0))


def inputs(model, name, batch):
    if "T2I" in name:  # random "text states"; DPM-Solver++ 2M with CFG 4.5, as the release samples
        c = model.config
        return torch.randn(batch, c.text_len, c.text_dim), torch.randn(1, c.text_len, c.text_dim), "dpm++2m", 4.5
    return torch.zeros(batch, dtype=torch.long), None, "flowdpm", 2.0


def run(model, clock, x, y, u, solver, steps, cfg):
    clock.seconds = 0.0
    t0 = time.perf_counter()
    _, st = solve(model, x, y, u, solver=solver, steps=steps, cfg=cfg, interval=(0.0, 1.0))
    return time.perf_counter() - t0, clock.seconds, st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the two tiny models only")
    args = ap.parse_args()
    for name, res, batch, steps in CASES[:2] if args.quick else CASES:
        torch.manual_seed(0)
        kw = {} if "T2I" in name else {"num_classes": 10 if "S/" in name else 1000}
        plain = build_model(name, init=False, **kw).eval()
        ours = copy.deepcopy(plain)
        clocks = NetworkClock(plain), NetworkClock(ours)
        x = noise_for(range(batch), 0, (3, res, res))
        y, u, solver, cfg = inputs(plain, name, batch)
        with packed_linears(ours):
            for m in (plain, ours):
                solve(m, x, y, u, solver=solver, steps=1, cfg=cfg)  # warm-up
            rows = {}
            for _ in range(2):  # interleaved, best of two
                for label, m, clock in (("plain", plain, clocks[0]), ("ours", ours, clocks[1])):
                    r = run(m, clock, x, y, u, solver, steps, cfg)
                    if label not in rows or r[0] < rows[label][0]:
                        rows[label] = r
        (tp, _, st), (to, no, _) = rows["plain"], rows["ours"]
        print(
            json.dumps(
                dict(
                    model=name,
                    res=res,
                    batch=batch,
                    steps=steps,
                    solver=solver,
                    cfg=cfg,
                    nfe_per_sample=st.evals,
                    images_per_s=round(batch / to, 3),
                    images_per_s_plain=round(batch / tp, 3),
                    evals_per_s=round(batch * st.evals / to, 2),
                    speedup_vs_plain=round(tp / to, 3),
                    outside_network=round(1 - no / to, 4),
                    seconds=round(to, 2),
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
