"""FLOPs: every cell of the paper's Table 16, the closed form against hook counting, the CLI."""

import pytest
import torch

from pixeldit_cli.flops import analytic_flops, count_by_hooks, example_inputs, run_flops
from pixeldit_cli.models import build_model, model_config

TABLE16 = {  # PixelDiT-XL, GFLOPs per forward, batch 1 (the paper prints truncated values)
    8: {256: 1115.69, 512: 6200.99, 1024: 52634.10},
    16: {256: 311.19, 512: 1352.24, 1024: 7147.17},
    32: {256: 135.54, 512: 547.74, 1024: 2298.42},
}


@pytest.mark.parametrize("p,res", [(p, r) for p in TABLE16 for r in TABLE16[p]])
def test_table16_every_cell(p, res):
    got = analytic_flops(model_config(f"PixelDiT-XL/{p}"), res, res)["total"] / 1e9
    assert abs(got - TABLE16[p][res]) <= 0.01


@pytest.mark.parametrize(
    "name,res,gflops",
    [
        ("PixelDiT-B/16", 256, 75.43),
        ("PixelDiT-L/16", 256, 227.77),
        ("PixelDiT-T2I", 512, 1432.57),
        ("PixelDiT-T2I", 1024, 6183.12),
    ],
)
def test_other_paper_flops(name, res, gflops):
    assert abs(analytic_flops(model_config(name), res, res)["total"] / 1e9 - gflops) <= 0.01


def test_official_counter_rounding_for_xl16_1024():
    assert round(analytic_flops(model_config("PixelDiT-XL/16"), 1024, 1024)["total"] / 1e9, 2) == 7147.18


@pytest.mark.parametrize(
    "name,H,W,B,Lt",
    [
        ("PixelDiT-S/4", 32, 32, 1, None),
        ("PixelDiT-S/4", 16, 40, 2, None),
        ("PixelDiT-T2I-S/4", 24, 16, 1, None),
        ("PixelDiT-T2I-S/2", 8, 12, 3, 7),
    ],
)
def test_closed_form_equals_hook_counting(name, H, W, B, Lt):
    m = build_model(name, init=False).eval()
    with torch.no_grad(), count_by_hooks(m) as tally:
        m(*example_inputs(m.config, H, W, B, Lt))
    assert tally["total"] == analytic_flops(m.config, H, W, B, Lt)["total"]


def test_flops_scale_linearly_with_batch():
    c = model_config("PixelDiT-XL/16")
    assert analytic_flops(c, 256, 512, 4)["total"] == 4 * analytic_flops(c, 256, 512, 1)["total"]


def test_run_flops_resolution_from_preset_and_patch_override():
    r = run_flops(preset="xl512")
    assert (r["height"], r["width"], r["model"]) == (512, 512, "PixelDiT-XL/16")
    assert abs(r["gflops"] - 1352.24) < 0.01 and r["params"] == 797_383_203
    r = run_flops(res=1024, patch=8)
    assert r["model"] == "PixelDiT-XL/8" and abs(r["gflops"] - 52634.10) < 0.01


def test_measure_reports_rates_on_a_tiny_model():
    r = run_flops(model="PixelDiT-S/4", res=32, measure=True, repeats=1)
    m = r["measured"]
    assert m["gflops_per_s"] > 0 and m["matmul_gflops_per_s"] > 0
    assert m["efficiency"] == pytest.approx(m["gflops_per_s"] / m["matmul_gflops_per_s"])
    assert m["gflops_per_s"] == pytest.approx(r["gflops"] / m["seconds_best"])
