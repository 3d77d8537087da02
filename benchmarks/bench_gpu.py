"""GPU benchmark, ready for when a GPU is lent (a benchmark, never a test). Needs CUDA; says so in one line otherwise.

    PYTHONPATH=. python3 benchmarks/bench_gpu.py [--quick] [--no-compile]

Reports, each without torch.compile, with the pixel blocks compiled (training only: train.compile_pixel_blocks)
and with the whole network compiled, attention through SDPA (flash on CUDA), bf16 autocast:
  * T2I sampling at 1024²: DPM-Solver++ 2M, 25 steps, CFG 4.5 on every step, random text states of the
    real width — img/s at the largest batch that fits (goal >= 1.2 img/s on one H200; the paper reports
    0.33 img/s on an A100), and the time outside the network;
  * an XL/16 training step at 256² (loss, backward, clip, fused AdamW, EMA) in bf16 autocast — MFU
    against the device's bf16 dense peak (goal >= 45% on an H200), from the analytic FLOPs (3× forward);
  * peak memory of each.
Random weights: the cost is the same as the released ones'. One JSON object per line.
"""

import argparse
import json
import sys
import time

import torch

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense, no sparsity


def peak_tflops(name: str):
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync():
    torch.cuda.synchronize()


def t2i_sampling(compile_: bool, quick: bool) -> dict:
    from pixeldit_cli import build_model
    from pixeldit_cli.solvers import noise_for, solve

    dev = torch.device("cuda")
    model = build_model("PixelDiT-T2I", init=False).to(dev).eval()
    cfg = model.config
    net = torch.compile(model) if compile_ else model
    res, steps = (512, 4) if quick else (1024, 25)
    best = None
    for batch in (8, 4, 2, 1):
        try:
            x = noise_for(range(batch), 0, (3, res, res)).to(dev)
            y = torch.randn(batch, cfg.text_len, cfg.text_dim, device=dev)
            u = torch.randn(1, cfg.text_len, cfg.text_dim, device=dev)
            solve(net, x, y, u, solver="dpm++2m", steps=2, cfg=4.5, autocast=torch.bfloat16)  # warm-up / compile
            torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            _, st = solve(net, x, y, u, solver="dpm++2m", steps=steps, cfg=4.5, autocast=torch.bfloat16)
            sync()
            dt = time.perf_counter() - t0
            best = {"batch": batch, "seconds": dt, "evals": st.evals}
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
    if best is None:
        return {"case": "t2i sampling", "error": "out of memory even at batch 1"}
    # the network alone, the same number of calls, to see the time outside it
    x2 = torch.randn(2 * best["batch"], 3, res, res, device=dev)
    t_in = torch.full((2 * best["batch"],), 500.0, device=dev)
    y2 = torch.randn(2 * best["batch"], cfg.text_len, cfg.text_dim, device=dev)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            net(x2, t_in, y2)
        sync()
        net_time = time.perf_counter() - t0
    return {
        "case": f"T2I {res}², dpm++2m {steps} steps, CFG 4.5",
        "compile": compile_,
        "batch": best["batch"],
        "img_per_s": round(best["batch"] / best["seconds"], 3),
        "goal_img_per_s": 1.2 if res == 1024 else None,
        "share_outside_network": round(max(0.0, 1 - net_time / best["seconds"]), 3),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
    }


def xl_training_step(compile_: bool, quick: bool) -> dict:
    from pixeldit_cli import build_model
    from pixeldit_cli.flops import analytic_flops
    from pixeldit_cli.train.loop import ema_update
    from pixeldit_cli.train.objective import flow_loss

    dev = torch.device("cuda")
    model = build_model("PixelDiT-XL/16", num_classes=1000).to(dev).train()
    ema = build_model("PixelDiT-XL/16", num_classes=1000, init=False).to(dev).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    if compile_ == "pixel":  # train.compile_pixel_blocks true: the pixel blocks alone (models/compiled.py)
        from pixeldit_cli.models.compiled import compile_pixel_blocks

        compile_pixel_blocks(model)
    net = torch.compile(model) if compile_ is True else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = 8 if quick else 32
    x = torch.rand(batch, 3, 256, 256, device=dev) * 2 - 1
    noise, t = torch.randn_like(x), torch.rand(batch, device=dev)
    y, drop = torch.randint(0, 1000, (batch,), device=dev), torch.zeros(batch, dtype=torch.bool, device=dev)
    params, eparams = list(model.parameters()), list(ema.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _, _ = flow_loss(net, x, y, t, noise, drop, 1000, autocast=torch.bfloat16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(eparams, params, 0.9999)

    for _ in range(3):
        step()  # warm-up / compile
    torch.cuda.reset_peak_memory_stats()
    sync()
    n = 5 if quick else 20
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    dt = (time.perf_counter() - t0) / n
    flops = 3 * analytic_flops(model.config, 256, 256, batch)["total"]
    peak = peak_tflops(torch.cuda.get_device_name())
    achieved = flops / dt / 1e12
    return {
        "case": f"XL/16 256² training step, batch {batch}, bf16",
        "compile": compile_,
        "seconds": round(dt, 4),
        "tflops": round(achieved, 1),
        "mfu": round(achieved / peak, 3) if peak else None,
        "goal_mfu": 0.45,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes: a check that everything runs")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA device; none is visible here (the CPU figures come from make bench)")
        sys.exit(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "peak_bf16_tflops": peak_tflops(torch.cuda.get_device_name()),
            }
        ),
        flush=True,
    )
    for compile_ in [False] if args.no_compile else [False, "pixel", True]:
        for case in (t2i_sampling, xl_training_step):
            if compile_ == "pixel" and case is t2i_sampling:
                continue  # the pixel-block compile is a training option
            try:
                print(json.dumps(case(compile_, args.quick)), flush=True)
            except Exception as e:  # a benchmark reports what failed and goes on
                print(
                    json.dumps({"case": case.__name__, "compile": compile_, "error": f"{type(e).__name__}: {e}"[:300]}),
                    flush=True,
                )
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
