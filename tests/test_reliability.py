"""Reliability: every accepted image format read as 8-bit RGB, one line for every bad input, nothing
half-written kept, and training that survives torn logs and truncated checkpoints (issue: reliability)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import randomize
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from pixeldit_cli import build_model
from pixeldit_cli.cli import app
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.io import read_image

runner = CliRunner()


# ---- one reader for every accepted format ---------------------------------------------------------------


def ramp(h=8, w=12):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 21) % 256, (y * 31) % 256, ((x + y) * 13) % 256], -1).astype(np.uint8)


def test_every_listed_format_reads_as_8bit_rgb(tmp_path):
    rgb = ramp()
    gray = rgb[..., 0]
    cases = {
        "rgb.png": (Image.fromarray(rgb), rgb, ""),
        "rgb.bmp": (Image.fromarray(rgb), rgb, ""),
        "rgb.webp": (Image.fromarray(rgb), rgb, ""),  # saved lossless below
        "gray.png": (Image.fromarray(gray), np.repeat(gray[..., None], 3, 2), "grayscale"),
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full(gray.shape, 7, np.uint8)])), rgb, "alpha dropped"),
        "la.png": (Image.fromarray(np.dstack([gray, gray]), "LA"), np.repeat(gray[..., None], 3, 2), "alpha dropped"),
        "pal.png": (Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT), None, "palette"),
    }
    for name, (im, want, note) in cases.items():
        im.save(tmp_path / name, **({"lossless": True} if name.endswith(".webp") else {}))
        got, n = read_image(tmp_path / name)
        assert got.dtype == torch.uint8 and got.shape == (3, 8, 12), name
        if want is not None:
            assert np.array_equal(got.permute(1, 2, 0).numpy(), want), name
        assert note in n, (name, n)
    pal = Image.open(tmp_path / "pal.png").convert("RGB")
    assert np.array_equal(read_image(tmp_path / "pal.png")[0].permute(1, 2, 0).numpy(), np.asarray(pal))
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "rgb.jpg")[0].permute(1, 2, 0).numpy().astype(int) - rgb).mean() < 4


def test_16bit_pngs_are_scaled_not_clipped(tmp_path):
    v8 = ramp()[..., 0]
    Image.fromarray(v8.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # 16-bit grayscale PNG
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got, note = read_image(tmp_path / "g16.png")
    assert np.array_equal(got[0].numpy(), v8) and "16-bit" in note  # k·257 -> k exactly


def test_a_16bit_png_in_an_eval_folder_is_read_like_its_8bit_twin(tmp_path):
    from pixeldit_cli.npz import open_images

    v8 = ramp()
    for i in range(3):
        Image.fromarray(v8).save(tmp_path / f"{i:06d}.png")
    Image.fromarray(v8[..., 1].astype(np.uint16) * 257).save(tmp_path / "000003.png")
    batch = next(open_images(tmp_path).batches(8))
    assert batch.dtype == np.uint8 and batch.shape == (4, 8, 12, 3)
    assert np.array_equal(batch[3], np.repeat(v8[..., 1:2], 3, 2))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"not an image at all"])
def test_a_corrupt_image_is_one_line(tmp_path, content):
    from pixeldit_cli.npz import open_images

    Image.fromarray(ramp()).save(tmp_path / "000000.png")
    (tmp_path / "000001.png").write_bytes(content)
    with pytest.raises(PixelDiTError, match=r"000001.png is not a readable image"):
        list(open_images(tmp_path).batches(8))


# ---- tiny checkpoints ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    m = randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), 0)
    path = d / "tiny.safetensors"
    save_file(
        m.state_dict(),
        str(path),
        metadata={
            "pixeldit_config": json.dumps(m.config.to_dict()),
            "class_names": json.dumps([f"kind{i}" for i in range(10)]),
        },
    )
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "in.png"
    Image.fromarray(np.repeat(np.repeat(ramp(8, 8), 2, 0), 2, 1)).save(p)  # 16x16
    return p


def one_line_error(r, msg):
    assert r.exit_code != 0, r.output
    assert msg in r.output, r.output
    assert "Traceback" not in r.output


# ---- numbers that are not numbers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--cfg", "nan"], "--cfg must be a finite number"),
        (["--shift", "nan"], "--shift must be a finite number"),
        (["--shift", "0"], "--shift must be positive"),
        (["--seed", "-5"], "--seed must be 0 or more"),
        (["--height", "0", "--width", "0"], "image size 0x0 is invalid"),
        (["--height", "100000", "--width", "100000"], "need about"),
        (["--format", "jpeg"], "'jpeg' is not one of"),
    ],
)
def test_sample_refuses_bad_numbers_before_any_work(tiny, tmp_path, args, msg):
    out = tmp_path / "o"
    r = runner.invoke(
        app,
        [
            "sample",
            "--ckpt",
            str(tiny),
            "--n",
            "2",
            "--steps",
            "1",
            "--height",
            "16",
            "--width",
            "16",
            "--out",
            str(out),
            *args,
        ],
    )
    one_line_error(r, msg)
    assert not out.exists() or not any(out.glob("*.png"))


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--tgt-cfg", "nan"], "--tgt-cfg must be a finite number"),
        (["--shift", "-1"], "--shift must be positive"),
        (["--seed", "-1"], "--seed must be 0 or more"),
        (["--bbox", "0", "0", "16", "16"], "covers the whole image"),
        (["--bbox", "10", "10", "40", "40"], "is not inside the 16x16 image"),
        (["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_edit_refuses_bad_numbers_before_any_work(tiny, photo, tmp_path, args, msg):
    out = tmp_path / "e"
    r = runner.invoke(
        app,
        [
            "edit",
            str(photo),
            "--src",
            "1",
            "--tgt",
            "2",
            "--ckpt",
            str(tiny),
            "--steps",
            "4",
            "--n-max",
            "2",
            "--out",
            str(out),
            *args,
        ],
    )
    one_line_error(r, msg)
    assert not out.exists() or not any(out.iterdir())


def test_edit_of_a_folder_and_of_a_class_typo(tiny, photo, tmp_path):
    r = runner.invoke(
        app, ["edit", str(tmp_path), "--src", "1", "--tgt", "2", "--ckpt", str(tiny), "--out", str(tmp_path / "e")]
    )
    one_line_error(r, "is a folder, not an image")
    r = runner.invoke(
        app, ["edit", str(photo), "--src", "kind1", "--tgt", "knd2", "--ckpt", str(tiny), "--out", str(tmp_path / "e")]
    )
    one_line_error(r, "unknown class name 'knd2'")
    assert "ImageNet" not in r.output and "kind2" in r.output  # this model's own names


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--res", "0"], "--res must be at least 1"),
        (["--height", "0"], "--height must be at least 1"),
        (["--patch", "0"], "--patch must be at least 1"),
    ],
)
def test_flops_refuses_zero_sizes(args, msg):
    one_line_error(runner.invoke(app, ["flops", *args]), msg)


def test_memory_estimate_is_above_a_measured_forward():
    """The refusal must never refuse what fits: the estimate is above the real peak of a forward."""
    code = (
        "import json, torch\nfrom pixeldit_cli import build_model\nfrom pixeldit_cli.memory import forward_bytes\n"
        "m = build_model('PixelDiT-S/4', init=False, num_classes=10).eval()\n"
        "x, t, y = torch.randn(2, 3, 128, 128), torch.rand(2), torch.zeros(2, dtype=torch.long)\n"
        "hwm = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')\nbase = hwm()\n"
        "with torch.inference_mode(): m(x, t, y)\n"
        "print(json.dumps([hwm() - base, forward_bytes(m.config, 128, 128, 2)]))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-1500:]
    measured, estimate = json.loads(p.stdout)
    assert measured > 10e6 and measured <= estimate < 4 * measured


# ---- outputs that cannot be written ---------------------------------------------------------------------


def test_out_pointing_at_a_file_is_one_line_for_every_command(tiny, photo, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    one_line_error(
        runner.invoke(
            app,
            [
                "sample",
                "--ckpt",
                str(tiny),
                "--n",
                "1",
                "--steps",
                "1",
                "--height",
                "16",
                "--width",
                "16",
                "--out",
                str(f),
            ],
        ),
        "is a file, not a folder",
    )
    one_line_error(
        runner.invoke(app, ["edit", str(photo), "--src", "1", "--tgt", "2", "--ckpt", str(tiny), "--out", str(f)]),
        "is a file, not a folder",
    )
    one_line_error(runner.invoke(app, ["convert", str(tiny), str(f / "x.safetensors")]), "a-file")
    assert f.read_text() == "x"


def test_convert_onto_an_existing_folder_even_with_force(tiny, tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    one_line_error(runner.invoke(app, ["convert", str(tiny), str(d), "--force"]), "is a folder")
    assert list(tmp_path.iterdir()) == [d] and not any(d.iterdir())


def test_convert_on_a_full_disk_leaves_nothing(tiny, tmp_path):
    code = (
        "import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from pixeldit_cli.cli import main\nsys.argv = ['pixeldit', 'convert', sys.argv[1], sys.argv[2]]\nmain()"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(tiny), str(tmp_path / "w.safetensors")], capture_output=True, text=True
    )
    assert p.returncode == 1 and "could not write" in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]
    assert list(tmp_path.iterdir()) == []


# ---- inputs that are not what they claim ----------------------------------------------------------------


def test_prompt_file_that_is_not_utf8(fixtures, tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes(b"a red fox\n\xff\xfe broken\n")
    r = runner.invoke(
        app,
        [
            "sample",
            "--ckpt",
            str(fixtures / "official_t2i_small.pth"),
            "--prompts",
            str(p),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    one_line_error(r, "is not UTF-8 text")


def test_pickled_code_refusal_points_to_an_option_that_exists(tiny, photo, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    for cmd in (
        ["sample", "--ckpt", str(path), "--n", "1"],
        ["edit", str(photo), "--src", "1", "--tgt", "2", "--ckpt", str(path), "--out", str(tmp_path / "e")],
    ):
        r = runner.invoke(app, cmd)
        one_line_error(r, "--unsafe-pickle")
    assert "--unsafe-pickle" in runner.invoke(app, ["sample", "--help"], terminal_width=200).output


def test_debug_zero_does_not_show_tracebacks(tiny):
    env = {**os.environ, "PIXELDIT_DEBUG": "0"}
    p = subprocess.run(
        [sys.executable, "-m", "pixeldit_cli", "flops", "--res", "0"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr and "--res must be at least 1" in p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "pixeldit_cli", "flops", "--res", "0"],
        capture_output=True,
        text=True,
        env={**env, "PIXELDIT_DEBUG": "1"},
    )
    assert "Traceback" in p.stderr


# ---- training: bad config, torn logs, truncated and foreign checkpoints ---------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_train import make_folder

    return make_folder(tmp_path_factory.mktemp("data") / "imgs")


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("train.ckpt_every", 0, "train.ckpt_every must be at least 1"),
        ("train.log_every", 0, "train.log_every must be at least 1"),
        ("train.lr", float("nan"), "train.lr must be a finite number"),
        ("train.ema_decay", 1.5, "train.ema_decay must be in [0, 1]"),
        ("sample.steps", 0, "sample.steps must be at least 1"),
    ],
)
def test_train_config_is_checked_before_step_zero(data, tmp_path, key, value, msg):
    from test_train import cfg_for

    from pixeldit_cli.train import train

    with pytest.raises(PixelDiTError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        train(cfg_for(data, **{key: value}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_torn_metrics_line_and_truncated_last_checkpoint(data, tmp_path, capsys):
    from test_train import cfg_for, states_equal

    from pixeldit_cli.train import train

    train(cfg_for(data), tmp_path / "ref", progress=False)  # 4 steps, checkpoints at 2 and 4
    out = tmp_path / "run"
    train(cfg_for(data, **{"train.steps": 4}), out, progress=False)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.1')  # a crash tore the last line
    last = out / "checkpoints" / "last.pt"
    data4 = last.read_bytes()
    last.unlink()  # break the hard link, then truncate
    last.write_bytes(data4[: len(data4) // 3])
    (out / "checkpoints" / "0000004.pt").write_bytes(data4[: len(data4) // 3])
    s = train(cfg_for(data, **{"train.steps": 4}), out, resume="auto", progress=False)
    assert "resuming from 0000002.pt" in capsys.readouterr().out
    assert s["step"] == 4 and s["trained_steps"] == 2
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert states_equal(a["model"], b["model"])  # bit-exact from the fallback
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "kind,msg",
    [
        ("dir", "is a folder"),
        ("safetensors", "weights-only safetensors file, not a training checkpoint"),
        ("pickle", "contains pickled code"),
    ],
)
def test_resume_from_the_wrong_kind_of_file_says_what_it_is(data, tmp_path, tiny, kind, msg):
    from test_train import cfg_for

    from pixeldit_cli.train import train

    if kind == "dir":
        target = tmp_path
    elif kind == "safetensors":
        target = tiny
    else:

        class Evil:
            def __reduce__(self):
                return (print, ("ran",))

        target = tmp_path / "evil.pt"
        torch.save({"format": "pixeldit-train", "x": Evil()}, target)
    with pytest.raises(PixelDiTError, match=msg) as e:
        train(cfg_for(data), tmp_path / "run", resume=str(target), progress=False)
    assert "convert" not in str(e.value)


def test_edit_with_any_steps_uses_the_default_strength(tiny, photo, tmp_path):
    r = runner.invoke(
        app,
        [
            "edit",
            str(photo),
            "--src",
            "1",
            "--tgt",
            "2",
            "--ckpt",
            str(tiny),
            "--steps",
            "10",
            "--out",
            str(tmp_path / "e"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["n_max"] == 7 and res["strength"] == pytest.approx(0.7) and res["edited_steps"] == 7
    r = runner.invoke(
        app,
        [
            "edit",
            str(photo),
            "--src",
            "1",
            "--tgt",
            "2",
            "--ckpt",
            str(tiny),
            "--strength",
            "0.5",
            "--n-max",
            "3",
            "--out",
            str(tmp_path / "e2"),
        ],
    )
    one_line_error(r, "--strength and --n-max both given")


def test_a_converted_checkpoint_samples_with_its_own_training_settings(data, tmp_path):
    """`sample --ckpt X` without --preset uses the resolution and sampling settings X was trained with."""
    from test_train import cfg_for

    from pixeldit_cli.train import train

    run = tmp_path / "run"
    train(cfg_for(data, **{"train.steps": 2, "sample.cfg": 1.5, "sample.steps": 3}), run, progress=False)
    conv = tmp_path / "smoke.safetensors"
    assert runner.invoke(app, ["convert", str(run / "checkpoints" / "last.pt"), str(conv)]).exit_code == 0
    for ckpt in (conv, run / "checkpoints" / "last.pt"):
        r = runner.invoke(
            app, ["sample", "--ckpt", str(ckpt), "--n", "8", "--out", str(tmp_path / ckpt.stem), "--json"]
        )
        assert r.exit_code == 0, r.output
        res = json.loads(r.output)
        s = res["settings"]
        assert (s["height"], s["width"], s["steps"], s["cfg"], s["solver"]) == (16, 16, 3, 1.5, "flowdpm")
        assert res["defaults_from"] == "the checkpoint's training config"


def test_train_out_pointing_at_a_file_fails_before_the_data_loads(tmp_path):
    from test_train import cfg_for

    from pixeldit_cli.train import train

    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(PixelDiTError, match="is a file, not a folder"):
        train(cfg_for(tmp_path / "no-such-data"), f, progress=False)  # the missing data set is never opened


def test_nan_weights_give_one_warning_line(tmp_path, capsys):
    from pixeldit_cli.sampling import SampleJob, run

    m = randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), 0)
    sd = m.state_dict()
    sd["final_layer.linear.bias"][0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(sd, str(path), metadata={"pixeldit_config": json.dumps(m.config.to_dict())})
    run(SampleJob(ckpt=str(path), n=2, out=str(tmp_path / "o"), steps=1, height=16, width=16), progress=False)
    err = capsys.readouterr().err
    assert err.count("NaN or infinite") == 1


def test_edit_on_a_full_disk_leaves_no_partial_outputs(tiny, photo, tmp_path):
    code = (
        "import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))\n"
        "from pixeldit_cli.cli import main\nsys.argv = ['pixeldit', 'edit', *sys.argv[1:]]\nmain()"
    )
    out = tmp_path / "e"
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(photo),
            "--src",
            "1",
            "--tgt",
            "2",
            "--ckpt",
            str(tiny),
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "could not write" in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]
    from pixeldit_cli.io import is_complete_png

    left = sorted(x.name for x in out.iterdir())
    assert "results.json" not in left and not [n for n in left if n.endswith(".tmp")]
    # what is there is whole (the PNGs, and the folder's run.json marker); what did not fit is absent
    assert all(is_complete_png(out / n) for n in left if n != "run.json")
    assert "run.json" not in left or json.loads((out / "run.json").read_text())["format"] == "pixeldit-edit"


def test_tensorboard_without_the_package_is_one_line_before_any_work(data, tmp_path, monkeypatch):
    from test_train import cfg_for

    from pixeldit_cli.train import train

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(PixelDiTError, match="train.tensorboard needs the tensorboard package"):
        train(cfg_for(data, **{"train.tensorboard": True}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def _cli_with_file_limit(nbytes, *argv):
    code = (
        "import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({nbytes}, {nbytes}))\n"
        "from pixeldit_cli.cli import main\nsys.argv = ['pixeldit', *sys.argv[1:]]\nmain()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_train_on_a_full_disk_is_one_line_and_keeps_no_partial_checkpoint(data, tmp_path):
    from test_train import overrides_for

    flags = [str(a) for k, v in overrides_for(data, **{"train.steps": 2}).items() for a in (f"--{k}", v)]
    out = tmp_path / "run"
    p = _cli_with_file_limit(60_000, "train", "--preset", "smoke", "--out", out, *flags)  # a checkpoint is ~1.5 MB
    assert p.returncode == 1 and "could not write" in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]
    ck = out / "checkpoints"
    assert not ck.exists() or not [f for f in ck.iterdir() if f.name.endswith(".pt") or f.name.endswith(".tmp")]


def test_make_ref_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    from pixeldit_cli.npz import write_npz

    rng = np.random.default_rng(0)
    write_npz(tmp_path / "imgs.npz", rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    out = tmp_path / "o"
    out.mkdir()
    p = _cli_with_file_limit(
        20_000, "eval-fid", "--make-ref", tmp_path / "imgs.npz", out / "ref.npz"
    )  # sigma alone is 32 MB
    assert p.returncode == 1 and "could not write" in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]
    assert list(out.iterdir()) == []
