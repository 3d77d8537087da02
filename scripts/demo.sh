#!/usr/bin/env bash
# make demo: what runs on a CPU today. Until `pixeldit train` lands (issue 4) the demo uses the tiny,
# randomly initialised official-format checkpoint in tests/fixtures: the grid it samples is structured
# noise, not pictures — it shows the pipeline (convert -> load -> FlowDPM with CFG -> PNGs/grid/npz).
set -euo pipefail
OUT=${1:-runs/demo}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
echo "== FLOPs of the paper's models (Table 16 convention)"
$PY -m pixeldit_cli flops --res 256 --patch 16
$PY -m pixeldit_cli flops --model PixelDiT-T2I --res 1024
echo "== convert an official-format checkpoint (tiny random fixture) to safetensors"
$PY -m pixeldit_cli convert tests/fixtures/official_c2i_small.ckpt "$OUT/c2i_small.safetensors" --force
echo "== sample a class-labelled grid from it (FlowDPM, CFG 2.75 in [0.1, 0.9], 32x32)"
rm -rf "$OUT/samples"
$PY -m pixeldit_cli sample --ckpt "$OUT/c2i_small.safetensors" --class 0 --class 1 --class 2 --class 3 --class 4 \
    --n 20 --steps 50 --height 32 --width 32 --out "$OUT/samples" --npz
echo "grid: $OUT/samples/grid.png   results: $OUT/samples/results.json"
