"""FlowEdit: exact identities in pixel space, the step schedule, the 2-D mixture toy, background metrics, CLI."""

import json
import math

import pytest
import torch
from analytic import GMMFlow
from conftest import randomize
from safetensors.torch import save_file
from torchvision.io import read_image, write_png
from typer.testing import CliRunner

from pixeldit_cli import build_model
from pixeldit_cli.cli import app
from pixeldit_cli.edit import background_metrics, bbox_region, edit_steps, flowedit, ssim_map

runner = CliRunner()


def test_edit_steps_sum_to_the_start_time():
    for steps, n_max, shift in [(50, 33, 1.0), (28, 24, 3.0), (10, 10, 1.0)]:
        pairs, tail, grid = edit_steps(steps, n_max, 0, shift)
        dts = [(grid[b] - grid[a]).item() for a, b in pairs]
        t_start = 1 - grid[steps - n_max].item()  # the noise level editing starts from
        assert len(pairs) == n_max and not tail
        assert sum(dts) == pytest.approx(t_start, abs=1e-6)
    pairs, tail, _ = edit_steps(50, 33, 10)
    assert len(pairs) == 23 and len(tail) == 10  # n_min target-only steps at the end
    assert edit_steps(50, 33)[2][17].item() == pytest.approx(0.34)  # n_max 33 of 50 starts at τ = 0.34 (t = 0.66)


def toy():
    a = 15 / math.sqrt(2)
    return GMMFlow([[[a, a], [-a, -a]], [[-15.0, 0.0], [0.0, 15.0]], [[0.0, 0.0]]], s=1.0)


def test_identity_and_n_max_zero_are_exact():
    m = toy()
    x = torch.tensor([[10.2, 11.1], [-9.0, -10.5]]).view(2, 2, 1, 1)
    src = torch.tensor([0, 0])
    out, st = flowedit(m, x, src, src.clone(), steps=20, n_max=15, src_cfg=1.0, tgt_cfg=1.0, seed=3)
    assert torch.equal(out, x) and st["network_evaluations_per_image"] == 15  # the target branch is never needed
    out, _ = flowedit(m, x, src, torch.tensor([1, 1]), steps=20, n_max=0, src_cfg=1.0, tgt_cfg=1.0)
    assert torch.equal(out, x)
    out, _ = flowedit(m, x, src, src.clone(), steps=20, n_max=15, src_cfg=1.0, tgt_cfg=2.0)
    assert not torch.equal(out, x)  # unequal guidance is not an identity edit


def test_two_gaussian_toy_moves_each_mode_to_its_nearest_counterpart():
    """FlowEdit's Fig. 3: source modes ±(15/√2, 15/√2) -> target modes (0, 15) and (−15, 0)."""
    m = toy()
    a = 15 / math.sqrt(2)
    x = torch.tensor([[a + 0.3, a - 0.2], [-a - 0.1, -a + 0.4]]).view(2, 2, 1, 1)
    out, _ = flowedit(
        m, x, torch.tensor([0, 0]), torch.tensor([1, 1]), steps=50, n_max=50, n_avg=2, src_cfg=1.0, tgt_cfg=1.0, seed=1
    )
    out = out.view(2, 2)
    assert torch.dist(out[0], torch.tensor([0.0, 15.0])) < 2.5
    assert torch.dist(out[1], torch.tensor([-15.0, 0.0])) < 2.5
    # the transport is short: each sample moves less than to the far target mode (≈ 27.7 away)
    assert (out - x.view(2, 2)).norm(dim=1).max() < 16


def test_shared_noise_cancels_for_a_linear_field():
    """v_tar − v_src does not depend on the noise when both branches are the same affine field up to a shift."""
    m = GMMFlow([[[5.0, 0.0]], [[-5.0, 0.0]], [[0.0, 0.0]]], s=1.0)  # single modes: affine in x
    x = torch.tensor([[4.0, 1.0]]).view(1, 2, 1, 1)
    a, _ = flowedit(m, x, torch.tensor([0]), torch.tensor([1]), steps=10, n_max=10, seed=1, src_cfg=1.0, tgt_cfg=1.0)
    b, _ = flowedit(m, x, torch.tensor([0]), torch.tensor([1]), steps=10, n_max=10, seed=2, src_cfg=1.0, tgt_cfg=1.0)
    assert torch.allclose(a, b, atol=1e-5)
    assert a.view(2)[0].item() == pytest.approx(-6.0, abs=1e-4)  # the mode shift, −10 in x, exactly transported


def test_ssim_closed_forms():
    a = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim_map(a, a), torch.ones(20, 24, dtype=torch.float64))
    # constant images u, v: SSIM = (2uv + C1) / (u² + v² + C1) everywhere (variances are zero)
    u, v, C1 = 0.3, 0.7, 0.01**2
    got = ssim_map(torch.full((3, 16, 16), u), torch.full((3, 16, 16), v))
    assert torch.allclose(got, torch.full((16, 16), (2 * u * v + C1) / (u * u + v * v + C1), dtype=torch.float64))


def test_background_metrics_on_constructed_images():
    src = torch.full((3, 16, 16), 100, dtype=torch.uint8)
    out = src.clone()
    out[:, 4:8, 4:8] = 255  # changes only inside the box
    region = bbox_region(16, 16, (4, 4, 8, 8))
    m = background_metrics(src, out, region)
    assert m["background_mse"] == 0.0 and m["background_fraction"] == pytest.approx(240 / 256)
    out[:, 12:, 12:] = 110  # a change outside: 16 px of (10/255)² over 240 background px
    m = background_metrics(src, out, region)
    assert m["background_mse"] == pytest.approx(16 * (10 / 255) ** 2 / 240)
    assert m["background_ssim"] < 1.0


# ---- the CLI --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("edit")
    m = randomize(build_model("PixelDiT-XS/4", num_classes=4), 0)
    with torch.no_grad():  # a random net barely looks at the class; make edits visible in uint8
        m.y_embedder.embedding_table.weight.mul_(60)
        m.final_layer.linear.weight.mul_(4)
    meta = {
        "pixeldit_config": json.dumps(m.config.to_dict()),
        "class_names": json.dumps(["cat", "dog", "Ankle boot", "bag"]),
    }
    save_file(m.state_dict(), str(d / "tiny.safetensors"), metadata=meta)
    img = torch.randint(0, 256, (3, 18, 22), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    write_png(img, str(d / "in.png"))
    return d


def edit(tiny, tmp_path, *args):
    return runner.invoke(
        app,
        [
            "edit",
            str(tiny / "in.png"),
            "--ckpt",
            str(tiny / "tiny.safetensors"),
            "--steps",
            "6",
            "--n-max",
            "4",
            "--out",
            str(tmp_path / "o"),
            *args,
        ],
    )


def test_cli_identity_is_bit_exact_and_outputs(tiny, tmp_path):
    r = edit(tiny, tmp_path, "--src", "cat", "--tgt", "0", "--src-cfg", "2", "--tgt-cfg", "2")
    assert r.exit_code == 0, r.output
    src = read_image(str(tiny / "in.png"))[:, 1:17, 1:21]  # --fit crop to 16×20, centred
    assert torch.equal(read_image(str(tmp_path / "o" / "edited.png")), src)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["fit"] == {"fit": "crop", "box": [1, 1, 21, 17]} and res["source"]["name"] == "cat"
    # source | edit, 20 + 2 + 20 = 42 wide at 16 high, shown upscaled x6 (the smallest factor reaching 96 px)
    assert read_image(str(tmp_path / "o" / "strip.png")).shape == (3, 16 * 6, 42 * 6)


def test_cli_seeds_pad_and_bbox_metrics(tiny, tmp_path):
    r = edit(
        tiny,
        tmp_path,
        "--src",
        "cat",
        "--tgt",
        "Ankle boot",
        "--num-seeds",
        "2",
        "--fit",
        "pad",
        "--bbox",
        "2",
        "2",
        "10",
        "10",
        "--json",
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["outputs"] == ["edited_seed0.png", "edited_seed1.png"] and res["target"]["class"] == 2
    assert read_image(str(tmp_path / "o" / "edited_seed1.png")).shape == (3, 18, 22)  # padding undone
    assert len(res["background"]) == 2 and 0 < res["background"][0]["background_mse"] < 1


def test_cli_gray_input_is_converted_and_said(tiny, tmp_path):
    write_png(torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8), str(tmp_path / "gray.png"))
    r = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "gray.png"),
            "--ckpt",
            str(tiny / "tiny.safetensors"),
            "--src",
            "0",
            "--tgt",
            "1",
            "--steps",
            "4",
            "--n-max",
            "2",
            "--out",
            str(tmp_path / "g"),
        ],
    )
    assert r.exit_code == 0 and "grayscale input converted to RGB" in r.output


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--src", "0", "--tgt", "1", "--n-max", "9"], "--n-max <= --steps"),
        (["--src", "0", "--tgt", "1", "--n-min", "5"], "--n-min <= --n-max"),
        (["--src", "0", "--tgt", "horse"], "unknown class name 'horse'"),
        (["--src", "0", "--tgt", "1", "--mask", "MASK"], "mask is 8x8 but the image is 22x18"),
    ],
)
def test_cli_bad_input(tiny, tmp_path, args, msg):
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(tmp_path / "mask.png"))
    args = [str(tmp_path / "mask.png") if a == "MASK" else a for a in args]
    r = edit(tiny, tmp_path, *args)
    assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output


def test_cli_unreadable_input_and_overwrite_refused(tiny, tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    r = runner.invoke(
        app, ["edit", str(tmp_path / "x.png"), "--ckpt", str(tiny / "tiny.safetensors"), "--src", "0", "--tgt", "1"]
    )
    assert r.exit_code == 1 and "is not a readable image" in r.output
    src = tmp_path / "edited.png"
    src.write_bytes((tiny / "in.png").read_bytes())
    r = runner.invoke(
        app,
        [
            "edit",
            str(src),
            "--ckpt",
            str(tiny / "tiny.safetensors"),
            "--src",
            "0",
            "--tgt",
            "1",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 1 and "would overwrite the input image" in r.output
    assert src.read_bytes() == (tiny / "in.png").read_bytes()


def test_strength_works_for_any_steps_and_matches_n_max(tmp_path):
    """--strength s edits the last round(s·T) steps: equal to --n-max in FlowEdit's notation, and valid for any T."""
    from pixeldit_cli.edit import DEFAULTS, n_max_of

    assert n_max_of(DEFAULTS["strength"], DEFAULTS["steps"]) == 33  # FlowEdit's SD3 default: 33 of 50
    assert n_max_of(0.66, 10) == 7 and n_max_of(0.0, 10) == 0 and n_max_of(1.0, 7) == 7
    m = randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), 0)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    a, sa = flowedit(m, x, torch.tensor([0]), torch.tensor([1]), steps=10, strength=0.66, seed=1)
    b, sb = flowedit(m, x, torch.tensor([0]), torch.tensor([1]), steps=10, n_max=7, seed=1)
    assert torch.equal(a, b) and sa["edited_steps"] == 7


def test_ssim_map_equals_scikit_image_everywhere_including_borders():
    import numpy as np
    from skimage.metrics import structural_similarity

    from pixeldit_cli.edit import ssim_map

    rng = np.random.default_rng(0)
    a = rng.random((3, 23, 31))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    _, full = structural_similarity(
        a, b, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True
    )
    ours = ssim_map(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.abs(ours - full.mean(0)).max() < 1e-12  # interior and the 5-pixel border alike


def test_cli_edit_defaults_come_from_the_config_and_land_in_results(tiny, tmp_path):
    """`--edit.strength 0` (a dotted override of the edit section) edits nothing: the output is the
    cropped input bit for bit; a flag wins over the override; results.json holds the resolved config."""
    r = runner.invoke(
        app,
        [
            "edit",
            str(tiny / "in.png"),
            "--ckpt",
            str(tiny / "tiny.safetensors"),
            "--src",
            "cat",
            "--tgt",
            "dog",
            "--out",
            str(tmp_path / "o"),
            "--edit.strength",
            "0",
            "--edit.steps",
            "6",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["n_max"] == 0 and res["steps"] == 6 and res["network_evaluations_per_image"] == 0
    # the defaults are the checkpoint's, as for sample: a class model without a training config gets its
    # family's release preset
    assert (
        res["config"]["edit"]["strength"] == 0
        and res["defaults_from"] == "preset xl256 (the release's settings) with overrides"
    )
    shown = runner.invoke(
        app,
        [
            "edit",
            "missing.png",
            "--ckpt",
            "missing",
            "--src",
            "1",
            "--tgt",
            "2",
            "--steps",
            "10",
            "--tgt-cfg",
            "7",
            "--print-config",
            "--json",
        ],
    )
    assert shown.exit_code == 0, shown.output  # nothing is read: the config alone
    ed = json.loads(shown.output)["config"]["edit"]
    assert (ed["steps"], ed["tgt_cfg"], ed["strength"], ed["src_cfg"]) == (10, 7.0, 0.66, 1.5)
    assert torch.equal(read_image(str(tmp_path / "o" / "edited.png")), read_image(str(tiny / "in.png"))[:, 1:17, 1:21])
    r = runner.invoke(
        app,
        [
            "edit",
            str(tiny / "in.png"),
            "--ckpt",
            str(tiny / "tiny.safetensors"),
            "--src",
            "cat",
            "--tgt",
            "dog",
            "--out",
            str(tmp_path / "p"),
            "--edit.strength",
            "0",
            "--steps",
            "4",
            "--strength",
            "0.5",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n_max"] == 2  # the flags: round(0.5 · 4)
    bad = runner.invoke(
        app,
        [
            "edit",
            str(tiny / "in.png"),
            "--ckpt",
            str(tmp_path / "missing"),
            "--src",
            "cat",
            "--tgt",
            "dog",
            "--edit.strenght",
            "0.5",
        ],
    )
    assert bad.exit_code != 0 and "unknown config key 'edit.strenght'" in bad.output and "edit.strength" in bad.output
