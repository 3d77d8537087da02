"""convert / load_model: official formats built from the documented key layout, round trips, bad input."""

import json
import os

import pytest
import torch
from conftest import randomize
from safetensors import safe_open

from pixeldit_cli import build_model, load_model
from pixeldit_cli.convert import convert
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.models.loading import infer_config


def tiny_c2i(seed):
    return randomize(
        build_model(
            "PixelDiT-S/2", hidden_size=32, num_heads=2, patch_depth=2, pixel_depth=1, pixel_hidden=8, num_classes=5
        ),
        seed,
    )


def tiny_t2i(seed):
    return randomize(
        build_model(
            "PixelDiT-T2I-S/2",
            hidden_size=32,
            num_heads=2,
            patch_depth=2,
            pixel_depth=1,
            pixel_hidden=4,
            pixel_attn_hidden=24,
            pixel_heads=3,
            text_dim=12,
            text_len=6,
        ),
        seed,
    )


def lightning_ckpt(path, raw, ema):
    """The official c2i Lightning layout (docs/checkpoints.md#c2i): raw, EMA and the nested REPA projector."""
    D = raw.config.hidden_size
    sd = {f"denoiser.{k}": v for k, v in raw.state_dict().items()}
    sd.update({f"ema_denoiser.{k}": v for k, v in ema.state_dict().items()})
    for i, (o, n) in zip((0, 2, 4), [(D, D), (D, D), (16, D)]):
        sd[f"diffusion_trainer.proj.0.{i}.weight"] = torch.randn(o, n)
        sd[f"diffusion_trainer.proj.0.{i}.bias"] = torch.randn(o)
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.5.0",
            "state_dict": sd,
            "loops": {},
            "optimizer_states": [],
            "lr_schedulers": [],
        },
        path,
    )


def c2i_inputs(n=2, H=8, W=12):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 3, H, W, generator=g), torch.tensor([0.2, 0.9])[:n], torch.tensor([1, 5])[:n]


def test_official_c2i_roundtrip_ema_and_raw(tmp_path):
    raw, ema = tiny_c2i(1), tiny_c2i(2)
    src = tmp_path / "official.ckpt"
    lightning_ckpt(src, raw, ema)
    x, t, y = c2i_inputs()
    for weights, module in (("ema", ema), ("raw", raw)):
        dst = tmp_path / f"{weights}.safetensors"
        rep = convert(src, dst, weights=weights)
        assert len(rep.used) == len(module.state_dict())
        assert len(rep.dropped["training only (REPA projector)"]) == 6
        assert len(rep.dropped["the other weights"]) == len(module.state_dict())
        loaded = load_model(dst)
        assert loaded.config == module.config
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x, t, y), module(x, t, y))  # same tensors, same code: bit-identical
        with safe_open(str(dst), "pt") as f:
            meta = f.metadata()
        assert json.loads(meta["pixeldit_config"])["num_classes"] == 5 and meta["weights"] == weights


def test_official_t2i_roundtrip_and_flat_fsdp_form(tmp_path):
    m = tiny_t2i(3)
    sd = {f"core.{k}": v for k, v in m.state_dict().items()}
    sd.update({"_repa_projector.0.weight": torch.randn(8, 32), "_repa_projector.0.bias": torch.randn(8)})
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "t2i.pth")
    torch.save(sd, tmp_path / "t2i_fsdp.bin")  # the FSDP form is the flat dict
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(1, 3, 4, 8, generator=g), torch.tensor([640.0]), torch.randn(1, 9, 12, generator=g)
    for name in ("t2i.pth", "t2i_fsdp.bin"):
        rep = convert(tmp_path / name, tmp_path / f"{name}.safetensors")
        assert rep.dropped["training only (REPA projector)"] == ["_repa_projector.0.weight", "_repa_projector.0.bias"]
        loaded = load_model(tmp_path / f"{name}.safetensors")
        with torch.no_grad():
            assert torch.equal(loaded(x, t, y), m(x, t, y))


def test_training_checkpoint_roundtrip(tmp_path):
    raw, ema = tiny_c2i(4), tiny_c2i(5)
    ck = {
        "format": "pixeldit-train",
        "model": raw.state_dict(),
        "ema": ema.state_dict(),
        "model_config": raw.config.to_dict(),
        "step": 7,
        "optimizer": {},
        "config": {},
    }
    torch.save(ck, tmp_path / "last.pt")
    x, t, y = c2i_inputs()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "last.pt")(x, t, y), ema(x, t, y))
        assert torch.equal(load_model(tmp_path / "last.pt", weights="raw")(x, t, y), raw(x, t, y))
    convert(tmp_path / "last.pt", tmp_path / "out.safetensors")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "out.safetensors")(x, t, y), ema(x, t, y))


def test_infer_config_from_shapes_of_released_layout(fixtures):
    """Architecture of the real XL/16 and T2I files from their key listings' shapes alone."""

    def shapes(path, prefix):
        sd = {}
        for line in path.read_text().splitlines():
            name, shape = line.split(" ", 1)
            if name.startswith(prefix):
                sd[name[len(prefix) :]] = torch.empty(
                    tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), device="meta"
                )
        return sd

    c = infer_config(shapes(fixtures / "keys_c2i_xl256.txt", "ema_denoiser."))
    assert (c.kind, c.patch_size, c.hidden_size, c.num_heads, c.patch_depth, c.pixel_depth, c.num_classes) == (
        "c2i",
        16,
        1152,
        16,
        26,
        4,
        1000,
    )
    t = infer_config(shapes(fixtures / "keys_t2i_1024.txt", "core."))
    assert (
        t.kind,
        t.hidden_size,
        t.num_heads,
        t.patch_depth,
        t.pixel_depth,
        t.pixel_attn_hidden,
        t.pixel_heads,
        t.mlp_hidden,
        t.text_dim,
        t.text_len,
    ) == ("t2i", 1536, 24, 14, 2, 1152, 16, 4096, 2304, 300)


# ---- bad input: one clear error, nothing written --------------------------------------------------------


@pytest.fixture
def official(tmp_path):
    src = tmp_path / "official.ckpt"
    lightning_ckpt(src, tiny_c2i(1), tiny_c2i(2))
    return src


def test_refuses_existing_destination(official, tmp_path):
    dst = tmp_path / "exists.safetensors"
    dst.write_bytes(b"precious")
    with pytest.raises(PixelDiTError, match="already exists.*--force"):
        convert(official, dst)
    assert dst.read_bytes() == b"precious"
    # --force replaces pixeldit's own outputs only: a file it did not write is kept (data safety)
    with pytest.raises(PixelDiTError, match="not written by pixeldit"):
        convert(official, dst, force=True)
    assert dst.read_bytes() == b"precious"
    ours = tmp_path / "ours.safetensors"
    convert(official, ours, weights="raw")
    convert(official, ours, force=True)
    assert load_model(ours).config.num_classes == 5 and load_model(ours).key_report.weights == "ema"


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(PixelDiTError, match="is not a checkpoint"):
        convert(bad, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_truncated_checkpoint(official, tmp_path):
    cut = tmp_path / "cut.ckpt"
    data = official.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PixelDiTError, match="truncated or"):
        convert(cut, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_missing_and_wrong_shape_tensors_are_named(official, tmp_path):
    ck = torch.load(official, weights_only=True)
    del ck["state_dict"]["ema_denoiser.patch_blocks.1.mlp.w2.weight"]
    torch.save(ck, tmp_path / "missing.ckpt")
    with pytest.raises(PixelDiTError, match=r"missing 1 tensor\(s\): patch_blocks.1.mlp.w2.weight"):
        convert(tmp_path / "missing.ckpt", tmp_path / "o.safetensors")
    ck = torch.load(official, weights_only=True)
    ck["state_dict"]["ema_denoiser.pixel_blocks.0.mlp.fc1.bias"] = torch.zeros(7)
    torch.save(ck, tmp_path / "shape.ckpt")
    with pytest.raises(PixelDiTError, match=r"wrong shape: pixel_blocks.0.mlp.fc1.bias \(7,\) \(expected \(32,\)\)"):
        convert(tmp_path / "shape.ckpt", tmp_path / "o.safetensors")
    ck = torch.load(official, weights_only=True)
    ck["state_dict"]["something_else.weight"] = torch.zeros(2)
    torch.save(ck, tmp_path / "extra.ckpt")
    with pytest.raises(PixelDiTError, match="unexpected tensor.*something_else.weight"):
        convert(tmp_path / "extra.ckpt", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


class Payload:  # a pickle that needs code to load
    def __reduce__(self):
        return (dict, ({"state_dict": {}},))


class NeedsCode:
    pass


def test_code_pickles_refused_unless_unsafe(official, tmp_path):
    ck = torch.load(official, weights_only=True)
    ck["hyper_parameters"] = NeedsCode()
    torch.save(ck, tmp_path / "code.ckpt")
    with pytest.raises(PixelDiTError, match="pickled code.*--unsafe-pickle"):
        convert(tmp_path / "code.ckpt", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    convert(tmp_path / "code.ckpt", tmp_path / "o.safetensors", unsafe_pickle=True)
    assert load_model(tmp_path / "o.safetensors").config.hidden_size == 32


def test_bad_paths(tmp_path):
    with pytest.raises(PixelDiTError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(PixelDiTError, match="is a folder without config.json"):
        load_model(tmp_path)
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(PixelDiTError, match="not a checkpoint dict"):
        load_model(tmp_path / "list.pt")


def test_convert_is_byte_identical_across_processes_and_world_readable(fixtures, tmp_path):
    """safetensors writes its metadata from a hash map (order varies per process); ours is sorted."""
    import stat
    import subprocess
    import sys

    outs = []
    for i in range(2):
        dst = tmp_path / f"c{i}.safetensors"
        p = subprocess.run(
            [sys.executable, "-m", "pixeldit_cli", "convert", str(fixtures / "official_c2i_small.ckpt"), str(dst)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": str(i)},
        )
        assert p.returncode == 0, p.stderr[-1500:]
        outs.append(dst)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert stat.S_IMODE(outs[0].stat().st_mode) == 0o644
    import json
    import struct

    raw = outs[0].read_bytes()
    meta = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]  # dict keeps the file's order
    assert list(meta) == sorted(meta)


@pytest.mark.parametrize("shard", [None, "40KB"])
def test_hf_folder_round_trip(fixtures, tmp_path, shard):
    """convert --format hf writes config.json + model.safetensors (sharded with an index above the size);
    load_model and every --ckpt read the folder back to the same network."""
    from typer.testing import CliRunner

    from pixeldit_cli.cli import app

    src = fixtures / "official_c2i_small.ckpt"
    dst = tmp_path / "pixeldit-small"
    args = ["convert", str(src), str(dst), "--format", "hf"] + (["--max-shard-size", shard] if shard else [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    conf = json.loads((dst / "config.json").read_text())
    assert conf["model_type"] == "pixeldit" and conf["architectures"] == ["PixelDiT"] and conf["weights"] == "ema"
    if shard:
        index = json.loads((dst / "model.safetensors.index.json").read_text())
        files = sorted(set(index["weight_map"].values()))
        assert len(files) > 1 and all((dst / f).is_file() for f in files) and not (dst / "model.safetensors").exists()
    else:
        assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    a, b = load_model(src), load_model(dst)
    assert a.config == b.config
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    r = CliRunner().invoke(
        app,
        [
            "sample",
            "--ckpt",
            str(dst),
            "--n",
            "1",
            "--steps",
            "1",
            "--height",
            "8",
            "--width",
            "8",
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert r.exit_code == 0, r.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
