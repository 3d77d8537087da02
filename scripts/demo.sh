#!/usr/bin/env bash
# make demo: train the smoke preset on real Fashion-MNIST (CPU, ~10 min), sample a labelled grid, score it
# against held-out test images, and edit a real test sneaker into an ankle boot. Re-running resumes.
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
echo "== sample a class-labelled grid (FlowDPM 50 steps, CFG 2 in [0.1, 1]): one row per seed, one column per class"
CLASSES=""
for c in 0 1 2 3 4 5 6 7 8 9; do CLASSES="$CLASSES --class $c"; done
rm -rf "$OUT/samples"
$PY -m pixeldit_cli sample --preset smoke --ckpt "$OUT/smoke.safetensors" $CLASSES --n 200 --out "$OUT/samples" --npz
echo "== FID against 500 held-out test images (fallback Inception features; N = 200 is a pipeline check, biased high)"
$PY scripts/fashion_export.py "$OUT/data" --n 500
$PY -m pixeldit_cli eval-fid "$OUT/samples/samples.npz" "$OUT/data/fashion_test.npz" --sqrtm eigh --no-cache
echo "== FlowEdit a real test sneaker towards an ankle boot (edit box: the upper 18 rows, where a shaft would grow)"
$PY -m pixeldit_cli edit "$OUT/data/sneaker.png" --src Sneaker --tgt "Ankle boot" --ckpt "$OUT/smoke.safetensors" \
    --steps 50 --strength 0.96 --src-cfg 1.0 --tgt-cfg 6 --n-avg 2 --num-seeds 3 --bbox 0 0 32 18 --out "$OUT/edit"
echo "== training curves"
$PY -m pixeldit_cli plot "$OUT/train"
echo "grid: $OUT/samples/grid.png (class names over the columns)  strip: $OUT/edit/strip.png  curves: $OUT/train/loss.png"
