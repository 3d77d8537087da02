"""Sampling throughput on this machine, plain vs ours, fp32 and bf16 (a benchmark, never a timed test).

    .venv/bin/python benchmarks/bench_sample.py [--quick] [--case N]

For the demo model (S/4 at 32²), a tiny T2I, B/16 and XL/16 at 256², with CFG on every step after the
first (a guided step is two network evaluations), the variants interleaved call by call on the same weights
and noise — the plain ones in a child process of their own (benchmarks/isolated.py), because the fast path
makes its process keep freed memory in the heap, which would speed up a plain call in the same process:

  fp32 plain   PyTorch's Linear (`pixeldit.sample(..., fast=False)`, the official network's structure)
  fp32 ours    the CPU fast path: packed Linear weights (MKL or oneDNN, as the probe found), the pixel
               MLP's GELU fused, freed memory kept in the heap (the default of `sample`, `edit` and
               `pixeldit.sample`)
  bf16 plain   bf16 autocast, the release's recipe, weights cast on every call
  bf16 ours    bf16 autocast with the Linear weights cast once and packed for oneDNN, the fused pixel MLP
               and blocks (within bf16 rounding of bf16 plain), heap kept
  fp32 compiled  with --compile: `pixeldit.sample(..., compile=True)`, inductor with weight freezing

Each variant's achieved GFLOP/s (analytic FLOPs) is given as a share of the matching GEMM rate measured in
the same process (a 2048³ fp32 matmul for fp32, bf16 for bf16). `auto` names what `--precision auto`
picks on this machine (precision.choose) and `auto_vs_fp32` is the speed-up of `sample --precision auto`
over `sample --precision fp32` (both with the jobs' fast path).
"""

import argparse
import functools
import json
import time

import torch
from isolated import Isolated  # benchmarks/: the plain variants in a process of their own

from pixeldit_cli.flops import analytic_flops, matmul_rate
from pixeldit_cli.models import build_model
from pixeldit_cli.precision import choose
from pixeldit_cli.sampling import sample
from pixeldit_cli.solvers import noise_for, solve

# name, res, batch, steps
CASES = [
    ("PixelDiT-S/4", 32, 16, 20),
    ("PixelDiT-T2I-S/16", 64, 2, 25),
    ("PixelDiT-B/16", 256, 2, 4),
    ("PixelDiT-XL/16", 256, 1, 4),
]
# Guidance on 0 < t < 1 as the release samples ImageNet: the first step (t = 0) is unguided, a single
# evaluation; every other one evaluates the [uncond; cond] pair.
INTERVAL = (0.0, 1.0)
VARIANTS = {  # label: (autocast, fast)
    "fp32 plain": (None, False),
    "fp32 ours": (None, True),
    "bf16 plain": (torch.bfloat16, False),
    "bf16 ours": (torch.bfloat16, True),
}
COMPILED = ("fp32 compiled", (None, "compile"))  # --compile: pixeldit.sample(..., compile=True), frozen


def inputs(model, name, batch):
    if "T2I" in name:  # random "text states"; DPM-Solver++ 2M with CFG 4.5, as the release samples
        c = model.config
        return torch.randn(batch, c.text_len, c.text_dim), torch.randn(1, c.text_len, c.text_dim), "dpm++2m", 4.5
    return torch.zeros(batch, dtype=torch.long), None, "flowdpm", 2.0


def network_evaluations(solver, steps, cfg) -> int:
    """Per image, as the solver counts them (the count depends only on the schedule: a tiny stand-in)."""
    tiny = build_model("PixelDiT-XS/4", init=False).eval()
    _, st = solve(tiny, torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long), solver=solver, steps=steps,
                  cfg=cfg, interval=(0.0, 1.0))  # fmt: skip
    return st.evals


def setup(name, res, batch, steps):
    """The network (seed 0: the same weights in every process), noise, conditions and solver arguments."""
    torch.manual_seed(0)
    kw = {} if "T2I" in name else {"num_classes": 10 if "S/" in name else 1000}
    model = build_model(name, init=False, **kw).eval()
    x = noise_for(range(batch), 0, (3, res, res))
    y, u, solver, cfg = inputs(model, name, batch)
    return model, x, y, u, dict(solver=solver, steps=steps, cfg=cfg, interval=INTERVAL)


def caller(model, x, y, u, args):
    def call(autocast, fast, **kw):
        extra = {"compile": True} if fast == "compile" else {"fast": fast}
        sample(model, x, y, u, **{**args, **kw}, autocast=autocast, **extra)

    return call


def plain_calls(name, res, batch, steps):
    """The plain variants, for the child process (benchmarks/isolated.py): one warm-up each here."""
    call = caller(*setup(name, res, batch, steps))
    calls = {label: functools.partial(call, *v) for label, v in VARIANTS.items() if v[1] is False}
    for autocast, fast in VARIANTS.values():
        if fast is False:
            call(autocast, fast, steps=1)
    return calls


def bench(name, res, batch, steps, rounds=2, compiled=False):
    model, x, y, u, args = setup(name, res, batch, steps)
    solver, cfg = args["solver"], args["cfg"]
    ours = {k: v for k, v in VARIANTS.items() if v[1] is not False}
    ours = {**ours, **dict([COMPILED])} if compiled else ours
    call = caller(model, x, y, u, args)
    best = {}
    with Isolated(plain_calls, name, res, batch, steps) as plain:
        compile_s = time.perf_counter()
        for autocast, fast in ours.values():  # warm-up (the compiled variant: its compilation)
            call(autocast, fast, steps=1)
        compile_s = time.perf_counter() - compile_s
        for _ in range(rounds):  # interleaved (plain ones in the child), best of `rounds`
            for label, (autocast, fast) in VARIANTS.items():
                if fast is False:
                    s = plain(label)[0]
                else:
                    t0 = time.perf_counter()
                    call(autocast, fast)
                    s = time.perf_counter() - t0
                best[label] = min(best.get(label, float("inf")), s)
            if compiled:
                t0 = time.perf_counter()
                call(*COMPILED[1])
                best[COMPILED[0]] = min(best.get(COMPILED[0], float("inf")), time.perf_counter() - t0)
    rates = {"fp32": matmul_rate(), "bf16": matmul_rate(dtype=torch.bfloat16)}
    evals = network_evaluations(solver, steps, cfg) * batch
    flops = analytic_flops(model.config, res, res, 1)["total"] * evals
    auto = choose("auto", torch.device("cpu")).precision
    row = dict(model=name, res=res, batch=batch, steps=steps, solver=solver, cfg=cfg, auto=auto)
    for label, s in best.items():
        row[f"{label} img/s"] = round(batch / s, 3)
        row[f"{label} gemm share"] = round(flops / s / 1e9 / rates[label[:4]], 3)
    row["fp32 ours/plain"] = round(best["fp32 plain"] / best["fp32 ours"], 3)
    row["bf16 ours/plain"] = round(best["bf16 plain"] / best["bf16 ours"], 3)
    row["auto_vs_fp32"] = round(best["fp32 ours"] / best[f"{auto} ours"], 3)
    if compiled:
        row["fp32 compiled/plain"] = round(best["fp32 plain"] / best["fp32 compiled"], 3)
        row["warm-up s (with the compile)"] = round(compile_s, 1)
    row["gemm gflop/s fp32, bf16"] = [round(rates["fp32"], 1), round(rates["bf16"], 1)]
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the two tiny models only")
    ap.add_argument("--case", type=int, default=None, help="one case by index")
    ap.add_argument("--compile", action="store_true", help="also the frozen compiled network (about a minute each)")
    ap.add_argument("--steps", type=int, default=None, help="solver steps instead of each case's own")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each variant's best is kept")
    a = ap.parse_args()
    cases = [CASES[a.case]] if a.case is not None else CASES[:2] if a.quick else CASES
    for name, res, batch, steps in cases:
        print(json.dumps(bench(name, res, batch, a.steps or steps, a.rounds, compiled=a.compile)), flush=True)


if __name__ == "__main__":
    main()
