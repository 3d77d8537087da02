"""Sampling: parity with the release's loops on the official fixture network, the noise contract, batch and
process invariance, resume, output folder, ADM npz, and every bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize
from safetensors.torch import save_file
from typer.testing import CliRunner

from pixeldit_cli import build_model, load_model, sample
from pixeldit_cli.cli import app
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.labels import imagenet_names, labels_for, parse_class
from pixeldit_cli.sampling import SampleJob, run
from pixeldit_cli.solvers import c2i_grid, noise_for, to_uint8

runner = CliRunner()


# ---- parity with the release's sampler loops (docs/conventions.md#samplers), written out literally ------------


def release_loop(net, noise, y, null, *, solver, steps, cfg, interval, shift):
    """The official c2i samplers as documented: always a doubled [uncond; cond] batch, u + w(c − u)."""
    grid = c2i_grid(steps, shift)
    B = noise.shape[0]

    def v(x, t):
        out = net(torch.cat([x, x]), t.repeat(2 * B), torch.cat([torch.full_like(y, null), y]))
        u, c = out[:B], out[B:]
        w = cfg if interval[0] < t < interval[1] else 1.0  # float32 tensor vs Python float: float32 compare
        return u + w * (c - u)

    x = noise
    if solver == "flowdpm":
        prev = None
        for i in range(steps):
            dt = grid[i + 1] - grid[i]
            d = v(x, grid[i])
            x = x + d * dt if prev is None else x + dt * (1.5 * d - 0.5 * prev)
            prev = d
        return x
    d = v(x, grid[0])  # heun, exact_henu=False
    for i in range(steps):
        dt = grid[i + 1] - grid[i]
        x_hat = x + d * dt
        if i == steps - 1:
            return x_hat
        d_hat = v(x_hat, grid[i + 1])
        x = x + (d + d_hat) / 2 * dt
        d = d_hat


@pytest.mark.parametrize(
    "solver,shift,interval", [("flowdpm", 1.0, (0.1, 0.9)), ("flowdpm", 2.0, (0.1, 1.0)), ("heun", 1.0, (0.1, 1.0))]
)
def test_matches_release_loop_on_official_fixture(fixtures, solver, shift, interval):
    net = load_model(fixtures / "official_c2i_small.ckpt")
    noise = noise_for(range(3), 7, (3, 8, 12))
    y = torch.tensor([0, 3, 4])
    with torch.inference_mode():
        want = release_loop(net, noise, y, 5, solver=solver, steps=20, cfg=3.0, interval=interval, shift=shift)
        got = sample(net, noise, y, None, solver=solver, steps=20, cfg=3.0, interval=interval, shift=shift)
    assert (got - want).abs().max() <= 1e-4
    assert want.abs().max() > 0.5  # a real signal, not a trivial zero


# ---- contracts ---------------------------------------------------------------------------------------


def test_noise_contract():
    got = noise_for([0, 5], 100, (3, 4, 6))
    assert torch.equal(got[1], torch.randn(3, 4, 6, generator=torch.Generator("cpu").manual_seed(105)))
    assert got.dtype == torch.float32


def test_uint8_rounding_as_released():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, 0.5 / 127.5 - 1e-6]).view(1, 1, 1, 6)
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255, 128]  # (x+1)·127.5 + 0.5, truncated


def test_labels_by_index_alone():
    a = labels_for(range(20), classes=None, mode="uniform", n=20, num_classes=10, seed=3)
    b = labels_for(range(10, 20), classes=None, mode="uniform", n=20, num_classes=10, seed=3)
    assert a[10:] == b and len(set(a)) > 3
    assert labels_for(range(6), classes=None, mode="balanced", n=6, num_classes=3, seed=0) == [0, 0, 1, 1, 2, 2]
    assert labels_for(range(100, 102), classes=None, mode="balanced", n=50000, num_classes=1000, seed=0) == [2, 2]
    assert labels_for(range(5), classes=[4, 9], mode="uniform", n=5, num_classes=10, seed=0) == [4, 9, 4, 9, 4]


def test_class_names():
    names = imagenet_names()
    assert len(names) == 1000 and names[1] == "goldfish"
    assert parse_class("goldfish", 1000, names) == 1 and parse_class("Golden_Retriever", 1000, names) == 207
    assert parse_class("291", 1000, names) == 291
    with pytest.raises(PixelDiTError, match="out of range"):
        parse_class("1000", 1000, names)
    with pytest.raises(PixelDiTError, match="unknown class name 'goldfsh'"):
        parse_class("goldfsh", 1000, names)


# ---- jobs ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    m = randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), 0)
    path = d / "tiny.safetensors"
    save_file(m.state_dict(), str(path), metadata={"pixeldit_config": json.dumps(m.config.to_dict())})
    return path


def job(tiny, out, **kw):
    base = dict(
        ckpt=str(tiny),
        n=8,
        out=str(out),
        solver="flowdpm",
        steps=6,
        cfg=2.0,
        interval=(0.1, 0.9),
        height=16,
        width=24,
        seed=11,
        batch_size=3,
    )
    base.update(kw)
    return SampleJob(**base)


def pngs(out, n):
    from torchvision.io import read_image

    return torch.stack([read_image(str(Path(out) / f"{i:06d}.png")) for i in range(n)])


def close_uint8(a, b):
    d = (a.int() - b.int()).abs()
    return d.max() <= 1 and (d > 0).float().mean() < 1e-3


def test_batch_size_does_not_change_images_and_outputs_are_complete(tiny, tmp_path):
    r1 = run(job(tiny, tmp_path / "b1", batch_size=1, npz=True), progress=False)
    r7 = run(job(tiny, tmp_path / "b7", batch_size=7), progress=False)
    assert close_uint8(pngs(tmp_path / "b1", 8), pngs(tmp_path / "b7", 8))
    for name in ("grid.png", "results.json", "run.json", "samples.npz"):
        assert (tmp_path / "b1" / name).exists()
    # NFE actually made: 6 calls, guided where 0.1 < t < 0.9 on 0, 1/6, ..., 5/6 -> 5 guided
    assert r1["nfe_per_sample"] == 11 and r1["network_calls_per_batch"] == 6 and r7["nfe_per_sample"] == 11
    npz = np.load(tmp_path / "b1" / "samples.npz")
    assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (8, 16, 24, 3)
    assert np.array_equal(npz["arr_0"], pngs(tmp_path / "b1", 8).permute(0, 2, 3, 1).numpy())
    assert npz["arr_1"].tolist() == labels_for(range(8), classes=None, mode="uniform", n=8, num_classes=10, seed=11)
    res = json.loads((tmp_path / "b1" / "results.json").read_text())
    assert res["checkpoint_sha256"] and res["dtype"] == "fp32" and res["settings"]["cfg"] == 2.0


def test_cfg_one_halves_network_evaluations(tiny, tmp_path):
    r = run(job(tiny, tmp_path / "c1", cfg=1.0, n=2), progress=False)
    assert r["nfe_per_sample"] == 6


def test_resume_completes_without_regenerating(tiny, tmp_path):
    out = tmp_path / "r"
    run(job(tiny, out, format="png"), progress=False)
    ref = pngs(out, 8)
    for i in (2, 6):
        (out / f"{i:06d}.png").unlink()
    (out / "results.json").unlink()
    stamps = {i: os.stat(out / f"{i:06d}.png").st_mtime_ns for i in (0, 1, 3, 4, 5, 7)}
    r = run(job(tiny, out, batch_size=5, format="png"), progress=False)  # batch size may change on resume
    assert r["generated_this_run"] == 2 and r["resumed_from_disk"] == 6
    assert all(os.stat(out / f"{i:06d}.png").st_mtime_ns == s for i, s in stamps.items())
    assert close_uint8(pngs(out, 8), ref)


def test_deleted_pngs_come_back_from_the_records_bit_for_bit(tiny, tmp_path):
    out = tmp_path / "r"
    run(job(tiny, out), progress=False)  # n <= 1000: PNGs and samples.npz
    before = {i: (out / f"{i:06d}.png").read_bytes() for i in (2, 6)}
    for i in (2, 6):
        (out / f"{i:06d}.png").unlink()
    r = run(job(tiny, out), progress=False)
    assert r["generated_this_run"] == 0 and r["exported_from_records"] == 2
    assert all((out / f"{i:06d}.png").read_bytes() == b for i, b in before.items())


def test_interrupted_run_finishes_where_it_stopped(tiny, tmp_path):
    out = tmp_path / "int"
    real = load_model(tiny)

    class Dies(torch.nn.Module):  # killed during the second batch
        def __init__(self):
            super().__init__()
            self.config, self.calls = real.config, 0

        def forward(self, *a):
            self.calls += 1
            if self.calls > 6:
                raise KeyboardInterrupt
            return real(*a)

    with pytest.raises(KeyboardInterrupt):
        run(job(tiny, out), model=Dies(), progress=False)
    assert sorted(p.name for p in out.glob("0*.png")) == ["000000.png", "000001.png", "000002.png"]
    assert not list(out.glob(".*.tmp")) and not (out / "samples.npz").exists()
    r = run(job(tiny, out), progress=False)
    assert r["generated_this_run"] == 5
    run(job(tiny, tmp_path / "ref"), progress=False)
    assert close_uint8(pngs(out, 8), pngs(tmp_path / "ref", 8))


def test_other_settings_in_the_same_folder_are_refused(tiny, tmp_path):
    out = tmp_path / "s"
    run(job(tiny, out, n=2), progress=False)
    before = (out / "000000.png").read_bytes()
    with pytest.raises(PixelDiTError, match=r"other settings \(cfg\)"):
        run(job(tiny, out, n=2, cfg=4.0), progress=False)
    assert (out / "000000.png").read_bytes() == before


def test_two_processes_under_torchrun_equal_one(tiny, tmp_path):
    run(job(tiny, tmp_path / "one", n=6), progress=False)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pixeldit_cli",
        "--",
        "sample",
        "--ckpt",
        str(tiny),
        "--n",
        "6",
        "--out",
        str(tmp_path / "two"),
        "--solver",
        "flowdpm",
        "--steps",
        "6",
        "--cfg",
        "2.0",
        "--cfg-interval",
        "0.1",
        "0.9",
        "--height",
        "16",
        "--width",
        "24",
        "--seed",
        "11",
        "--batch-size",
        "2",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert close_uint8(pngs(tmp_path / "one", 6), pngs(tmp_path / "two", 6))
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2


def test_nproc_flag_starts_its_own_workers(tiny, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "pixeldit_cli",
        "sample",
        "--ckpt",
        str(tiny),
        "--n",
        "3",
        "--out",
        str(tmp_path / "np"),
        "--steps",
        "2",
        "--height",
        "16",
        "--width",
        "16",
        "--nproc",
        "2",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((tmp_path / "np" / "results.json").read_text())["world_size"] == 2
    assert len(list((tmp_path / "np").glob("0*.png"))) == 3


# ---- CLI and bad input ------------------------------------------------------------------------------


def test_cli_card_example_with_names(tiny, tmp_path):
    r = runner.invoke(
        app,
        [
            "sample",
            "--ckpt",
            str(tiny),
            "--class",
            "3",
            "--n",
            "2",
            "--steps",
            "2",
            "--height",
            "16",
            "--width",
            "16",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "NFE per sample" in r.output and (tmp_path / "cli" / "grid.png").exists()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--class", "10"], "class id 10 is out of range"),
        (["--class", "goldfish"], "has no class names"),
        (["--n", "0"], "--n must be at least 1"),
        (["--n", "-3"], "--n must be at least 1"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--cfg-interval", "0.9", "0.1"], "--cfg-interval 0.9 0.1 is invalid"),
        (["--cfg-interval", "0.1", "1.5"], "--cfg-interval 0.1 1.5 is invalid"),
        (["--height", "18"], "not a multiple of the patch size 4"),
        (["--prompt", "a cat"], "--prompt was given but this is a class-conditional checkpoint"),
        (["--solver", "ddim"], "'ddim' is not one of"),
    ],
)
def test_cli_bad_input(tiny, tmp_path, args, msg):
    out = tmp_path / "bad"
    r = runner.invoke(
        app,
        ["sample", "--ckpt", str(tiny), "--steps", "2", "--height", "16", "--width", "16", "--out", str(out), *args],
    )
    assert r.exit_code != 0 and msg in r.output, r.output
    assert "Traceback" not in r.output
    assert not out.exists() or not list(out.glob("*.png"))


def test_cli_t2i_checkpoint_with_class_and_missing_checkpoint(fixtures, tmp_path):
    r = runner.invoke(
        app,
        ["sample", "--ckpt", str(fixtures / "official_t2i_small.pth"), "--class", "1", "--out", str(tmp_path / "t")],
    )
    assert r.exit_code == 1 and "text-to-image checkpoint" in r.output
    r = runner.invoke(app, ["sample", "--ckpt", str(tmp_path / "nope.safetensors")])
    assert r.exit_code == 1 and "does not exist" in r.output


def test_cli_dotted_overrides_set_the_sample_section_and_results_hold_the_config(tiny, tmp_path):
    """`--sample.steps 3 --sample.cfg 1.5` over the family default (xl256: 100 steps, CFG 2.75); a flag
    (`--seed`) wins over `--sample.seed`; results.json records the resolved config with the flags folded
    in (what ran) and where it came from; --print-config prints that config without sampling; the images
    equal a library job with the same settings."""
    args = [
        "sample",
        "--ckpt",
        str(tiny),
        "--n",
        "3",
        "--height",
        "16",
        "--width",
        "16",
        "--out",
        str(tmp_path / "o"),
        "--sample.steps",
        "3",
        "--sample.cfg",
        "1.5",
        "--sample.seed",
        "9",
        "--seed",
        "4",
        "--json",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    s = res["settings"]
    assert (s["steps"], s["cfg"], s["seed"]) == (3, 1.5, 4)
    assert res["config"]["sample"]["steps"] == 3 and res["config"]["sample"]["seed"] == 4
    assert (res["config"]["sample"]["height"], res["config"]["sample"]["cfg"]) == (16, 1.5)
    shown = runner.invoke(app, args[:-1] + ["--out", str(tmp_path / "p"), "--print-config", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["config"] == res["config"] and not (tmp_path / "p").exists()
    assert res["defaults_from"] == "preset xl256 (the release's settings) with overrides"
    assert json.loads((tmp_path / "o" / "results.json").read_text())["config"] == res["config"]
    lib = run(
        job(tiny, tmp_path / "lib", n=3, steps=3, cfg=1.5, seed=4, height=16, width=16, interval=(0.1, 0.9), shift=1.0),
        progress=False,
    )
    assert lib and torch.equal(pngs(tmp_path / "o", 3), pngs(tmp_path / "lib", 3))
    bad = runner.invoke(app, ["sample", "--ckpt", str(tmp_path / "missing.safetensors"), "--sample.stepz", "3"])
    assert bad.exit_code != 0 and "unknown config key 'sample.stepz'" in bad.output and "sample.steps" in bad.output
