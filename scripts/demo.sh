#!/usr/bin/env bash
# make demo: train the fashion preset (smoke on a 1-channel network) on real Fashion-MNIST (CPU), sample a labelled grid, score it (FID /
# precision / recall, and an independent classifier), and measure FlowEdit over real test images with a
# small sweep. Budget: 10 minutes on two quiet cores; every stage prints the elapsed time, and the total
# and per-stage times land in OUT/timings.txt, every verdict in OUT/summary.json. Re-running resumes the
# training and re-does the rest.
set -euo pipefail
OUT=${1:-runs/demo}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
T0=$SECONDS
LAST=$SECONDS
: > "$OUT/timings.txt"
stage() {  # close the previous stage's timing, announce the next
    if [ -n "${NAME:-}" ]; then printf '%-10s %4d s\n' "$NAME" $((SECONDS - LAST)) >> "$OUT/timings.txt"; fi
    NAME=$1; LAST=$SECONDS
    printf '== [%d:%02d] %s\n' $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60)) "$2"
}

stage flops "FLOPs of the paper's XL/16 at 256² (Table 16 convention)"
$PY -m pixeldit_cli flops --res 256 --patch 16

stage train "train PixelDiT-S/4 on gray Fashion-MNIST 32x32 (preset fashion: a 1-channel network; progress and ETA below)"
$PY -m pixeldit_cli train --preset fashion --out "$OUT/train"
$PY -m pixeldit_cli convert "$OUT/train/checkpoints/last.pt" "$OUT/smoke.safetensors" --force

stage sample "sample a class-labelled grid (the preset's FlowDPM settings): one column per class, 20 seeds each"
CLASSES=""
for c in 0 1 2 3 4 5 6 7 8 9; do CLASSES="$CLASSES --class $c"; done
rm -rf "$OUT/samples"
$PY -m pixeldit_cli sample --preset fashion --ckpt "$OUT/smoke.safetensors" $CLASSES --n 200 --out "$OUT/samples" --format both

stage judge "an independent classifier (real training images only), then: are the samples the class they were drawn for?"
$PY scripts/fashion_export.py "$OUT/data" --n 250
$PY -m studies.fashion_classifier "$OUT/classifier.pt" --judge "$OUT/samples/samples.npz" --json "$OUT/judge.json"

stage fid "FID / precision / recall against 250 held-out test images (fallback Inception; N = 200 checks the pipeline, biased high)"
$PY -m pixeldit_cli eval-fid "$OUT/samples/samples.npz" "$OUT/data/fashion_test.npz" --sqrtm eigh --no-cache --json > "$OUT/fid.json"
$PY -c "import json, sys; r = json.load(open(sys.argv[1])); print('FID %.2f  precision %.3f  recall %.3f  (N = %d)' % (r['fid'], r['precision'], r['recall'], r['n']))" "$OUT/fid.json"

stage edit "FlowEdit over real test images, scored by the classifier: a strength x target-CFG sweep"
$PY -m studies.edit_study --ckpt "$OUT/smoke.safetensors" --classifier "$OUT/classifier.pt" --out "$OUT/edit" --per-pair 10

stage plot "training curves"
$PY -m pixeldit_cli plot "$OUT/train"
stage done "finished"
printf '%-10s %4d s\n' total $((SECONDS - T0)) >> "$OUT/timings.txt"
cat "$OUT/timings.txt"
$PY scripts/demo_summary.py "$OUT"
echo "grid: $OUT/samples/grid.png  curves: $OUT/train/loss.png  edits: $OUT/edit/edit_table.md, $OUT/edit/strip.png"
