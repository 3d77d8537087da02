#!/usr/bin/env bash
# make demo: what runs on a CPU today. Until `pixeldit train` lands (issue 4), the demo works with
# tiny randomly initialised / fixture models: FLOPs of the paper's models, and a checkpoint conversion.
set -euo pipefail
OUT=${1:-runs/demo}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
echo "== FLOPs of the paper's models (Table 16 convention)"
$PY -m pixeldit_cli flops --res 256 --patch 16
$PY -m pixeldit_cli flops --model PixelDiT-T2I --res 1024
echo "== convert an official-format checkpoint (tiny fixture) to safetensors"
$PY -m pixeldit_cli convert tests/fixtures/official_c2i_small.ckpt "$OUT/c2i_small.safetensors" --force
echo "demo outputs in $OUT"
