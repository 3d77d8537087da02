"""Text-to-image training: the release's discrete timesteps, the loss by hand, buckets, and a real step."""

import pytest
import torch
from torchvision.io import write_png

from pixeldit_cli.config import apply_overrides, load_preset
from pixeldit_cli.train import train
from pixeldit_cli.train.data import BucketStepSampler, CaptionDataset, aspect_buckets
from pixeldit_cli.train.objective import t2i_draw, t2i_flow_loss, t2i_repa_loss, t2i_sigmas


def test_release_timesteps():
    s = t2i_sigmas(4.0)
    assert int(1000 * s[100]) == 307  # docs/conventions.md#training: i = 100, s = 4 -> 307
    assert s[0] == 0 and int(1000 * t2i_sigmas(1.0)[999]) == 999
    noise, sig, ts, drop = t2i_draw(0, 3, range(50), (1, 2, 2), 0.1, 3.0)
    assert (ts == ts.round()).all()  # integers, as the release casts
    assert ((1000 * sig.double() - ts.double()) > -1e-3).all() and (
        (1000 * sig.double() - ts.double()) < 1 + 1e-3
    ).all()
    assert ((sig >= 0) & (sig < 1)).all()


def test_t2i_loss_by_hand():
    class Stub(torch.nn.Module):
        def forward(self, x, t, y, return_patch_tokens_at=0):
            self.seen = (x, t, y)
            return torch.full_like(x, 0.2)

    net = Stub()
    x, noise = torch.tensor([0.5]).view(1, 1, 1, 1), torch.tensor([-1.0]).view(1, 1, 1, 1)
    text, null = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    total, flow, _ = t2i_flow_loss(
        net, x, text, null, torch.tensor([0.25]), torch.tensor([250.0]), noise, torch.tensor([True])
    )
    # x_σ = 0.75·0.5 + 0.25·(−1) = 0.125; target ε − x = −1.5; loss = (0.2 + 1.5)² = 2.89
    assert flow.item() == pytest.approx(2.89) and net.seen[0].item() == pytest.approx(0.125)
    assert net.seen[1].item() == 250.0 and torch.equal(net.seen[2], null)  # dropped caption -> "" embedding
    # REPA: L2-normalised, more model tokens than DINO's -> resized to its grid; −mean(cos)
    p = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    assert t2i_repa_loss(p, torch.tensor([[[1.0, 1.0]]])).item() == pytest.approx(-1.0, abs=1e-6)


def captions(root, sizes):
    root.mkdir()
    for i, (h, w) in enumerate(sizes):
        write_png(torch.full((3, h, w), 30 * i, dtype=torch.uint8), str(root / f"{i}.png"))
        (root / f"{i}.txt").write_text(["a red fox", "blue bird over sea"][i % 2])
    return root


def test_buckets_assign_every_image(tmp_path):
    ds = CaptionDataset(
        captions(tmp_path / "c", [(32, 32), (16, 48), (48, 16), (32, 32)] * 2), 32, multi_aspect=True, patch=8
    )
    assert len(ds.bucket_of) == 8
    for i, b in enumerate(ds.bucket_of):
        h, w = ds.buckets[b]
        img, cap = ds[i]
        assert img.shape == (3, h, w) and h % 8 == 0 and w % 8 == 0
    wide = [ds.buckets[b] for b in ds.bucket_of[1::4]]
    assert all(w > h for h, w in wide)  # a 16×48 image lands in a wide bucket
    s = BucketStepSampler(ds.bucket_of, 2, 2, 0, 1, seed=0, start_step=0, total_steps=4)
    for step in range(4):
        _, idx = s.slots(step)
        assert len({ds.bucket_of[i] for i in idx}) == 1  # one bucket per batch
    assert all(h % 16 == 0 and w % 16 == 0 and 0.8 < h * w / 512**2 < 1.2 for h, w in aspect_buckets(512))


def test_t2i_training_steps(gemma, tmp_path):
    data = captions(tmp_path / "caps", [(16, 16)] * 8)
    cfg = apply_overrides(
        load_preset("t2i512-stage1"),
        {
            "model.name": "PixelDiT-T2I-S/4",
            "data.path": str(data),
            "data.resolution": 16,
            "data.num_workers": 0,
            "train.global_batch": 4,
            "train.micro_batch": 2,
            "train.steps": 2,
            "train.repa_weight": 0.0,
            "train.log_every": 1,
            "train.ckpt_every": 2,
            "train.sample_every": 2,
            "train.keep_every": 0,
            "text.encoder": str(gemma),
            "sample.steps": 2,
        },
    )
    # the registry's tiny T2I has 64-wide text; this Gemma gives 12: the width check must name both
    from pixeldit_cli.errors import PixelDiTError

    with pytest.raises(PixelDiTError, match="12-wide states but the checkpoint expects 64"):
        train(cfg, tmp_path / "run", progress=False)
    from pixeldit_cli.models import registry

    registry.SIZES["T2I-TEST"] = dict(
        kind="t2i",
        patch_depth=1,
        pixel_depth=1,
        hidden_size=32,
        num_heads=2,
        pixel_attn_hidden=24,
        pixel_heads=3,
        text_dim=12,
        text_len=6,
    )
    try:
        cfg = apply_overrides(cfg, {"model.name": "PixelDiT-T2I-TEST/4"})
        summary = train(cfg, tmp_path / "run", progress=False)
    finally:
        del registry.SIZES["T2I-TEST"]
    assert summary["step"] == 2 and summary["last"]["loss"] > 0
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["model_config"]["kind"] == "t2i" and (tmp_path / "run" / "samples" / "0000002.png").exists()
    # the T2I presets train with CAME, as released: its factored second moments are in the optimizer state
    assert cfg.train.optimizer == "came"
    assert any("exp_avg_sq_row" in st or "exp_avg_res_row" in st for st in ck["optimizer"]["state"].values())
