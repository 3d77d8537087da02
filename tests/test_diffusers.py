"""diffusers: export with `convert --format diffusers`, load by both routes, the same images as `pixeldit sample`.

The c2i case is the official-format fixture; the T2I case a tiny T2I network with the tiny Gemma-2 (conftest).
Same images means uint8 identical (fp32, CPU) with one generator per image seeded seed + i, with CFG and a
guidance interval. Round trips are tensor for tensor; bad folders are one line each.
"""

import json
import os
import sys

import numpy as np
import pytest
import torch
from conftest import FIXTURES, randomize
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from pixeldit_cli import build_model, load_model
from pixeldit_cli.cli import app
from pixeldit_cli.convert import convert
from pixeldit_cli.errors import PixelDiTError

diffusers = pytest.importorskip("diffusers")
from pixeldit_cli.pipelines import (  # noqa: E402
    PixelDiTPipeline,
    PixelDiTScheduler,
    PixelDiTT2IPipeline,
    PixelDiTTransformer2DModel,
)

runner = CliRunner()


def cli(*args):
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def pngs(folder, n):
    return [np.array(Image.open(p)) for p in sorted(folder.glob("0*.png"))[:n]]


def generators(seed, n):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.fixture(scope="module")
def c2i_pipe(tmp_path_factory):
    d = tmp_path_factory.mktemp("c2i")
    code, out = cli("convert", FIXTURES / "official_c2i_small.ckpt", d / "pipe", "--format", "diffusers")
    assert code == 0, out
    return d / "pipe"


@pytest.fixture(scope="module")
def t2i_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("t2i")
    m = randomize(
        build_model(
            "PixelDiT-T2I-S/4",
            hidden_size=32,
            num_heads=2,
            pixel_attn_hidden=24,
            pixel_heads=3,
            text_dim=12,
            text_len=6,
        ),  # fmt: skip
        0,
    )
    save_file(m.state_dict(), str(d / "t2i.safetensors"), metadata={"pixeldit_config": json.dumps(m.config.to_dict())})
    return d / "t2i.safetensors"


def test_export_layout_and_model_card(c2i_pipe, fixtures):
    names = sorted(str(p.relative_to(c2i_pipe)) for p in c2i_pipe.rglob("*"))
    assert names == [
        "README.md", "model_index.json", "pipeline_pixeldit.py", "scheduler", "scheduler/scheduler_config.json",
        "scheduler/scheduler_pixeldit.py", "transformer", "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors", "transformer/transformer_pixeldit.py",
    ]  # fmt: skip
    index = json.loads((c2i_pipe / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_pixeldit", "PixelDiTPipeline"]
    from pixeldit_cli.io import file_sha256

    digest = file_sha256(fixtures / "official_c2i_small.ckpt")
    assert index["_pixeldit"]["source_sha256"] == digest
    card = (c2i_pipe / "README.md").read_text()
    assert digest in card and 'license: ""' in card and "| flowdpm | 100 | 2.75 | 0.1 – 0.9 | 1 |" in card
    sched = json.loads((c2i_pipe / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["solver"], sched["num_inference_steps"], sched["guidance_scale"]) == ("flowdpm", 100, 2.75)
    # the transformer's tensors are the network's under "model.", nothing renamed
    sd = load_file(c2i_pipe / "transformer" / "diffusion_pytorch_model.safetensors")
    net = load_model(fixtures / "official_c2i_small.ckpt")
    assert sorted(sd) == sorted(f"model.{k}" for k in net.state_dict())
    assert all(torch.equal(sd[f"model.{k}"], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("route", ["pixeldit", "diffusers"])
def test_c2i_pipeline_images_equal_the_cli(c2i_pipe, fixtures, tmp_path, route):
    if route == "pixeldit":
        pipe = PixelDiTPipeline.from_pretrained(c2i_pipe)
    else:
        pipe = diffusers.DiffusionPipeline.from_pretrained(c2i_pipe, trust_remote_code=True)
    assert type(pipe) is PixelDiTPipeline and isinstance(pipe.scheduler, PixelDiTScheduler)
    pipe.set_progress_bar_config(disable=True)
    size = 16
    settings = dict(num_inference_steps=4, guidance_scale=3.0, guidance_interval=(0.2, 0.8), height=size, width=size)
    images = pipe(class_labels=[1, 0, 2], generator=generators(7, 3), **settings).images
    code, out = cli("sample", "--ckpt", fixtures / "official_c2i_small.ckpt", "--class", "1", "--class", "0",
                    "--class", "2", "--n", "3", "--steps", "4", "--cfg", "3", "--cfg-interval", "0.2", "0.8",
                    "--height", size, "--width", size, "--seed", "7", "--out", tmp_path / "s", "--precision", "fp32")  # fmt: skip
    assert code == 0, out
    want = pngs(tmp_path / "s", 3)
    assert all(np.array_equal(np.array(a), b) for a, b in zip(images, want, strict=True))
    assert len({np.array(a).tobytes() for a in images}) == 3  # three different images, not one repeated
    arr = pipe(class_labels=[1, 0, 2], generator=generators(7, 3), output_type="np", **settings).images
    assert arr.dtype == np.float32 and np.array_equal(np.round(arr * 255).astype(np.uint8), np.stack(want))
    pt = pipe(class_labels=[1], generator=generators(7, 1), output_type="pt", **settings).images
    assert pt.shape == (1, 3, size, size) and torch.equal((pt * 255).round().to(torch.uint8)[0].permute(1, 2, 0),
                                                          torch.from_numpy(want[0]))  # fmt: skip


def test_pipeline_defaults_and_bad_calls(c2i_pipe):
    pipe = PixelDiTPipeline.from_pretrained(c2i_pipe)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.settings().steps == 100 and pipe.scheduler.settings(steps=3).steps == 3
    with pytest.raises(PixelDiTError, match="class id 99 is out of range"):
        pipe(class_labels=[99], num_inference_steps=1, height=16, width=16)
    with pytest.raises(ValueError, match="2 generators for 1 images"):
        pipe(class_labels=[0], num_inference_steps=1, height=16, width=16, generator=generators(0, 2))
    with pytest.raises(PixelDiTError, match="--cfg-interval 0.9 0.1 is invalid"):
        pipe(class_labels=[0], num_inference_steps=1, height=16, width=16, guidance_interval=(0.9, 0.1))
    pipe.scheduler.set_timesteps(4)
    assert torch.equal(pipe.scheduler.timesteps, torch.tensor([0.0, 0.25, 0.5, 0.75]))


def test_t2i_export_and_images_equal_the_cli(t2i_ckpt, gemma, tmp_path):
    code, out = cli("convert", t2i_ckpt, tmp_path / "pipe", "--format", "diffusers", "--text-encoder", gemma)
    assert code == 0, out
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"][1] == "PixelDiTT2IPipeline" and index["text_encoder"] == ["transformers", "Gemma2Model"]
    assert os.path.islink(tmp_path / "pipe" / "text_encoder") and os.path.islink(tmp_path / "pipe" / "tokenizer")
    prompts = ["a red fox", "blue bird over sea"]
    settings = dict(num_inference_steps=3, guidance_scale=4.5, guidance_interval=(0.0, 1.0), height=8, width=16)
    p1 = PixelDiTT2IPipeline.from_pretrained(tmp_path / "pipe")
    p2 = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    assert type(p2) is PixelDiTT2IPipeline
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    code, out = cli("sample", "--ckpt", t2i_ckpt, "--text-encoder", gemma, "--prompts", tmp_path / "p.txt", "--n", "2",
                    "--steps", "3", "--cfg", "4.5", "--height", "8", "--width", "16", "--seed", "3",
                    "--out", tmp_path / "s", "--precision", "fp32")  # fmt: skip
    assert code == 0, out
    want = pngs(tmp_path / "s", 2)
    for pipe in (p1, p2):
        pipe.set_progress_bar_config(disable=True)
        assert pipe.scheduler.config.solver == "dpm++2m"
        got = pipe(prompt=prompts, generator=generators(3, 2), **settings).images
        assert all(np.array_equal(np.array(a), b) for a, b in zip(got, want, strict=True))
    # without --text-encoder, the encoder is passed at load time
    code, out = cli("convert", t2i_ckpt, tmp_path / "bare", "--format", "diffusers")
    assert code == 0, out
    with pytest.raises(PixelDiTError, match="has no text encoder"):
        PixelDiTT2IPipeline.from_pretrained(tmp_path / "bare")
    p3 = PixelDiTT2IPipeline.from_pretrained(tmp_path / "bare", text_encoder=p1.text_encoder, tokenizer=p1.tokenizer)
    p3.set_progress_bar_config(disable=True)
    got = p3(prompt=prompts, generator=generators(3, 2), **settings).images
    assert all(np.array_equal(np.array(a), b) for a, b in zip(got, want, strict=True))


def test_round_trip_is_bit_exact_and_sharded_exports_load(fixtures, tmp_path):
    src = fixtures / "official_c2i_small.ckpt"
    convert(src, tmp_path / "direct.safetensors")
    convert(src, tmp_path / "sharded", format="diffusers", max_shard_size="20KB")
    tf = tmp_path / "sharded" / "transformer"
    shards = sorted(p.name for p in tf.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1 and (tf / "diffusion_pytorch_model.safetensors.index.json").is_file()
    convert(tmp_path / "sharded", tmp_path / "back.safetensors")
    a, b = load_file(tmp_path / "direct.safetensors"), load_file(tmp_path / "back.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = load_model(tmp_path / "direct.safetensors"), load_model(tmp_path / "sharded")
    assert ma.config == mb.config
    pipe = PixelDiTPipeline.from_pretrained(tmp_path / "sharded")
    assert all(torch.equal(pipe.transformer.model.state_dict()[k], v) for k, v in ma.state_dict().items())


def community_folder(folder, net, **config):
    """The community port's transformer layout: its config keys and the official tensor names."""
    folder.mkdir()
    c = net.config
    conf = dict(_class_name="PixelDiTTransformer2DModel", model_type=c.kind, hidden_size=c.hidden_size,
                pixel_hidden_size=c.pixel_hidden, patch_depth=c.patch_depth, pixel_depth=c.pixel_depth,
                patch_size=c.patch_size, num_classes=c.num_classes, in_channels=c.in_channels,
                num_groups=c.num_heads)  # fmt: skip
    conf.update(config)
    (folder / "config.json").write_text(json.dumps(conf))
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "diffusion_pytorch_model.safetensors")
    )
    return folder


def test_community_layout_loads_with_equal_outputs(tmp_path):
    net = randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), 3)
    folder = community_folder(tmp_path / "community", net)
    loaded = load_model(folder)
    assert loaded.key_report.source_format == "community diffusers port" and loaded.config == net.config
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.7]), torch.tensor([1, 4])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), net(x, t, y))
    bad = community_folder(tmp_path / "wrong", net, num_groups=4)
    with pytest.raises(PixelDiTError, match="disagrees with its weights: num_heads 4"):
        load_model(bad)
    odd = community_folder(tmp_path / "odd", net, model_type="video")
    with pytest.raises(PixelDiTError, match="unknown model_type 'video'"):
        load_model(odd)


@pytest.mark.parametrize("damage,message", [
    ("missing shard", "is missing transformer/diffusion_pytorch_model-00001-of-"),
    ("wrong shape", "of the wrong shape"),
    ("bad index", "model_index.json is not valid JSON"),
    ("no transformer entry", "model_index.json has no transformer entry"),
    ("unknown class", "names the transformer class 'UNet2DModel'"),
])  # fmt: skip
def test_damaged_folders_are_one_line(fixtures, tmp_path, damage, message):
    dst = tmp_path / "pipe"
    convert(fixtures / "official_c2i_small.ckpt", dst, format="diffusers", max_shard_size="20KB")
    tf = dst / "transformer"
    if damage == "missing shard":
        sorted(tf.glob("diffusion_pytorch_model-00001-*.safetensors"))[0].unlink()
    elif damage == "wrong shape":
        index = json.loads((tf / "diffusion_pytorch_model.safetensors.index.json").read_text())
        key, shard = next(iter(sorted(index["weight_map"].items())))
        tensors = load_file(tf / shard)
        tensors[key] = torch.zeros(3, 3)
        save_file(tensors, str(tf / shard))
    elif damage == "bad index":
        (dst / "model_index.json").write_text("{not json")
    else:
        index = json.loads((dst / "model_index.json").read_text())
        if damage == "unknown class":
            index["transformer"] = ["diffusers", "UNet2DModel"]
        else:
            del index["transformer"]
        (dst / "model_index.json").write_text(json.dumps(index))
    code, out = cli("sample", "--ckpt", dst, "--n", "1", "--steps", "1", "--height", "16", "--width", "16",
                    "--out", tmp_path / "s")  # fmt: skip
    assert code == 1 and message in out and "Traceback" not in out, out
    assert not (tmp_path / "s").exists()


def test_existing_destinations_are_kept(fixtures, tmp_path, gemma, t2i_ckpt):
    src, dst = fixtures / "official_c2i_small.ckpt", tmp_path / "pipe"
    convert(src, dst, format="diffusers")
    before = (dst / "transformer" / "config.json").read_bytes()
    code, out = cli("convert", src, dst, "--format", "diffusers")
    assert code == 1 and "already exists" in out and "--force" in out
    (dst / "transformer" / "notes.txt").write_text("mine")
    code, out = cli("convert", src, dst, "--format", "diffusers", "--force")
    assert code == 1 and "transformer/notes.txt" in out and (dst / "transformer" / "notes.txt").read_text() == "mine"
    assert (dst / "transformer" / "config.json").read_bytes() == before
    (dst / "transformer" / "notes.txt").unlink()
    code, out = cli("convert", src, dst, "--format", "diffusers", "--force", "--weights", "raw")
    assert code == 0, out
    assert json.loads((dst / "model_index.json").read_text())["_pixeldit"]["weights"] == "raw"
    # replacing a T2I export removes its links, never what they point to
    t2i = tmp_path / "t2i"
    convert(t2i_ckpt, t2i, format="diffusers", text_encoder=str(gemma))
    files = sorted(p.name for p in gemma.iterdir())
    convert(t2i_ckpt, t2i, format="diffusers", force=True)
    assert sorted(p.name for p in gemma.iterdir()) == files and not (t2i / "text_encoder").exists()
    # a folder pixeldit did not write is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text("{}")
    with pytest.raises(PixelDiTError, match="not a folder written by `pixeldit convert --format diffusers`"):
        convert(src, other, format="diffusers", force=True)
    assert (other / "model_index.json").read_text() == "{}"


def test_without_diffusers_the_format_is_one_line(fixtures, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    code, out = cli("convert", fixtures / "official_c2i_small.ckpt", tmp_path / "p", "--format", "diffusers")
    assert code == 1 and "pip install 'pixeldit[diffusers]'" in out and "Traceback" not in out
    assert not (tmp_path / "p").exists()


def test_transformer_forward_is_the_network(fixtures):
    net = load_model(fixtures / "official_c2i_small.ckpt")
    tr = PixelDiTTransformer2DModel.from_network(net)
    assert tr.model is net and all(a is b for a, b in zip(tr.parameters(), net.parameters(), strict=True))
    x, t, y = torch.randn(1, 3, 16, 16), torch.tensor([0.4]), torch.tensor([1])
    with torch.no_grad():
        assert torch.equal(tr(x, t, class_labels=y).sample, net(x, t, y))
