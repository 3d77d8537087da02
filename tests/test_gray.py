"""Gray data on a 1-channel model (model.in_channels 1): conversion, datasets, train -> sample -> grid ->
FID input -> edit on a tiny model, and the short-run LR schedules."""

import json

import numpy as np
import pytest
import torch
from conftest import write_fashion_idx
from PIL import Image

from pixeldit_cli.config import apply_overrides, load_preset
from pixeldit_cli.edit import EditSettings, flowedit, run_edit
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.io import to_channels
from pixeldit_cli.models.loading import load_model
from pixeldit_cli.npz import NpzImages, write_npz
from pixeldit_cli.sampling import SampleJob, run
from pixeldit_cli.solvers import noise_for, solve, to_uint8
from pixeldit_cli.train import train
from pixeldit_cli.train.data import FashionMNIST, ImageFolder
from pixeldit_cli.train.loop import lr_at

# ---- conversion -----------------------------------------------------------------------------------------


def test_luma_equals_pillow_and_gray_round_trips():
    rgb = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    gray, note = to_channels(rgb, 1)
    pil = np.asarray(Image.fromarray(rgb.permute(1, 2, 0).numpy()).convert("L"))
    assert gray.shape == (1, 17, 23) and np.array_equal(gray[0].numpy(), pil) and "luma" in note
    rep, note3 = to_channels(gray, 3)  # replicated: what Inception and ADM's npz get
    assert torch.equal(rep, gray.expand(3, -1, -1)) and note3 == ""
    back, note1 = to_channels(rep, 1)  # a gray image stored as RGB comes back exactly, silently
    assert torch.equal(back, gray) and note1 == ""
    with pytest.raises(PixelDiTError, match="cannot turn a 4-channel image into 1"):
        to_channels(torch.zeros(4, 2, 2, dtype=torch.uint8), 1)


def test_datasets_give_one_channel(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_fashion_idx(tmp_path, "t10k", imgs, [7, 9])
    g, c = FashionMNIST("test", 32, root=tmp_path, channels=1)[1], FashionMNIST("test", 32, root=tmp_path)[1]
    assert g[0].shape == (1, 32, 32) and torch.equal(g[0][0], c[0][0]) and g[1] == 9

    d = tmp_path / "folder" / "a"
    d.mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "x.png")
    img, _ = ImageFolder(tmp_path / "folder", 16, channels=1)[0]
    assert img.shape == (1, 16, 16) and np.array_equal(img[0].numpy(), np.asarray(Image.fromarray(rgb).convert("L")))


def test_gray_npz_reads_as_replicated_rgb(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "g3.npz", gray)  # (N, H, W)
    np.savez(tmp_path / "g4.npz", gray[..., None])  # (N, H, W, 1)
    write_npz(tmp_path / "rgb.npz", np.repeat(gray[..., None], 3, axis=3))
    want = np.concatenate(list(NpzImages(tmp_path / "rgb.npz").batches(2)))
    for name in ("g3.npz", "g4.npz"):
        src = NpzImages(tmp_path / name)
        assert src.shape == (5, 8, 8, 3) and src.stored_channels == 1
        assert np.array_equal(np.concatenate(list(src.batches(2))), want)
    np.savez(tmp_path / "bad.npz", np.zeros((2, 4, 4, 2), np.uint8))
    with pytest.raises(PixelDiTError, match=r"expected \(N, H, W, 3\) RGB or \(N, H, W\[, 1\]\) gray"):
        NpzImages(tmp_path / "bad.npz")


# ---- train -> sample -> grid -> FID input -> edit on a tiny 1-channel model ------------------------------


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gray")
    data = root / "data"
    rng = np.random.default_rng(0)
    for c in range(2):
        (data / f"c{c}").mkdir(parents=True)
        for i in range(8):  # colour files: the loader makes them gray
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"c{c}" / f"{i}.png")
    overrides = {
        "model.name": "PixelDiT-XS/4",
        "model.num_classes": 2,
        "model.in_channels": 1,
        "data.path": str(data),
        "data.resolution": 16,
        "data.num_workers": 0,
        "train.global_batch": 8,
        "train.micro_batch": 8,
        "train.steps": 2,
        "train.log_every": 1,
        "train.sample_every": 2,
        "train.ckpt_every": 2,
        "train.warmup_steps": 0,
        "sample.steps": 3,
    }
    train(apply_overrides(load_preset("smoke"), overrides), root / "train", progress=False)
    return root


def test_train_sample_grid_and_fid_input_are_gray(gray_run, tmp_path):
    ckpt = gray_run / "train" / "checkpoints" / "last.pt"
    model = load_model(str(ckpt))
    assert model.config.in_channels == 1 and model.s_embedder.proj.in_features == 1 * 4 * 4
    assert Image.open(gray_run / "train" / "samples" / "0000002.png").mode == "L"  # the training grid

    out = tmp_path / "s"
    job = SampleJob(
        ckpt=str(ckpt), n=4, out=str(out), steps=3, cfg=2.0, height=16, width=16, seed=5, npz=True, packed=False
    )
    run(job, progress=False)
    pngs = [np.asarray(Image.open(out / f"{i:06d}.png")) for i in range(4)]
    assert all(p.shape == (16, 16) for p in pngs) and Image.open(out / "grid.png").mode == "L"
    arr = np.load(out / "samples.npz")["arr_0"]  # ADM layout: RGB, the gray replicated
    assert arr.shape == (4, 16, 16, 3) and all(
        np.array_equal(arr[i], np.repeat(p[..., None], 3, 2)) for i, p in enumerate(pngs)
    )

    # sample 0 by hand: 1-channel noise of seed + 0, the same solver, the release's rounding
    labels = np.load(out / "samples.npz")["arr_1"]
    x = noise_for([0], 5, (1, 16, 16))
    y = torch.tensor(labels[:1])
    img, _ = solve(model, x, y, torch.full_like(y, 2), **job.solving.kwargs())
    assert np.array_equal(to_uint8(img)[0, 0].numpy(), pngs[0])

    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["steps"] == 3
    assert np.concatenate(list(NpzImages(out / "samples.npz").batches(4))).shape == (4, 16, 16, 3)  # FID's input


def test_edit_of_a_colour_file_runs_on_its_luma(gray_run, tmp_path):
    ckpt = gray_run / "train" / "checkpoints" / "last.pt"
    rgb = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    es = EditSettings(steps=4, n_max=3, src_cfg=1.0, tgt_cfg=2.0, seed=3)
    res = run_edit(tmp_path / "in.png", str(ckpt), "0", "1", tmp_path / "e", es, packed=False)
    assert "gray (ITU-R 601 luma)" in res["input_note"] and res["fast_path"] is None  # packed=False
    out = np.asarray(Image.open(tmp_path / "e" / "edited.png"))
    assert out.shape == (16, 16) and Image.open(tmp_path / "e" / "strip.png").mode == "L"

    model = load_model(str(ckpt))  # the same edit by hand on the luma image
    luma = torch.from_numpy(np.asarray(Image.fromarray(rgb).convert("L")).copy())[None, None].float()
    z, _ = flowedit(model, luma / 127.5 - 1, torch.tensor([0]), torch.tensor([1]), **es.flowedit_kwargs(), seed=3)
    assert np.array_equal(to_uint8(z)[0, 0].numpy(), out)


# ---- learning-rate schedules for short runs -------------------------------------------------------------


class TC:
    lr, lr_drop_step, lr_drop_to, warmup_steps, steps = 1e-3, 0, 1e-5, 10, 110


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_schedules_by_hand(schedule):
    tc = type("T", (TC,), {"lr_schedule": schedule})
    assert lr_at(tc, 0) == pytest.approx(1e-4) and lr_at(tc, 10) == pytest.approx(1e-3)  # warm-up, then the peak
    # half way through the 100 decay steps: cosine 0.5·(1 + cos(π/2)) = 0.5, linear 0.5
    assert lr_at(tc, 60) == pytest.approx(5e-4)
    quarter = 0.5 * (1 + np.cos(np.pi * 0.25)) if schedule == "cosine" else 0.75
    assert lr_at(tc, 35) == pytest.approx(1e-3 * quarter)
    last = 0.5 * (1 + np.cos(np.pi * 0.99)) if schedule == "cosine" else 0.01  # the last step: 99 of 100 done
    assert lr_at(tc, 109) == pytest.approx(1e-3 * last) and lr_at(tc, 110) == 0.0
    assert lr_at(type("T", (TC,), {"lr_schedule": "constant"}), 109) == 1e-3


def test_diffusers_pipeline_gives_the_same_gray_images(gray_run, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from pixeldit_cli.convert import convert  # noqa: PLC0415

    ckpt = gray_run / "train" / "checkpoints" / "last.pt"
    convert(str(ckpt), str(tmp_path / "pipe"), format="diffusers")
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    job = SampleJob(ckpt=str(ckpt), n=2, out=str(tmp_path / "s"), classes=(1, 0), steps=3, cfg=2.0, height=16,
                    width=16, seed=5, packed=False)  # fmt: skip
    run(job, progress=False)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    images = pipe(class_labels=[1, 0], generator=gens, num_inference_steps=3, guidance_scale=2.0, height=16,
                  width=16).images  # fmt: skip
    assert [im.mode for im in images] == ["L", "L"]
    for i, im in enumerate(images):
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(tmp_path / "s" / f"{i:06d}.png")))
