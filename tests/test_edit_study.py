"""The measured-edit protocol: the independent classifier, the sweep's bookkeeping, the selection rule."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize

from pixeldit_cli import build_model
from studies.classifier import accuracy, load_classifier, predict, save_classifier, train_classifier
from studies.edit_study import Pair, choose, edit_pair, study, summarize, table_markdown


def bars(n, seed):
    """Two classes anyone can tell apart: a bright bar in the top half (0) or the bottom half (1), plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=g) - 0.5
    for i in range(n):
        r = int(torch.randint(0, 6, (1,), generator=g)) + (0 if y[i] == 0 else 9)
        x[i, :, r : r + 2, 2:14] = 1.0
    return x, y


def test_classifier_learns_a_separable_task_and_round_trips(tmp_path):
    x, y = bars(512, 0)
    xt, yt = bars(256, 1)
    m = train_classifier(x, y, 2, epochs=3, batch_size=64, width=4)
    assert accuracy(m, xt, yt.numpy()) >= 0.98  # chance is 0.5; the held-out set shares no image
    save_classifier(m, tmp_path / "c.pt", test_accuracy=0.5)
    m2, meta = load_classifier(tmp_path / "c.pt")  # weights_only load: no code in the file
    assert meta == {"test_accuracy": 0.5}
    assert np.array_equal(predict(m, xt), predict(m2, xt))
    # uint8 HWC RGB input is the same picture as float CHW gray: (v/127.5 − 1) averaged over equal channels
    u8 = ((xt.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    rgb = u8.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous()
    assert np.array_equal(predict(m, rgb), predict(m, u8.float() / 127.5 - 1))
    # a larger image is centre-cropped to the trained size: Fashion's 28×28 inside the model's 32×32
    padded = torch.nn.functional.pad(xt, (2, 2, 2, 2), value=-1.0)
    assert np.array_equal(predict(m, padded), predict(m, xt))


def test_summarize_and_choose_by_hand():
    rows = [
        dict(src=7, tgt=9, to_target=0.5, to_source=0.25, ssim=0.6, mse=0.02, bg_ssim=0.7, bg_mse=0.01),
        dict(src=5, tgt=7, to_target=0.25, to_source=0.75, ssim=0.8, mse=0.01),
        dict(src=1, tgt=1, to_target=1.0, to_source=0.75, ssim=0.9, mse=0.001),
    ]
    s = summarize(rows)
    assert s["success"] == pytest.approx(0.375) and s["kept"] == pytest.approx(0.75)
    assert s["ssim"] == pytest.approx(0.7) and s["mse"] == pytest.approx(0.015)
    assert s["bg_ssim"] == pytest.approx(0.7)  # only the pair with a box has a background
    a = dict(success=0.40, ssim=0.50)
    b = dict(success=0.37, ssim=0.80)  # within 0.05 of the best, keeps more: chosen
    c = dict(success=0.30, ssim=0.95)  # keeps most, but too far behind
    assert choose([a, b, c]) is b
    assert choose([a, c]) is a


@pytest.fixture(scope="module")
def tiny():
    model = randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=1, num_classes=3), 0).eval()
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = np.array([0, 1, 2] * 4)
    clf = train_classifier(imgs.float()[:, :1] / 127.5 - 1, torch.as_tensor(labels), 3, epochs=1, batch_size=4, width=2)
    return model, clf, imgs, labels


def test_identity_edit_with_equal_guidance_is_the_source(tiny):
    model, clf, imgs, labels = tiny
    src = imgs[labels == 1]
    row, out = edit_pair(model, clf, src, Pair(1, 1, (0, 0, 16, 8)), strength=0.8, tgt_cfg=2.0, src_cfg=2.0, steps=5)
    assert torch.equal(out, src)  # pixel space: the velocity difference is exactly zero
    assert row["mse"] == 0 and row["ssim"] == pytest.approx(1.0) and row["bg_ssim"] == pytest.approx(1.0)
    assert row["to_source"] == pytest.approx(float((predict(clf, src) == 1).mean()))


def test_study_sweeps_every_setting_and_pair(tiny):
    model, clf, imgs, labels = tiny
    pairs = [Pair(0, 2), Pair(1, 1)]
    res = study(
        model, clf, imgs, labels, pairs, per_pair=3, strengths=[0.0, 0.6], tgt_cfgs=[1.0, 3.0], src_cfg=1.0, steps=5
    )
    assert [(s["strength"], s["tgt_cfg"]) for s in res["settings"]] == [(0.0, 1.0), (0.0, 3.0), (0.6, 1.0), (0.6, 3.0)]
    for s in res["settings"]:
        assert [(r["src"], r["tgt"], r["n"]) for r in s["rows"]] == [(0, 2, 3), (1, 1, 3)]
    # strength 0 edits nothing: every image is its source, so "success" is the classifier's floor on sources
    zero = res["settings"][0]
    assert torch.equal(res["edits"][(0.0, 1.0, 0, 2)], res["sources"][pairs[0]])
    assert zero["success"] == pytest.approx(res["baseline"]["0->2"]["already_target"])
    assert zero["ssim"] == pytest.approx(1.0)
    assert torch.equal(res["sources"][pairs[0]], imgs[torch.as_tensor(np.flatnonzero(labels == 0)[:3])])
    ch = res["chosen"]
    assert ch == {k: choose(res["settings"])[k] for k in ("strength", "tgt_cfg")}
    md = table_markdown(res, ["a", "b", "c"])
    assert md.count("\n| 0.") == 4 and "| a → c |" in md and "**chosen**" in md


def test_demo_summary_gathers_every_stage(tmp_path):
    """scripts/demo_summary.py: the verdict files of make demo's stages -> one summary.json with the chosen
    edit setting's numbers (found in the sweep by the study's key), stage times and the total; a stage that
    did not run is None, not guessed."""
    import json
    import subprocess
    import sys

    from pixeldit_cli.io import write_json

    write_json(tmp_path / "judge.json", {"agreement": 0.62, "se": 0.034, "n": 200, "per_class": {"Bag": 0.9},
                                         "classifier_test_accuracy": 0.905})  # fmt: skip
    sweep = [{"strength": s, "tgt_cfg": 4.0, "success": x, "kept": 0.9, "ssim": 0.5, "bg_ssim": 0.7,
              "rows": [{"src": 7, "tgt": 9, "to_target": x}]} for s, x in ((0.8, 0.2), (0.96, 0.3))]  # fmt: skip
    (tmp_path / "edit").mkdir()
    write_json(tmp_path / "edit" / "edit_study.json", {"settings": {"per_pair": 10}, "baseline": {},
                                                       "chosen": {"strength": 0.96, "tgt_cfg": 4.0}, "sweep": sweep})  # fmt: skip
    (tmp_path / "timings.txt").write_text(
        "flops         1 s\ntrain       301 s\nsample       12 s\ntotal       480 s\n"
    )
    script = Path(__file__).resolve().parents[1] / "scripts" / "demo_summary.py"
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["samples"]["agreement"] == 0.62 and s["samples"]["se"] == 0.034 and s["fid"] is None
    assert (
        s["edit"]["strength"] == 0.96
        and s["edit"]["success"] == 0.3
        and s["edit"]["to_target_per_pair"] == {"7->9": 0.3}
    )
    assert s["seconds"] == {"flops": 1, "train": 301, "sample": 12} and s["total_seconds"] == 480
    assert "classifier agreement 62.0%" in r.stdout and "FID missing" in r.stdout
