"""The demo recipe search: short Fashion-MNIST runs, each judged by the independent classifier.

    python -m studies.demo_recipe OUT --classifier CLF.pt [--only NAME ...] [--fid REF.npz] [--at STEP]

Every candidate is the `smoke` preset plus overrides (CANDIDATES below), trained with `pixeldit train`,
converted, sampled with `pixeldit sample` (200 images, 20 per class, the candidate's sampler settings) and
scored: classifier agreement (the share assigned to the class asked for, with its standard error) and,
with --fid, FID against 1000 held-out test images. One JSON line per candidate lands in OUT/results.jsonl
with the measured training time; docs/demo-recipe.md holds the table of a full search.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from studies.classifier import load_classifier, predict

GRAY = ["--model.in_channels", "1"]
COS = ["--train.lr_schedule", "cosine"]
FASHION = GRAY + ["--train.lr", "4e-3", "--train.ckpt_every", "250"]
CFG6 = ["--cfg", "6"]

# name: (train overrides, sample overrides). The smoke preset is the base of every row.
CANDIDATES = {
    "rgb": ([], []),
    "gray": (GRAY, []),
    "gray-cos": (GRAY + COS, []),
    "gray-cos-lr1e-3": (GRAY + COS + ["--train.lr", "1e-3"], []),
    "gray-cos-ema.995": (GRAY + COS + ["--train.ema_decay", "0.995"], []),
    "gray-lr3e-3": (GRAY + ["--train.lr", "3e-3"], ["--cfg", "6"]),
    "gray-lr4e-3": (GRAY + ["--train.lr", "4e-3"], ["--cfg", "6"]),
    # Gray, LR 4e-3 (or 6e-3), CFG 6 at the steps make demo's budget allows. Constant LR: the 750-step
    # checkpoint of a 1000-step run is a 750-step run (scored with --checkpoint 750).
    "f-1000": (FASHION + ["--train.steps", "1000"], CFG6),
    "f-1000-lr6e-3": (FASHION + ["--train.steps", "1000", "--train.lr", "6e-3"], CFG6),
    "gray-ema.98": (GRAY + ["--train.ema_decay", "0.98"], []),
    "gray-900": (GRAY + ["--train.steps", "900", "--train.ckpt_every", "300"], []),
    "gray-wide": (GRAY + ["--model.hidden_size", "192", "--model.num_heads", "6"], []),
    "gray-b128": (GRAY + ["--train.global_batch", "128", "--train.micro_batch", "128"], []),
    "gray-cos-900": (GRAY + COS + ["--train.steps", "900", "--train.ckpt_every", "300"], []),
    "gray-cos-wide": (GRAY + COS + ["--model.hidden_size", "192", "--model.num_heads", "6"], []),
    "gray-cos-deep": (GRAY + COS + ["--model.patch_depth", "6"], []),
    "gray-cos-b32x900": (
        GRAY + COS + ["--train.global_batch", "32", "--train.micro_batch", "32", "--train.steps", "900"],
        [],
    ),
    "gray-cos-p2": (GRAY + COS + ["--model.name", "PixelDiT-S/2"], []),
}


def run(cmd, log):
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)


def agreement(clf, npz) -> tuple[float, float]:
    with np.load(npz) as f:
        imgs, asked = f["arr_0"], f["arr_1"]
    hit = (predict(clf, imgs) == asked).astype(float)
    return float(hit.mean()), float(hit.std(ddof=1) / np.sqrt(len(hit)))


def candidate(name, out: Path, clf, fid_ref=None, py=sys.executable, at: int = 0) -> dict:
    """Train (unless `at`: score the kept checkpoint of that step of an earlier run), sample, judge."""
    train_args, sample_args = CANDIDATES[name]
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    log = d / "log.txt"
    t0 = time.perf_counter()
    cli = [py, "-m", "pixeldit_cli"]
    if not at:
        run([*cli, "train", "--preset", "smoke", "--out", str(d / "train"), "--train.sample_every", "100000",
             *train_args], log)  # fmt: skip
    train_s = time.perf_counter() - t0
    ckpt = d / "train/checkpoints" / (f"{at:07d}.pt" if at else "last.pt")
    run([*cli, "convert", str(ckpt), str(d / f"model{at or ''}.safetensors"), "--force"], log)
    classes = [a for c in range(10) for a in ("--class", str(c))]
    t1 = time.perf_counter()
    samples = d / f"samples{at or ''}"
    run([*cli, "sample", "--preset", "smoke", "--ckpt", str(d / f"model{at or ''}.safetensors"), *classes, "--n", "200",
         "--out", str(samples), "--format", "both", "--overwrite", *sample_args], log)  # fmt: skip
    sample_s = time.perf_counter() - t1
    acc, se = agreement(clf, samples / "samples.npz")
    row = dict(name=f"{name}@{at}" if at else name, train=train_args, sample=sample_args,
               train_s=None if at else round(train_s, 1),
               sample_s=round(sample_s, 1), agreement=round(acc, 4), se=round(se, 4))  # fmt: skip
    if fid_ref:
        cmd = [*cli, "eval-fid", str(samples / "samples.npz"), str(fid_ref), "--sqrtm", "eigh", "--no-cache", "--json"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row["fid"] = json.loads(res.stdout.strip().splitlines()[-1]).get("fid")
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--only", nargs="+", default=list(CANDIDATES))
    ap.add_argument("--fid", help="an ADM npz of real test images: also score FID")
    ap.add_argument("--at", type=int, default=0, help="score the kept checkpoint of this step of a run made before")
    a = ap.parse_args()
    clf, _ = load_classifier(a.classifier)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.only:
        print(json.dumps(candidate(name, out, clf, a.fid, at=a.at)), flush=True)


if __name__ == "__main__":
    main()
