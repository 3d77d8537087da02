"""The CLI: help with examples, every command registered, one-line errors with non-zero exits, JSON output."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pixeldit_cli.cli import app

runner = CliRunner()
COMMANDS = ["train", "sample", "edit", "eval-fid", "flops", "convert"]


def run(*args):
    return runner.invoke(app, list(args))


def test_every_command_registered_with_examples_in_help():
    top = run("--help")
    assert top.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in top.output
        h = run(cmd, "--help")
        assert h.exit_code == 0 and "Example" in h.output, cmd


def test_flops_card_example_json():
    r = run("flops", "--res", "1024", "--patch", "16", "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["model"] == "PixelDiT-XL/16" and round(d["gflops"], 2) == 7147.18 and d["params"] == 797_383_203


def test_flops_human_output_and_non_square():
    r = run("flops", "--model", "PixelDiT-B/16", "--height", "256", "--width", "512", "--batch", "2")
    assert r.exit_code == 0 and "184,749,155" in r.output and "256x512" in r.output


@pytest.mark.parametrize(
    "args,msg",
    [
        (["flops", "--res", "100"], "not a positive multiple of the patch size 16"),
        (["flops", "--model", "PixelDiT-Huge/16"], "unknown model 'PixelDiT-Huge/16'"),
        (["flops", "--preset", "nope"], "unknown preset 'nope'"),
    ],
)
def test_flops_bad_input_one_line(args, msg):
    r = run(*args)
    assert r.exit_code == 1 and msg in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_convert_cli_and_refusals(fixtures, tmp_path):
    dst = tmp_path / "c2i.safetensors"
    r = run("convert", str(fixtures / "official_c2i_small.ckpt"), str(dst))
    assert r.exit_code == 0 and "used: 53 tensors" in r.output and "training only (REPA projector)): 6" in r.output
    before = dst.read_bytes()
    r = run("convert", str(fixtures / "official_t2i_small.pth"), str(dst))
    assert r.exit_code == 1 and "already exists" in r.output and dst.read_bytes() == before
    r = run("convert", str(fixtures / "official_c2i_small.ckpt"), str(dst), "--force", "--weights", "raw")
    assert r.exit_code == 0 and dst.read_bytes() != before
    r = run("convert", str(fixtures / "official_c2i_small.ckpt"), str(tmp_path / "x.safetensors"), "--weights", "best")
    flat = " ".join(r.output.replace("│", " ").split())  # the parser's message is boxed and wrapped
    assert r.exit_code == 2 and "'best' is not one of 'ema', 'raw'" in flat  # a typed choice: the parser refuses it


def test_real_process_prints_one_line_and_no_traceback(tmp_path):
    """Through `python -m pixeldit_cli` (the torchrun entry point), as a user sees it."""
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"\x00" * 100)
    p = subprocess.run(
        [sys.executable, "-m", "pixeldit_cli", "convert", str(bad), str(tmp_path / "o.safetensors")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().startswith("error:") and "is not a checkpoint" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run(
        [sys.executable, "-m", "pixeldit_cli", "--", "flops", "--model", "PixelDiT-S/4", "--res", "32", "--json"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and json.loads(p.stdout)["height"] == 32


def test_version_and_debug_traceback(monkeypatch):
    r = run("--version")
    assert r.exit_code == 0 and r.output.startswith("pixeldit 0.1.0")
    monkeypatch.setenv("PIXELDIT_DEBUG", "1")
    r = run("flops", "--res", "100")
    from pixeldit_cli.errors import PixelDiTError

    assert isinstance(r.exception, PixelDiTError) and "multiple of the patch size" in str(r.exception)


def test_help_imports_nothing_heavy_and_completion_is_on():
    """`pixeldit --help` must be instant: checked by what importing the CLI loads, not by a clock."""
    import subprocess
    import sys

    code = (
        "import sys, pixeldit_cli.cli\n"
        "print([m for m in ('torch', 'torchvision', 'numpy', 'scipy', 'safetensors', 'PIL', 'transformers') if m in sys.modules])"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr[-1000:]
    r = runner.invoke(app, ["--help"])
    assert "--install-completion" in r.output and "<bool>" not in r.output.split("--install-completion")[0]
    r = runner.invoke(app, ["sample", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert "flowdpm|euler|heun|dpm++2m" in r.output and "auto|png|npz|both" in r.output


def test_import_pixeldit_is_the_same_package():
    import sys

    import pixeldit
    import pixeldit_cli

    assert pixeldit.__version__ == pixeldit_cli.__version__
    from pixeldit import build_model, load_model, sample

    assert callable(sample) and sample is pixeldit_cli.sample and load_model is pixeldit_cli.load_model
    assert build_model is pixeldit_cli.build_model and load_model.__module__ == "pixeldit_cli.models.loading"
    assert not [m for m in sys.modules if m.startswith("pixeldit.")]  # one copy of every module: pixeldit_cli's


def test_unknown_config_keys_get_a_suggestion_and_print_config_lists_every_key(tmp_path):
    r = runner.invoke(app, ["train", "--preset", "smoke", "--out", str(tmp_path / "r"), "--train.ema", "0.9"])
    assert r.exit_code == 1 and "did you mean" in r.output and "train.ema_decay" in r.output
    r = runner.invoke(app, ["train", "--preset", "smoke", "--out", str(tmp_path / "r"), "--lr", "1e-3"])
    assert r.exit_code == 1 and "train.lr" in r.output  # the key in its section
    r = runner.invoke(
        app,
        ["train", "--preset", "smoke", "--out", str(tmp_path / "r"), "--print-config", "--json", "--train.lr", "3e-4"],
    )
    cfg = json.loads(r.output)
    assert cfg["train"]["lr"] == 3e-4 and cfg["data"]["resolution"] == 32 and not (tmp_path / "r").exists()
    from pixeldit_cli.config import dotted_keys

    assert "train.ema_decay" in dotted_keys() and "sample.interval" in dotted_keys()


def test_convert_json_is_one_object(fixtures, tmp_path):
    r = runner.invoke(
        app, ["convert", str(fixtures / "official_c2i_small.ckpt"), str(tmp_path / "c.safetensors"), "--json"]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["source_format"].startswith("official class-conditional") and rep["weights"] == "ema"
    assert rep["dropped"]["training only (REPA projector)"] == 6


def test_plot_draws_the_curves_of_a_run(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {
            "step": s,
            "loss": 1 / s,
            "loss_flow": 0.9 / s,
            "loss_repa": 0.1,
            "grad_norm": 2.0,
            "lr": 1e-4,
            "grad_clip": 1.0,
        }
        for s in range(1, 21)
    ]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 21, "lo'
    )  # torn last line
    r = runner.invoke(app, ["plot", str(run), "--json"])
    assert r.exit_code == 0, r.output
    from PIL import Image

    im = Image.open(json.loads(r.output)["out"])
    assert im.size == (1000, 650)
    r = runner.invoke(app, ["plot", str(tmp_path)])
    assert r.exit_code == 1 and "has no metrics.jsonl" in r.output


def test_labelled_grid_upscales_and_names_the_columns(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from pixeldit_cli.io import write_grid

    imgs = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    write_grid(imgs, tmp_path / "g.png", nrow=4, column_labels=["T-shirt/top", "Trouser", "Pullover", "Dress"])
    a = np.asarray(Image.open(tmp_path / "g.png"))
    # 32 px tiles are upscaled 3x to 96; 4 columns, 2 rows, 2 px gaps; a 14 px label strip on top
    assert a.shape == (14 + 2 + 2 * (96 + 2), 2 + 4 * (96 + 2), 3)
    strip = a[:14]
    assert (strip < 128).any() and (a[16:112, 2:98] == 0).all()  # text in the strip, the image below
