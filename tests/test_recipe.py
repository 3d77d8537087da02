"""Tests that pin the training recipe with independent values: a silent recipe error spoils a week of GPU
time and leaves every other test green. Each value here comes from the paper (Sec. 4 and the appendix's
training tables), a closed form, or a brute-force computation written for the test."""

import math

import numpy as np
import pytest
import torch

from pixeldit_cli.config import load_preset
from pixeldit_cli.metrics.scores import precision_recall
from pixeldit_cli.models.layers import RMSNorm
from pixeldit_cli.train.loop import clip_at, ema_update, lr_at
from pixeldit_cli.train.objective import draw, t2i_draw

# ---- every preset's recipe against the paper ----------------------------------------------------------
# (lr, global batch, grad clip, EMA decay, cond drop, training time shift, REPA weight, REPA block)
PAPER = {
    "b256": (1e-4, 256, 1.0, 0.9999, 0.1, 1.0, 0.5, 8),
    "l256": (1e-4, 256, 1.0, 0.9999, 0.1, 1.0, 0.5, 8),
    "xl256": (1e-4, 256, 1.0, 0.9999, 0.1, 1.0, 0.5, 8),  # LR 1e-5 and clip 0.5 after 160 epochs
    "xl512": (1e-5, 64, 0.5, 0.9999, 0.1, 3.0, 0.5, 8),  # fine-tune from 256: LR 1e-5, clip 0.5, shift 3
    "t2i512-stage1": (1e-4, 1024, 0.5, 0.0, 0.1, 3.0, 0.5, 6),
    "t2i1024": (2e-5, 768, 0.1, 0.0, 0.1, 4.0, 0.0, 6),
}
# (solver, steps, cfg, interval, sampling shift) of the released checkpoints / the paper's T2I setting
SAMPLING = {
    "xl256": ("flowdpm", 100, 2.75, (0.1, 0.9), 1.0),
    "xl512": ("flowdpm", 100, 3.5, (0.1, 1.0), 2.0),
    "b256": ("flowdpm", 100, 3.25, (0.1, 1.0), 1.0),
    "t2i512-stage2": ("dpm++2m", 25, 4.5, (0.0, 1.0), 3.0),
    "t2i1024": ("dpm++2m", 25, 4.5, (0.0, 1.0), 4.0),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_recipe_equals_the_paper(name):
    tc = load_preset(name).train
    got = (
        tc.lr,
        tc.global_batch,
        tc.grad_clip,
        tc.ema_decay,
        tc.cond_drop,
        tc.time_shift,
        tc.repa_weight,
        tc.repa_block,
    )
    assert got == PAPER[name]
    assert tc.betas == (0.9, 0.999) and tc.weight_decay == 0.0


def test_xl256_drops_lr_and_clip_after_160_of_320_epochs():
    tc = load_preset("xl256").train
    steps_per_epoch = 1_281_167 // 256  # ImageNet-1k train images / batch, the last partial batch dropped
    assert tc.steps == 320 * steps_per_epoch and tc.lr_drop_step == tc.grad_clip_drop_step == 160 * steps_per_epoch
    assert (tc.lr_drop_to, tc.grad_clip_drop_to) == (1e-5, 0.5)


@pytest.mark.parametrize("name", sorted(SAMPLING))
def test_preset_sampling_equals_the_release(name):
    sc = load_preset(name).sample
    assert (sc.solver, sc.steps, sc.cfg, tuple(sc.interval), sc.shift) == SAMPLING[name]


# ---- the time distribution ------------------------------------------------------------------------------


def test_c2i_times_are_logit_normal_0_1():
    _, t, drop = draw(0, 5, range(4000), (1, 1, 1), 0.1, 1.0)
    logit = torch.log(t / (1 - t)).double()
    # 4000 draws: the standard error of the mean is 1/sqrt(4000) = 0.016; of the std about 0.011
    assert abs(logit.mean().item()) < 0.06 and abs(logit.std().item() - 1) < 0.05
    assert abs(drop.float().mean().item() - 0.1) < 0.02  # binomial SE sqrt(.09/4000) = 0.005


def test_c2i_time_shift_maps_each_draw_by_the_closed_form():
    _, t1, _ = draw(0, 5, range(50), (1, 1, 1), 0.1, 1.0)
    _, t3, _ = draw(0, 5, range(50), (1, 1, 1), 0.1, 3.0)
    assert torch.allclose(t3, t1 / (t1 + (1 - t1) * 3.0), atol=1e-6)


def test_t2i_sigmas_are_the_release_grid_of_logit_normal_draws():
    _, sig, ts, drop = t2i_draw(0, 5, range(4000), (1, 1, 1), 0.1, 1.0)
    # shift 1: σ = i/1000 with i = floor(1000·sigmoid(n)); the cell midpoints are logit-normal up to the grid
    mid = (sig.double() * 1000 + 0.5) / 1000
    logit = torch.log(mid / (1 - mid))
    assert abs(logit.mean().item()) < 0.06 and abs(logit.std().item() - 1) < 0.06
    from pixeldit_cli.train.objective import t2i_sigmas

    grid = t2i_sigmas(1.0)
    idx = torch.round(sig.double() * 1000).long()
    assert torch.equal(sig, grid[idx].float())  # σ is a point of the release's grid
    assert torch.equal(ts, torch.floor(1000 * grid[idx]).float())  # and the network sees floor(1000·σ)
    assert abs(drop.float().mean().item() - 0.1) < 0.02


# ---- EMA, learning rate and clipping --------------------------------------------------------------------


def test_ema_update_by_hand():
    ema, p = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -2.0])]
    ema_update(ema, p, 0.9)
    # 0.9·1 + 0.1·3 = 1.2; 0.9·2 + 0.1·(−2) = 1.6
    assert torch.allclose(ema[0], torch.tensor([1.2, 1.6]))


def test_ema_after_one_real_step(tmp_path):
    from test_train import cfg_for, make_folder

    from pixeldit_cli.train import train

    data = make_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    train(cfg_for(data, **{"train.steps": 1, "train.ckpt_every": 1, "train.ema_decay": 0.75}), out, progress=False)
    st = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    torch.manual_seed(0)  # the trainer's initial weights are a function of train.seed = 0
    from pixeldit_cli import build_model

    init = build_model("PixelDiT-XS/4", num_classes=4).state_dict()
    k = "final_layer.linear.weight"
    assert not torch.equal(st["model"][k], init[k])  # the step moved the weights
    assert torch.allclose(st["ema"][k], 0.75 * init[k] + 0.25 * st["model"][k], atol=1e-7)
    import json

    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < rec["mfu"] < 2 and rec["img_per_s"] > 0  # the log line carries MFU (analytic FLOPs / matmul rate)


class TC:
    lr, lr_drop_step, lr_drop_to, warmup_steps = 1e-3, 100, 1e-4, 10
    grad_clip, grad_clip_drop_step, grad_clip_drop_to = 1.0, 100, 0.5


def test_lr_warmup_and_drop_boundaries():
    assert lr_at(TC, 0) == pytest.approx(1e-4)  # step 0 trains at 1/10 of the LR (warm-up over 10 steps)
    assert lr_at(TC, 9) == pytest.approx(1e-3)  # the 10th step reaches it
    assert lr_at(TC, 10) == 1e-3
    assert lr_at(TC, 99) == 1e-3 and lr_at(TC, 100) == 1e-4  # dropped from step 100 on, not 101
    assert clip_at(TC, 99) == 1.0 and clip_at(TC, 100) == 0.5


# ---- precision / recall: k changes the answer (brute force) ---------------------------------------------


def brute_precision_recall(ref, samples, k):
    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # index 0 is the point itself

    def covered(a, b, rb):
        d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
        return (d <= rb[None]).any(1).mean()

    return covered(samples, ref, radii(ref)), covered(ref, samples, radii(samples))


def test_precision_recall_depends_on_k_like_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(60, 8))
    samples = rng.normal(size=(50, 8)) * 1.6 + 0.4
    got = {k: precision_recall(ref, samples, k=k, mode="fp32") for k in (1, 3, 5)}
    want = {k: brute_precision_recall(ref, samples, k) for k in (1, 3, 5)}
    for k in got:
        assert got[k] == pytest.approx(want[k], abs=1e-6)  # a float32 mean over 50–60 points
    assert len({got[k] for k in got}) == 3  # k really changes the answer here
    assert precision_recall(ref, samples, mode="fp32") == got[3]  # ADM's k = 3 is the default


# ---- RMSNorm where eps dominates ------------------------------------------------------------------------


def test_rmsnorm_when_eps_dominates():
    n = RMSNorm(4, eps=1e-6)
    x = torch.full((1, 4), 1e-4)  # mean(x²) = 1e-8 << eps
    # y = x / sqrt(1e-8 + 1e-6) = 1e-4 / sqrt(1.01e-6) = 0.0995037...
    assert torch.allclose(n(x), torch.full((1, 4), 1e-4 / math.sqrt(1.01e-6)), rtol=1e-6)
    assert torch.equal(n(torch.zeros(2, 4)), torch.zeros(2, 4))
