"""Data safety: pixeldit never deletes or overwrites what it did not write, never mixes two checkpoints'
images in one folder, never reads outside a model folder, and turns every crafted file and absurd number
into one line (the fault campaign's cases, each built here)."""

import fcntl
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize
from safetensors.torch import save_file
from typer.testing import CliRunner

from pixeldit_cli import build_model, load_model
from pixeldit_cli.cli import app
from pixeldit_cli.convert import convert
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.sampling import SampleJob, run

runner = CliRunner()


def tiny_net(seed=0):
    return randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), seed)


def save_tiny(path, seed=0, **meta):
    net = tiny_net(seed)
    md = {"format": "pixeldit", "pixeldit_config": json.dumps(net.config.to_dict()), **meta}
    save_file(net.state_dict(), str(path), metadata=md)
    return path


@pytest.fixture
def ckpt(tmp_path):
    return save_tiny(tmp_path / "tiny.safetensors")


def job(ckpt, out, **kw):
    return SampleJob(
        **{
            "ckpt": str(ckpt),
            "n": 2,
            "out": str(out),
            "solver": "euler",
            "steps": 2,
            "cfg": 1.0,
            "height": 16,
            "width": 16,
            "format": "npz",
            "classes": (3,),
            **kw,
        }
    )


def cli(*args):
    """The installed command in a fresh process (what a user sees: one line or a traceback)."""
    return subprocess.run([sys.executable, "-m", "pixeldit_cli", *map(str, args)], capture_output=True, text=True)


def contents(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- convert --force: only pixeldit's own outputs, never a folder holding the source or the cwd ----------


def test_convert_hf_force_never_empties_a_users_folder(ckpt, tmp_path):
    a = tmp_path / "a"
    (a / "b").mkdir(parents=True)
    src = a / "src.safetensors"
    src.write_bytes(ckpt.read_bytes())
    (a / "notes.txt").write_text("mine")
    before = contents(a)
    p = subprocess.run(
        [sys.executable, "-m", "pixeldit_cli", "convert", str(src), "..", "--format", "hf", "--force"],
        cwd=a / "b",
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr and "contains the source" in p.stderr
    p = cli("convert", src, a, "--format", "hf", "--force")  # models/mine.safetensors -> models
    assert p.returncode == 1 and "contains the source" in p.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    p = cli("convert", src, other, "--format", "hf", "--force")
    assert p.returncode == 1 and "not a folder written by `pixeldit convert --format hf`" in p.stderr
    assert (other / "keep.txt").read_text() == "x" and contents(a) == before


def test_convert_to_dot_is_one_line(ckpt, tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "pixeldit_cli", "convert", str(ckpt), ".", "--format", "hf", "--force"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert ckpt.exists()


def test_convert_hf_force_replaces_its_own_folder_but_not_one_with_a_user_file(ckpt, tmp_path):
    dst = tmp_path / "m"
    convert(ckpt, dst, format="hf")
    convert(save_tiny(tmp_path / "t2.safetensors", seed=5), dst, format="hf", force=True)
    assert torch.equal(
        load_model(dst).state_dict()["final_layer.linear.weight"],
        load_model(tmp_path / "t2.safetensors").state_dict()["final_layer.linear.weight"],
    )
    (dst / "mine.txt").write_text("keep")
    with pytest.raises(PixelDiTError, match=r"files pixeldit did not write \(mine.txt\)"):
        convert(ckpt, dst, format="hf", force=True)
    assert (dst / "mine.txt").read_text() == "keep" and (dst / "config.json").exists()


def test_convert_force_keeps_a_file_pixeldit_did_not_write(ckpt, tmp_path):
    dst = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(dst))  # somebody else's safetensors
    before = dst.read_bytes()
    with pytest.raises(PixelDiTError, match="not written by pixeldit"):
        convert(ckpt, dst, force=True)
    assert dst.read_bytes() == before


# ---- sample / train / edit into folders pixeldit did not make --------------------------------------------


def test_sample_refuses_a_folder_of_user_files_and_deletes_nothing(ckpt, tmp_path):
    out = tmp_path / "o"
    (out / "parts").mkdir(parents=True)
    for name, data in {
        "grid.png": b"my grid",
        "results.json": b"{}",
        ".draft.tmp": b"draft",
        "parts/x.part": b"p",
    }.items():
        (out / name).write_bytes(data)
    before = contents(out)
    with pytest.raises(PixelDiTError, match="pixeldit did not write"):
        run(job(ckpt, out), progress=False)
    assert contents(out) == before


def test_stale_cleanup_takes_only_pixeldits_temporaries(ckpt, tmp_path):
    out = tmp_path / "o"
    run(job(ckpt, out, n=1), progress=False)
    (out / ".draft.tmp").write_bytes(b"user")  # a user's hidden file
    (out / ".grid.png.pixeldit-999999.tmp").write_bytes(b"stale")  # what a killed writer leaves
    (out / "parts").mkdir()
    (out / "parts" / "x.part").write_bytes(b"user part")
    run(job(ckpt, out, n=2), progress=False)
    assert (out / ".draft.tmp").read_bytes() == b"user" and not (out / ".grid.png.pixeldit-999999.tmp").exists()
    assert (out / "parts" / "x.part").read_bytes() == b"user part"


def test_train_refuses_a_folder_of_user_files(tmp_path):
    from test_train import cfg_for, make_folder

    from pixeldit_cli.train import train

    data = make_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "loss.png", "metrics.jsonl"):
        (out / name).write_text(f"my {name}\n")
    before = contents(out)
    with pytest.raises(PixelDiTError, match="pixeldit did not write"):
        train(cfg_for(data), out, progress=False)
    assert contents(out) == before


def test_train_resume_must_keep_seed_and_batch_and_says_when_there_is_nothing_to_do(tmp_path, capsys):
    from test_train import cfg_for, make_folder

    from pixeldit_cli.train import train

    data = make_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    train(cfg_for(data, **{"train.steps": 2}), out, progress=False)
    assert json.loads((out / "run.json").read_text())["format"] == "pixeldit-train"
    with pytest.raises(PixelDiTError, match="train.seed 0; this command asks for 7"):
        train(cfg_for(data, **{"train.steps": 4, "train.seed": 7}), out, progress=False)
    capsys.readouterr()
    r = train(cfg_for(data, **{"train.steps": 1}), out, progress=False)
    assert r["trained_steps"] == 0 and "nothing to train" in capsys.readouterr().out


# ---- content-keyed jobs -------------------------------------------------------------------------------


def test_a_changed_checkpoint_is_refused_then_overwrite_replaces(ckpt, tmp_path):
    out = tmp_path / "o"
    first = run(job(ckpt, out), progress=False)
    save_tiny(ckpt, seed=9)  # retrained / converted again under the same name
    with pytest.raises(PixelDiTError, match="another checkpoint.*--overwrite"):
        run(job(ckpt, out), progress=False)
    again = run(job(ckpt, out, overwrite=True), progress=False)
    fresh = run(job(ckpt, tmp_path / "fresh"), progress=False)
    assert again["generated_this_run"] == 2 and again["checkpoint_sha256"] != first["checkpoint_sha256"]
    a, b = np.load(out / "samples.npz")["arr_0"], np.load(tmp_path / "fresh" / "samples.npz")["arr_0"]
    assert np.array_equal(a, b) and fresh["checkpoint_sha256"] == again["checkpoint_sha256"]


def test_job_identity_holds_the_resolved_precision_and_device(ckpt, tmp_path):
    run(job(ckpt, tmp_path / "o"), progress=False)
    rj = json.loads((tmp_path / "o" / "run.json").read_text())
    assert rj["format"] == "pixeldit-sample" and rj["precision"] == "fp32" and rj["device_type"] == "cpu"
    assert len(rj["checkpoint_sha256"]) == 64


def test_a_second_process_on_the_same_folder_is_refused(ckpt, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    fd = os.open(out / ".pixeldit.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242")
    try:
        with pytest.raises(PixelDiTError, match=r"another pixeldit process \(pid 4242\) is writing to"):
            run(job(ckpt, out), progress=False)
    finally:
        os.close(fd)
    run(job(ckpt, out), progress=False)  # once the other one is gone
    assert not (out / ".pixeldit.lock").exists()


# ---- model folders: every shard inside, a digest in results.json ------------------------------------------


@pytest.fixture
def folder(ckpt, tmp_path):
    dst = tmp_path / "m"
    convert(ckpt, dst, format="hf", max_shard_size="20KB")
    return dst


@pytest.mark.parametrize("target", ["../outside/x.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_entries_outside_the_folder_are_refused(folder, tmp_path, target):
    (tmp_path / "outside").mkdir(exist_ok=True)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = target
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(PixelDiTError, match="not a file inside"):
        load_model(folder)


def test_a_shard_linked_from_outside_is_refused(folder, tmp_path):
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    outside = tmp_path / "elsewhere.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    with pytest.raises(PixelDiTError, match="link to a file outside"):
        load_model(folder)


def test_folder_checkpoints_get_a_digest_that_follows_the_shards(folder, tmp_path):
    r = run(job(folder, tmp_path / "o"), progress=False)
    assert r["checkpoint_sha256"] and len(r["checkpoint_sha256"]) == 64
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    shard.write_bytes(bytes(data))
    with pytest.raises(PixelDiTError, match="another checkpoint"):
        run(job(folder, tmp_path / "o"), progress=False)


@pytest.mark.parametrize(
    "index, message",
    [
        ("not json", "is not valid JSON"),
        ("[1, 2]", "not an object"),
        ('{"metadata": {}}', "has no weight_map"),
        ('{"weight_map": {"a": ["x"]}}', "every weight_map value must be a shard file name"),
    ],
)
def test_malformed_index_files_are_one_line(folder, index, message):
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(PixelDiTError, match=message):
        load_model(folder)


@pytest.mark.parametrize("config", ['"a string"', "[1]", "{not json"])
def test_malformed_config_json_is_one_line(folder, config):
    (folder / "config.json").write_text(config)
    with pytest.raises(PixelDiTError):
        load_model(folder)


# ---- crafted safetensors metadata and training checkpoints ------------------------------------------------


def _cfg(**kw):
    return json.dumps({**tiny_net().config.to_dict(), **kw})


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"pixeldit_config": "{bad"}, "'pixeldit_config' is not valid JSON"),
        ({"pixeldit_config": "[1, 2]"}, "'pixeldit_config' is a JSON list"),
        ({"pixeldit_config": _cfg(num_heads=0)}, "num_heads must be positive"),
        ({"pixeldit_config": _cfg(kind="evil")}, "kind must be one of"),
        ({"pixeldit_config": _cfg(patch_size="2")}, "patch_size must be an integer"),
        ({"class_names": "{bad"}, "'class_names' is not valid JSON"),
        ({"class_names": '{"a": 1}'}, "'class_names' is a JSON dict"),
        ({"class_names": json.dumps([str(i) for i in range(11)])}, "11 class_names for a model with 10 classes"),
        ({"class_names": '"notalist"'}, "'class_names' is a JSON str"),
        ({"train_config": "{bad"}, "'train_config' is not valid JSON"),
    ],
)
def test_crafted_metadata_is_one_line_naming_file_and_field(tmp_path, meta, message):
    path = save_tiny(tmp_path / "m.safetensors", **meta)
    with pytest.raises(PixelDiTError, match=message) as e:
        load_model(path)
    assert "m.safetensors" in str(e.value)
    with pytest.raises(PixelDiTError, match=message):  # convert checks what it would copy through
        convert(path, tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


def test_class_names_shorter_than_the_table_sample_and_write_results(tmp_path):
    path = save_tiny(tmp_path / "m.safetensors", class_names=json.dumps(["zero", "one", "two"]))
    r = run(job(path, tmp_path / "o", classes=(1, 7)), progress=False)
    assert r["class_names"] == ["one", "7"] and (tmp_path / "o" / "results.json").exists()


def test_training_checkpoints_missing_entries_are_one_line(tmp_path):
    net = tiny_net()
    base = {
        "format": "pixeldit-train",
        "model": net.state_dict(),
        "ema": net.state_dict(),
        "model_config": net.config.to_dict(),
    }
    for drop in ("ema", "model_config"):
        path = tmp_path / f"no-{drop}.pt"
        torch.save({k: v for k, v in base.items() if k != drop}, path)
        with pytest.raises(PixelDiTError, match=f"without its '{drop}' entry"):
            load_model(path)
    path = tmp_path / "heads0.pt"
    torch.save({**base, "model_config": {**net.config.to_dict(), "num_heads": 0}}, path)
    with pytest.raises(PixelDiTError, match="num_heads must be positive"):
        load_model(path)


def test_a_torch_zip_named_safetensors_and_a_fifo_are_one_line(tmp_path):
    z = tmp_path / "renamed.safetensors"
    torch.save(tiny_net().state_dict(), z)
    assert zipfile.is_zipfile(z)
    assert load_model(z).config.num_classes == 10  # read for what it is, whatever its name
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(PixelDiTError, match="not a regular file"):
        load_model(fifo)


# ---- numbers, and what --json prints for an error ----------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", str(2**64)], "--seed must be at most"),
        (["--n", str(10**12)], "--n must be at most"),
        (["--steps", str(10**9)], "--steps must be at most"),
        (["--cfg", "1e308"], "--cfg must be in"),
        (["--shift", "1e-320"], "--shift must be"),
        (["--nproc", "0"], "--nproc must be at least 1"),
    ],
)
def test_sample_numbers_out_of_bounds_are_one_line(ckpt, tmp_path, args, message):
    out = tmp_path / "o"
    r = runner.invoke(app, ["sample", "--ckpt", str(ckpt), "--out", str(out), "--height", "16", "--width", "16", *args])
    assert r.exit_code == 1 and message in r.output and r.exception is None or isinstance(r.exception, SystemExit), (
        r.output
    )
    assert not out.exists()


def test_edit_num_seeds_bound_and_json_errors_are_json(ckpt, tmp_path):
    from PIL import Image

    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    r = runner.invoke(
        app,
        [
            "edit",
            str(img),
            "--ckpt",
            str(ckpt),
            "--src",
            "0",
            "--tgt",
            "1",
            "--num-seeds",
            str(10**9),
            "--out",
            str(tmp_path / "e"),
            "--json",
        ],
    )
    assert r.exit_code == 1 and not (tmp_path / "e").exists()
    first = r.stdout.splitlines()[0]
    assert json.loads(first) == {
        "error": "--num-seeds must be at most 10,000, got 1,000,000,000",
        "hint": "is it a typo?",
    }


# ---- edit folders --------------------------------------------------------------------------------------------


def test_rejected_edit_input_leaves_no_folder_and_another_edit_is_refused(ckpt, tmp_path):
    from PIL import Image

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "e"
    r = runner.invoke(app, ["edit", str(bad), "--ckpt", str(ckpt), "--src", "0", "--tgt", "1", "--out", str(out)])
    assert r.exit_code == 1 and not out.exists()
    img = tmp_path / "in.png"
    Image.fromarray((np.arange(16 * 16 * 3) % 251).astype(np.uint8).reshape(16, 16, 3)).save(img)
    base = ["edit", str(img), "--ckpt", str(ckpt), "--src", "0", "--steps", "4", "--out", str(out)]
    assert runner.invoke(app, [*base, "--tgt", "1"]).exit_code == 0
    first = (out / "edited.png").read_bytes()
    r = runner.invoke(app, [*base, "--tgt", "2"])
    assert (
        r.exit_code == 1
        and "holds another edit (different tgt)" in r.output
        and (out / "edited.png").read_bytes() == first
    )
    assert runner.invoke(app, [*base, "--tgt", "2", "--overwrite"]).exit_code == 0
    assert json.loads((out / "run.json").read_text())["tgt"] == "2"


def test_an_edit_that_changes_nothing_says_so(ckpt, tmp_path):
    from PIL import Image

    img = tmp_path / "in.png"
    Image.fromarray((np.arange(16 * 16 * 3) % 251).astype(np.uint8).reshape(16, 16, 3)).save(img)
    # src == tgt with equal CFG: FlowEdit's velocity difference is exactly zero, the input comes back bit for bit
    r = runner.invoke(
        app,
        [
            "edit",
            str(img),
            "--ckpt",
            str(ckpt),
            "--src",
            "3",
            "--tgt",
            "3",
            "--src-cfg",
            "2",
            "--tgt-cfg",
            "2",
            "--steps",
            "4",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert r.exit_code == 0 and "to the source MSE 0.000000  SSIM 1.0000" in r.output and "unchanged" in r.output
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["to_source"] == [{"seed": 0, "mse": 0.0, "ssim": 1.0, "unchanged": True}]


# ---- the rest of the campaign: files the toolkit reads, and where it writes ----------------------------------


def test_a_decompression_bomb_header_and_exif_rotation(tmp_path):
    from PIL import Image

    from pixeldit_cli.io import read_image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (1, 1)).save(bomb)
    raw = bytearray(bomb.read_bytes())
    raw[16:24] = (40000).to_bytes(4, "big") + (40000).to_bytes(4, "big")  # IHDR claims 40000x40000 (CRC aside)
    bomb.write_bytes(bytes(raw))
    with pytest.raises(PixelDiTError):
        read_image(bomb)
    turned = tmp_path / "turned.jpg"
    a = np.zeros((8, 16, 3), np.uint8)
    a[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(a).save(turned, exif=exif, quality=100)
    img, note = read_image(turned)
    assert tuple(img.shape) == (3, 16, 8) and "EXIF orientation applied" in note
    assert img[:, :8].float().mean() > 200 and img[:, 8:].float().mean() < 50  # the white half is now on top


def test_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch):
    from PIL import Image

    from pixeldit_cli.io import read_image

    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over 2x the limit, Pillow's bomb error
    with pytest.raises(PixelDiTError, match="claims to be a huge image"):
        read_image(path)


def test_plot_never_overwrites_its_input_and_skips_foreign_lines(tmp_path):
    from pixeldit_cli.plot import plot_metrics

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = run_dir / "metrics.jsonl"
    log.write_text('[1, 2]\n{"step": 1, "loss": 0.5, "lr": 1e-4, "grad_norm": 1.0, "grad_clip": 1.0}\n"text"\n')
    before = log.read_bytes()
    for bad in (log, run_dir / "config.yaml"):
        with pytest.raises(PixelDiTError, match="not a .png file name"):
            plot_metrics(run_dir, bad)
    (run_dir / "mine.png").write_text("not a png")
    with pytest.raises(PixelDiTError, match="is not a PNG"):
        plot_metrics(run_dir, run_dir / "mine.png")
    assert plot_metrics(run_dir).name == "loss.png" and log.read_bytes() == before  # one point is drawn


def test_a_list_yaml_preset_and_a_corrupt_feature_cache(tmp_path):
    from pixeldit_cli.config import load_preset
    from pixeldit_cli.metrics.evaluate import _read_cache

    p = tmp_path / "p.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(PixelDiTError, match="holds a YAML list, not a mapping"):
        load_preset(str(p))
    cache = tmp_path / "ref-x.npz"
    cache.write_bytes(b"PK\x03\x04 torn")
    assert _read_cache(cache) == {}  # rebuilt by the caller, not fatal


def test_an_object_array_in_an_npz_is_one_line(tmp_path):
    from pixeldit_cli.npz import NpzImages

    path = tmp_path / "s.npz"
    np.savez(path, arr_0=np.zeros((2, 8, 8, 3), np.uint8), arr_1=np.array([1, "x"], dtype=object))
    with pytest.raises(PixelDiTError, match="'arr_1' is not a plain numeric array"):
        NpzImages(path).array("arr_1")


def test_a_zero_byte_image_in_a_training_folder_is_one_line(tmp_path):
    from test_train import make_folder

    from pixeldit_cli.train.data import ImageFolder

    root = make_folder(tmp_path / "imgs")
    (root / "class_0" / "zzz.png").write_bytes(b"")
    with pytest.raises(PixelDiTError, match="1 empty image file"):
        ImageFolder(root, 16)


def test_a_non_ascii_checkpoint_path_under_the_c_locale(ckpt, tmp_path):
    odd = tmp_path / "modèle-ü.safetensors"
    odd.write_bytes(ckpt.read_bytes())
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pixeldit_cli import load_model; print(load_model(sys.argv[1]).config.num_classes)",
            str(odd),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0 and p.stdout.strip() == "10", p.stderr[-800:]


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (root can mount one here; a test that cannot is skipped, not passed)."""
    d = tmp_path / "ro"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield d
    subprocess.run(["umount", str(d)], check=False)


def test_writes_on_a_read_only_mount_are_one_line(tmp_path, read_only_dir, ckpt):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')
    p = cli("plot", run_dir, "--out", read_only_dir / "c.png")
    assert p.returncode == 1 and "Traceback" not in p.stderr and "not writable" in p.stderr, p.stderr
    p = cli(
        "sample",
        "--ckpt",
        ckpt,
        "--out",
        read_only_dir / "o",
        "--n",
        "1",
        "--steps",
        "1",
        "--height",
        "16",
        "--width",
        "16",
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr and "Read-only file system" in p.stderr, p.stderr


# ---- first contact: training checks what it can before building anything -------------------------------------


def test_train_refuses_a_missing_repa_encoder_and_what_cannot_fit_before_building(tmp_path, monkeypatch):
    from pixeldit_cli.config import apply_overrides, load_preset
    from pixeldit_cli.models import registry
    from pixeldit_cli.train import train

    built = []
    real = registry.build_model
    monkeypatch.setattr("pixeldit_cli.train.loop.build_model", lambda *a, **k: built.append(1) or real(*a, **k))
    cfg = apply_overrides(load_preset("xl256"), {"data.path": str(tmp_path), "train.repa_encoder": ""})
    with pytest.raises(PixelDiTError, match="no DINOv2 encoder was given"):
        train(cfg, tmp_path / "a", progress=False)
    cfg = apply_overrides(cfg, {"train.repa_encoder": str(tmp_path / "no-such-dinov2")})
    with pytest.raises(PixelDiTError, match="neither a local folder nor in the Hugging Face cache"):
        train(cfg, tmp_path / "b", progress=False)
    monkeypatch.setattr("pixeldit_cli.memory.available_bytes", lambda device: 9 * 1024**3)  # a 9 GB machine
    cfg = apply_overrides(cfg, {"train.repa_weight": "0"})
    with pytest.raises(PixelDiTError, match=r"797M-parameter model needs at least 1[0-9]\.\d GB .* has 9.0 GB free"):
        train(cfg, tmp_path / "c", progress=False)
    assert built == [] and not any((tmp_path / n).exists() for n in "abc")


def test_mistyped_flags_are_named_as_flags(ckpt):
    r = runner.invoke(app, ["sample", "--ckpt", str(ckpt), "--step", "5"])
    assert r.exit_code == 1 and "no such option --step (did you mean --steps" in r.output
    r = runner.invoke(app, ["eval-fid", "a.npz", "b.npz", "--sqrt", "eigh"])
    assert r.exit_code == 1 and "did you mean --sqrtm?" in r.output
    r = runner.invoke(app, ["sample", "--ckpt", str(ckpt), "--class", "3", "--classes", "balanced"])
    assert r.exit_code == 1 and "--class and --classes balanced both given" in r.output


def test_classes_lists_the_checkpoints_names(tmp_path):
    path = save_tiny(tmp_path / "m.safetensors", class_names=json.dumps(["zero", "one"]))
    r = runner.invoke(app, ["classes", str(path), "--json"])
    d = json.loads(r.stdout)
    assert d["num_classes"] == 10 and d["classes"][:3] == [
        {"id": 0, "name": "zero"},
        {"id": 1, "name": "one"},
        {"id": 2, "name": "2"},
    ]


def test_progress_in_a_log_file_is_plain_lines(ckpt, tmp_path):
    p = cli(
        "sample",
        "--ckpt",
        ckpt,
        "--n",
        "40",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--solver",
        "euler",
        "--height",
        "16",
        "--width",
        "16",
        "--out",
        tmp_path / "o",
    )
    lines = [l for l in p.stderr.splitlines() if l.startswith("sampling ")]
    assert p.returncode == 0 and len(lines) == 20 and lines[-1].startswith("sampling 40/40 (100%)"), p.stderr


def test_results_class_names_follow_the_class_order(tmp_path):
    names = [f"c{i}" for i in range(10)]
    path = save_tiny(tmp_path / "m.safetensors", class_names=json.dumps(names))
    r = run(job(path, tmp_path / "o", classes=(7, 2, 5)), progress=False)
    assert list(r["settings"]["classes"]) == [7, 2, 5] and r["class_names"] == ["c7", "c2", "c5"]


def test_make_ref_never_overwrites_its_input_or_a_foreign_file(tmp_path):
    from pixeldit_cli.metrics.evaluate import make_reference

    src = tmp_path / "s.npz"
    np.savez(src, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    before = src.read_bytes()
    with pytest.raises(PixelDiTError, match="is the source itself"):
        make_reference(src, src, force=True)
    other = tmp_path / "o.npz"
    np.savez(other, arr_0=np.ones((1, 8, 8, 3), np.uint8))
    with pytest.raises(PixelDiTError, match="not an ADM reference batch"):
        make_reference(src, other, force=True)
    assert src.read_bytes() == before and np.load(other)["arr_0"].sum() == 8 * 8 * 3


def test_preset_names_complete_in_the_shell():
    from pixeldit_cli.cli import _preset_names

    assert "xl256" in _preset_names("") and _preset_names("xl2") == ["xl256"] and "smoke" not in _preset_names("xl")


def test_killing_the_nproc_launcher_ends_its_workers(ckpt, tmp_path):
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pixeldit_cli",
            "sample",
            "--ckpt",
            str(ckpt),
            "--nproc",
            "2",
            "--n",
            "100000",
            "--batch-size",
            "1",
            "--steps",
            "50",
            "--height",
            "16",
            "--width",
            "16",
            "--format",
            "npz",
            "--out",
            str(tmp_path / "o"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def workers():
        out = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        return [int(x) for x in out]

    deadline = time.time() + 60
    while time.time() < deadline and len(workers()) < 2:
        time.sleep(0.2)
    kids = workers()
    assert len(kids) >= 2
    time.sleep(2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 20
    alive = kids
    while time.time() < deadline and alive:
        time.sleep(0.2)
        alive = [k for k in kids if os.path.exists(f"/proc/{k}") and "zombie" not in open(f"/proc/{k}/status").read()]
    assert alive == []


def test_two_converts_to_one_destination(ckpt, tmp_path):
    dst = tmp_path / "x.safetensors"
    fd = os.open(tmp_path / ".x.safetensors.pixeldit.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(PixelDiTError, match="another pixeldit process .* is writing to .*x.safetensors"):
            convert(ckpt, dst)
    finally:
        os.close(fd)
    convert(ckpt, dst)
    assert dst.exists() and not (tmp_path / ".x.safetensors.pixeldit.lock").exists()
