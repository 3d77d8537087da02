"""Training: one step's loss by hand (with and without REPA, both token-count branches), data loaders,
exact resume (also after SIGKILL mid-write), 1 vs 2 processes, and every bad input."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_fashion_idx

from pixeldit_cli.config import apply_overrides, load_preset
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.solvers import time_shift as shift_t
from pixeldit_cli.train import train
from pixeldit_cli.train.data import EDM2Dataset, FashionMNIST, ImageFolder, StepSampler, adm_center_crop, open_dataset
from pixeldit_cli.train.objective import Projector, align_tokens, draw, flow_loss, repa_loss

# ---- the objective by hand ----------------------------------------------------------------------------


class Stub(torch.nn.Module):
    """Returns a constant output and records what it was called with; optional patch tokens for REPA."""

    def __init__(self, out=0.0, tokens=None):
        super().__init__()
        self.out, self.tokens, self.seen = out, tokens, {}

    def forward(self, x, t, y, return_patch_tokens_at=0):
        self.seen = dict(x=x.clone(), t=t.clone(), y=y.clone(), block=return_patch_tokens_at)
        o = torch.full_like(x, self.out)
        return (o, self.tokens) if return_patch_tokens_at else o


def test_flow_loss_by_hand():
    # one pixel, two samples: x = [0.5, -0.2], ε = [-1, 0.4], t = [0.25, 0.8], net output 0.1
    x = torch.tensor([0.5, -0.2]).view(2, 1, 1, 1)
    noise = torch.tensor([-1.0, 0.4]).view(2, 1, 1, 1)
    t = torch.tensor([0.25, 0.8])
    net = Stub(out=0.1)
    total, flow, repa = flow_loss(net, x, torch.tensor([3, 7]), t, noise, torch.tensor([False, True]), null_class=10)
    # v = x − ε = [1.5, -0.6]; loss = mean((0.1 − v)²) = ((−1.4)² + (0.7)²) / 2 = 1.225
    assert flow.item() == pytest.approx(1.225, abs=1e-6) and total.item() == pytest.approx(1.225, abs=1e-6)
    assert repa.item() == 0.0
    # x_t = t·x + (1 − t)·ε = [0.25·0.5 + 0.75·(−1), 0.8·(−0.2) + 0.2·0.4] = [−0.625, −0.08]
    assert torch.allclose(net.seen["x"].flatten(), torch.tensor([-0.625, -0.08]))
    assert net.seen["y"].tolist() == [3, 10]  # the dropped label becomes the null class
    assert torch.equal(net.seen["t"], t)  # the c2i network sees t itself, not 1000·t


def _identity_projector(dim):
    p = Projector(dim, dim, dim)
    with torch.no_grad():
        for i in (0, 2, 4):
            p.proj[0][i].weight.copy_(torch.eye(dim) * (10.0 if i < 4 else 1.0))
            p.proj[0][i].bias.zero_()
    return p  # SiLU(10·x) ≈ 10·x for x > 0.5, so positive inputs keep their direction


def test_repa_loss_by_hand_equal_token_counts():
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # (B=1, L=2, 2), both positive
    target = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    x = torch.zeros(1, 1, 1, 2)
    net = Stub(out=0.0, tokens=tokens)
    total, flow, repa = flow_loss(
        net,
        x,
        torch.tensor([0]),
        torch.tensor([0.5]),
        torch.zeros_like(x),
        torch.tensor([False]),
        10,
        projector=_identity_projector(2),
        repa_target=target,
        repa_block=8,
        repa_weight=0.5,
    )
    # token 1: [a, 0] vs [0, 1] -> cos 0; token 2: parallel -> cos 1; loss = mean(1 − cos) = 0.5
    assert repa.item() == pytest.approx(0.5, abs=1e-3)
    assert total.item() == pytest.approx(flow.item() + 0.25, abs=1e-3) and net.seen["block"] == 8


def test_repa_token_count_branches_by_hand():
    # more model tokens than DINO tokens: 2×2 grid average-pooled to 1 token
    h = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])  # mean = [1, 1]
    assert torch.allclose(align_tokens(h, 1), torch.tensor([[[1.0, 1.0]]]))
    assert repa_loss(h, torch.tensor([[[1.0, 1.0]]])).item() == pytest.approx(0.0, abs=1e-6)
    # fewer model tokens: one token bilinearly resized to a 2×2 grid is constant
    one = torch.tensor([[[2.0, -1.0]]])
    assert torch.allclose(align_tokens(one, 4), one.expand(1, 4, 2))
    target = torch.tensor([[[1.0, 0.0], [2.0, -1.0], [0.0, 1.0], [-2.0, 1.0]]])
    cos = torch.tensor([2 / 5**0.5, 1.0, -1 / 5**0.5, -1.0])
    assert repa_loss(one, target).item() == pytest.approx((1 - cos).mean().item(), abs=1e-6)


def test_flip_coins_are_per_slot_and_fair():
    from pixeldit_cli.train.objective import flip_mask

    a, b = flip_mask(0, 3, range(2000)), flip_mask(0, 3, range(1000, 2000))
    assert torch.equal(a[1000:], b) and abs(a.float().mean().item() - 0.5) < 0.05


def test_draws_depend_on_seed_step_and_slot_only():
    n1, t1, d1 = draw(0, 5, [0, 1, 2, 3], (3, 4, 4), 0.1, 1.0)
    n2, t2, d2 = draw(0, 5, [2, 3], (3, 4, 4), 0.1, 1.0)
    assert torch.equal(n1[2:], n2) and torch.equal(t1[2:], t2) and torch.equal(d1[2:], d2)
    n3, _, _ = draw(0, 6, [2, 3], (3, 4, 4), 0.1, 1.0)
    assert not torch.equal(n2, n3)
    _, ts, _ = draw(0, 5, [0, 1, 2, 3], (1,), 0.1, 3.0)
    assert torch.allclose(ts, shift_t(t1, 3.0))  # logit-normal, then the time shift
    assert shift_t(torch.tensor(0.5), 3.0).item() == pytest.approx(0.25)
    _, _, many = draw(1, 0, range(4000), (1,), 0.1, 1.0)
    assert abs(many.float().mean().item() - 0.1) < 0.02


# ---- data ---------------------------------------------------------------------------------------------


def make_folder(root: Path, classes=4, per=8, size=16):
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per):
            base = torch.zeros(3, size, size, dtype=torch.uint8)
            base[c % 3] = 60 + 60 * (c // 3)
            img = (base.int() + torch.randint(0, 40, (3, size, size), generator=g)).clamp(0, 255).to(torch.uint8)
            write_png(img, str(d / f"{i:03d}.png"))
    return root


def test_image_folder_and_class_map(tmp_path):
    ds = ImageFolder(make_folder(tmp_path / "f"), 16, num_classes=4)
    assert len(ds) == 32 and ds.class_to_idx == {"class_0": 0, "class_1": 1, "class_2": 2, "class_3": 3}
    img, label = ds[9]
    assert img.dtype == torch.uint8 and img.shape == (3, 16, 16) and label == 1


def test_adm_center_crop(tmp_path):
    img = torch.arange(3 * 40 * 64, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 40, 64)
    out = adm_center_crop(img, 16)  # 40×64 -> box to 20×32 -> bicubic to 16×26 -> centre 16×16
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    same = torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)
    assert torch.equal(adm_center_crop(same, 16), same)


def test_edm2_zip_and_folder(tmp_path):
    from torchvision.io import encode_png

    labels = []
    with zipfile.ZipFile(tmp_path / "ds.zip", "w") as z:
        for i in range(6):
            name = f"00000/img{i:08d}.png"
            z.writestr(name, encode_png(torch.full((3, 16, 16), 20 * i, dtype=torch.uint8)).numpy().tobytes())
            labels.append([name, i % 3])
        z.writestr("dataset.json", json.dumps({"labels": labels}))
    ds = open_dataset(str(tmp_path / "ds.zip"), 16, num_classes=3)
    assert isinstance(ds, EDM2Dataset) and len(ds) == 6 and ds.labels == [0, 1, 2, 0, 1, 2]
    img, lab = ds[4]
    assert img[0, 0, 0].item() == 80 and lab == 1
    zipfile.ZipFile(tmp_path / "ds.zip").extractall(tmp_path / "dsdir")
    assert open_dataset(str(tmp_path / "dsdir"), 16, 3)[4][1] == 1


def test_fashion_mnist_idx_reader(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_fashion_idx(tmp_path, "t10k", imgs, [7, 9])
    ds = FashionMNIST("test", 32, root=tmp_path)
    img, lab = ds[1]
    assert (len(ds), lab, img.shape) == (2, 9, (3, 32, 32))
    assert torch.equal(img[0, 2:30, 2:30], torch.from_numpy(imgs[1])) and img[:, :2].sum() == 0  # padded 2 px


def test_step_sampler_shards_a_global_batch():
    one = StepSampler(20, 8, 4, 0, 1, seed=3, start_step=0, total_steps=4)
    r0 = StepSampler(20, 8, 2, 0, 2, seed=3, start_step=0, total_steps=4)
    r1 = StepSampler(20, 8, 2, 1, 2, seed=3, start_step=0, total_steps=4)
    for step in range(4):
        s, idx = one.slots(step)
        assert idx == r0.slots(step)[1] + r1.slots(step)[1] and s == list(range(8))
    assert one.per_epoch == 2 and len(set(one.slots(0)[1] + one.slots(1)[1])) == 16  # no repeats in an epoch
    late = StepSampler(20, 8, 4, 0, 1, seed=3, start_step=2, total_steps=4)
    assert list(late) == [one.slots(2)[1][:4], one.slots(2)[1][4:], one.slots(3)[1][:4], one.slots(3)[1][4:]]


@pytest.mark.parametrize(
    "make,msg",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no class subfolders"),
        (lambda p: (p / "noimg" / "a").mkdir(parents=True) or p / "noimg", "holds no images"),
    ],
)
def test_bad_datasets(tmp_path, make, msg):
    with pytest.raises(PixelDiTError, match=msg):
        open_dataset(str(make(tmp_path)), 16, None)


def test_class_count_and_small_images(tmp_path):
    with pytest.raises(PixelDiTError, match="has 4 class folders but the model has 10 classes"):
        open_dataset(str(make_folder(tmp_path / "a")), 16, 10)
    with pytest.raises(PixelDiTError, match="smaller than the resolution 32"):
        open_dataset(str(make_folder(tmp_path / "b", size=16)), 32, 4)


# ---- runs ---------------------------------------------------------------------------------------------


def overrides_for(data, **kw):
    """The small-run settings, as dotted overrides (shared by in-process and torchrun runs)."""
    base = {
        "model.name": "PixelDiT-XS/4",
        "model.num_classes": 4,
        "data.path": str(data),
        "data.resolution": 16,
        "data.num_workers": 0,
        "train.global_batch": 8,
        "train.micro_batch": 4,
        "train.steps": 4,
        "train.log_every": 1,
        "train.sample_every": 0,
        "train.ckpt_every": 2,
        "train.lr": 1e-3,
        "train.keep_every": 0,
        "train.warmup_steps": 0,
        "sample.steps": 4,
    }
    base.update(kw)
    return base


def cfg_for(data, **kw):
    return apply_overrides(load_preset("smoke"), overrides_for(data, **kw))


def torchrun_train(out, overrides, nproc=2):
    """`pixeldit train --preset smoke` under torchrun with exactly these overrides (as --key value flags)."""
    flags = [str(a) for k, v in overrides.items() for a in (f"--{k}", "true" if v is True else v)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "pixeldit_cli",
        "--",
        "train",
        "--preset",
        "smoke",
        "--out",
        str(out),
        *flags,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "imgs")


def states_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_resume_is_bit_identical(data, tmp_path):
    train(cfg_for(data), tmp_path / "full", progress=False)
    train(cfg_for(data, **{"train.steps": 2}), tmp_path / "half", progress=False)
    train(cfg_for(data), tmp_path / "half", resume="auto", progress=False)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "half" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert states_equal(a["model"], b["model"]) and states_equal(a["ema"], b["ema"])
    assert states_equal(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert a["data_position"] == {"step": 4, "epoch": 1, "batch_in_epoch": 0}  # 32 images / 8 = 4 steps per epoch
    assert a["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    lines = [json.loads(l) for l in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]


def test_sigkill_during_checkpoint_write_keeps_the_previous_one(data, tmp_path):
    train(cfg_for(data), tmp_path / "ref", progress=False)
    script = (
        f"from pixeldit_cli.config import apply_overrides, load_preset\nfrom pixeldit_cli.train import train\n"
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom test_train import cfg_for\n"
        f"train(cfg_for({str(data)!r}), {str(tmp_path / 'killed')!r}, progress=False)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PIXELDIT_TEST_KILL_IN_SAVE": "0000004.pt"},
        capture_output=True,
        text=True,
    )
    assert p.returncode == -9, p.stderr[-1500:]  # SIGKILL
    ck = tmp_path / "killed" / "checkpoints"
    assert torch.load(ck / "last.pt", weights_only=True)["step"] == 2 and not (ck / "0000004.pt").exists()
    train(cfg_for(data), tmp_path / "killed", resume="auto", progress=False)
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(ck / "last.pt", weights_only=True)
    assert states_equal(a["model"], b["model"]) and states_equal(a["ema"], b["ema"])


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    d = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    Dinov2Model(
        Dinov2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            patch_size=7,
            image_size=14,
        )
    ).save_pretrained(d)
    return d


def test_two_processes_equal_one(data, dino, tmp_path):
    """Also with REPA: the projector lives outside DDP and its gradients must be averaged as well."""
    repa = {"train.repa_weight": 0.5, "train.repa_block": 1, "train.repa_encoder": str(dino)}
    train(cfg_for(data, **{"train.steps": 3}, **repa), tmp_path / "one", progress=False)
    torchrun_train(tmp_path / "two", overrides_for(data, **{"train.steps": 3}, **repa))
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)
    a, b = one["model"], two["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    pa, pb = one["projector"], two["projector"]
    assert max((pa[k] - pb[k]).abs().max().item() for k in pa) < 1e-5
    assert any(
        (a[k] - torch.load(tmp_path / "one" / "checkpoints" / "0000002.pt", weights_only=True)["model"][k]).abs().max()
        > 0
        for k in a
    )


def test_loss_decreases_and_grid_and_convert(data, tmp_path):
    from pixeldit_cli import load_model
    from pixeldit_cli.convert import convert

    cfg = cfg_for(
        data,
        **{
            "train.steps": 40,
            "train.log_every": 5,
            "train.ckpt_every": 40,
            "train.sample_every": 40,
            "train.lr": 2e-3,
            "train.ema_decay": 0.9,
        },
    )
    summary = train(cfg, tmp_path / "run", progress=False)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["step"] == 40 and losses[-1] < 0.7 * losses[0]
    assert (tmp_path / "run" / "samples" / "0000040.png").exists() and (tmp_path / "run" / "config.yaml").exists()
    convert(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "ema.safetensors")
    m = load_model(tmp_path / "ema.safetensors")
    ema = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["ema"]
    assert all(torch.equal(m.state_dict()[k], ema[k]) for k in ema)


def test_nonfinite_losses_stop_with_the_step(data, tmp_path):
    with pytest.raises(PixelDiTError, match=r"stopping at step \d+: 2 non-finite"):
        train(
            cfg_for(data, **{"train.lr": 1e30, "train.steps": 20, "train.max_nonfinite": 2, "train.grad_clip": 0.0}),
            tmp_path / "nan",
            progress=False,
        )


def test_repa_with_a_tiny_dinov2(data, tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(
        Dinov2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            patch_size=7,
            image_size=14,
        )
    ).save_pretrained(tmp_path / "dino")
    cfg = cfg_for(
        data,
        **{
            "train.repa_weight": 0.5,
            "train.repa_block": 1,
            "train.repa_encoder": str(tmp_path / "dino"),
            "train.steps": 2,
        },
    )
    summary = train(cfg, tmp_path / "repa", progress=False)
    assert summary["last"]["loss_repa"] > 0
    ck = torch.load(tmp_path / "repa" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["projector"]["proj.0.4.weight"].shape == (16, 32)  # DINO width x model width, nested like the release


# ---- bad input ----------------------------------------------------------------------------------------


def test_bad_runs(data, tmp_path):
    with pytest.raises(PixelDiTError, match="not divisible by world size 1 × micro-batch 3"):
        train(cfg_for(data, **{"train.micro_batch": 3}), tmp_path / "a", progress=False)
    with pytest.raises(PixelDiTError, match="neither a local folder nor in the Hugging Face cache"):
        train(
            cfg_for(data, **{"train.repa_weight": 0.5, "train.repa_encoder": str(tmp_path / "nodino")}),
            tmp_path / "b",
            progress=False,
        )
    with pytest.raises(PixelDiTError, match="no DINOv2 encoder was given"):
        train(cfg_for(data, **{"train.repa_weight": 0.5}), tmp_path / "c", progress=False)


def test_corrupt_checkpoint_is_named_and_others_kept(data, tmp_path):
    out = tmp_path / "run"
    train(cfg_for(data), out, progress=False)
    ck = out / "checkpoints"
    (ck / "last.pt").unlink()
    (ck / "last.pt").write_bytes((ck / "0000004.pt").read_bytes()[:1000])
    with pytest.raises(PixelDiTError, match=r"last.pt is corrupt or truncated.*0000002.pt, 0000004.pt"):
        train(cfg_for(data, **{"train.steps": 6}), out, resume=str(ck / "last.pt"), progress=False)  # asked for by name
    assert (ck / "0000002.pt").exists() and (ck / "0000004.pt").exists()
    s = train(cfg_for(data, **{"train.steps": 6}), out, resume="auto", progress=False)  # auto falls back to 4
    assert s["trained_steps"] == 2 and torch.load(ck / "last.pt", weights_only=True)["step"] == 6


def test_fsdp_two_processes_with_resume_equal_one(data, dino, tmp_path):
    """train.fsdp shards over 2 ranks; 2 steps, then resume to 3, equals 3 unsharded steps on 1 process."""
    repa = {"train.repa_weight": 0.5, "train.repa_block": 1, "train.repa_encoder": str(dino)}
    train(cfg_for(data, **{"train.steps": 3}, **repa), tmp_path / "one", progress=False)
    for steps in (2, 3):  # stopped after 2 steps, resumed to 3
        torchrun_train(
            tmp_path / "fsdp",
            overrides_for(
                data, **{"train.steps": steps, "train.fsdp": True, "train.sample_every": 2, "sample.steps": 2}, **repa
            ),
        )
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "fsdp" / "checkpoints" / "last.pt", weights_only=True)
    assert two["step"] == 3 and (tmp_path / "fsdp" / "samples" / "0000002.png").exists()
    for part in ("model", "ema", "projector"):
        a, b = one[part], two[part]
        assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5, part
    sa, sb = one["optimizer"]["state"], two["optimizer"]["state"]
    assert sa.keys() == sb.keys() and max((sa[k]["exp_avg"] - sb[k]["exp_avg"]).abs().max().item() for k in sa) < 1e-5


def test_two_runs_on_one_machine_give_identical_checkpoints(data, tmp_path):
    """The demo's determinism claim, in the scope it holds: same machine, same thread count."""
    for name in ("a", "b"):
        train(cfg_for(data, **{"train.steps": 2, "train.ckpt_every": 2}), tmp_path / name, progress=False)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert states_equal(a["model"], b["model"]) and states_equal(a["ema"], b["ema"])
    assert states_equal(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
