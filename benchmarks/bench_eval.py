"""Evaluation speed on this machine (a benchmark, never a timed test).

    .venv/bin/python benchmarks/bench_eval.py [--quick]

1. Inception feature extraction (TF1 resize to 299 + the full network, fp32) on 256² uint8 images: images/s.
2. The metric step on random 2048-d features: precision/recall for 10K × 10K (ADM's fp16 tiles and fp32),
   and one Fréchet distance (scipy sqrtm vs eigh).
"""

import argparse
import json
import time
import warnings

import numpy as np
import torch

from pixeldit_cli.metrics.inception import FIDInception
from pixeldit_cli.metrics.scores import frechet_distance, precision_recall, statistics


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2K x 2K precision/recall, no scipy sqrtm")
    a = ap.parse_args()
    net = FIDInception().eval()  # random weights: the cost is the same
    x = torch.randint(0, 256, (16, 3, 256, 256), dtype=torch.uint8)
    with torch.inference_mode():
        net(x[:2])
        t0 = time.perf_counter()
        net(x)
        dt = time.perf_counter() - t0
    print(
        json.dumps({"inception_images_per_s_256px": round(16 / dt, 2), "threads": torch.get_num_threads()}), flush=True
    )
    n = 2000 if a.quick else 10000
    rng = np.random.default_rng(0)
    ref, sam = rng.normal(size=(n, 2048)).astype(np.float32), rng.normal(size=(n, 2048)).astype(np.float32)
    for mode in ("fp16", "fp32"):
        t0 = time.perf_counter()
        p, r = precision_recall(ref, sam, mode=mode)
        print(
            json.dumps({"precision_recall": f"{n}x{n}", "mode": mode, "seconds": round(time.perf_counter() - t0, 2)}),
            flush=True,
        )
    m1, s1 = statistics(ref[:4096])
    m2, s2 = statistics(sam[:4096])
    for method in ["eigh"] if a.quick else ["eigh", "scipy"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            fd = frechet_distance(m1, s1, m2, s2, method=method)
        print(
            json.dumps({"frechet_2048": method, "seconds": round(time.perf_counter() - t0, 2), "fid": round(fd, 4)}),
            flush=True,
        )


if __name__ == "__main__":
    main()
