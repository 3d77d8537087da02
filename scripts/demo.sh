#!/usr/bin/env bash
# make demo: train the smoke preset on real Fashion-MNIST (CPU, ~7-10 min), then sample a labelled grid.
# Re-running resumes / reuses what is already there.
set -euo pipefail
OUT=${1:-runs/demo}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
echo "== FLOPs of the paper's XL/16 at 256² (Table 16 convention)"
$PY -m pixeldit_cli flops --res 256 --patch 16
echo "== train PixelDiT-S/4 on Fashion-MNIST 32x32 (preset smoke: 2000 steps of 64 images)"
$PY -m pixeldit_cli train --preset smoke --out "$OUT/train"
echo "== EMA weights -> safetensors"
$PY -m pixeldit_cli convert "$OUT/train/checkpoints/last.pt" "$OUT/smoke.safetensors" --force
echo "== sample a class-labelled grid: 10 classes x 8 (FlowDPM 50 steps, CFG 2 in [0.1, 1])"
CLASSES=""
for c in 0 1 2 3 4 5 6 7 8 9; do CLASSES="$CLASSES --class $c"; done
rm -rf "$OUT/samples"
$PY -m pixeldit_cli sample --preset smoke --ckpt "$OUT/smoke.safetensors" $CLASSES --n 80 --out "$OUT/samples" --npz
echo "columns, left to right: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot"
echo "grid: $OUT/samples/grid.png   training curve: $OUT/train/metrics.jsonl"
