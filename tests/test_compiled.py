"""Compiled pixel blocks (models/compiled.py): the same gradients as the plain network within fp32 tolerance,
deterministic run to run, bit-exact resume, the state dict untouched, and the auto rule as stated."""

import copy

import pytest
import torch
from test_train import cfg_for, make_folder, states_equal

from pixeldit_cli import build_model
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.models.compiled import compile_pixel_blocks, decide
from pixeldit_cli.train import train
from pixeldit_cli.train.objective import draw, flow_loss

ON = {"train.compile_pixel_blocks": "true"}


@pytest.fixture(scope="module", autouse=True)
def inductor_cache(tmp_path_factory):
    """Kernels compiled here go to a temporary cache, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "imgs")


def test_the_auto_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    kw = dict(whole_compile=False, fsdp=False, checkpointing=False)
    assert decide("auto", cpu, 256, **kw)[0] and decide("auto", cpu, 64, **kw)[0]
    assert not decide("auto", cpu, 32, **kw)[0]  # the smoke preset: too few pixels to repay the compile
    assert not decide("auto", cuda, 256, **kw)[0]
    for off in ("whole_compile", "fsdp", "checkpointing"):
        on, why = decide("auto", cpu, 256, **{**kw, off: True})
        assert not on and why.startswith("auto: off")
    assert decide("true", cuda, 16, **kw) == (True, "train.compile_pixel_blocks true")
    assert decide("False", cpu, 256, **kw)[0] is False  # YAML's `false` arrives as a bool, read as text


def test_without_a_compiler_auto_is_off_and_true_is_one_line(monkeypatch, tmp_path):
    import pixeldit_cli.models.compiled as compiled

    kw = dict(whole_compile=False, fsdp=False, checkpointing=False)
    monkeypatch.setattr(compiled, "cpu_compiler", lambda: None)
    on, why = decide("auto", torch.device("cpu"), 256, **kw)
    assert not on and "no C++ compiler" in why
    with pytest.raises(PixelDiTError, match="train.compile_pixel_blocks true: no C\\+\\+ compiler"):
        decide("true", torch.device("cpu"), 256, **kw)
    assert decide("false", torch.device("cpu"), 256, **kw)[0] is False
    monkeypatch.setattr(compiled, "cpu_compiler", lambda: "g++")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocker / "cache"))  # under a file: not creatable
    on, why = decide("auto", torch.device("cpu"), 256, **kw)
    assert not on and "not writable" in why


def test_true_without_a_compiler_stops_before_the_run_folder(data, tmp_path, monkeypatch):
    import pixeldit_cli.models.compiled as compiled

    monkeypatch.setattr(compiled, "cpu_compiler", lambda: None)
    with pytest.raises(PixelDiTError, match="no C\\+\\+ compiler"):
        train(cfg_for(data, **ON), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_gradients_equal_the_plain_network():
    torch.manual_seed(0)
    plain = build_model("PixelDiT-XS/4", num_classes=4)
    with torch.no_grad():  # every gate and modulation active (the fresh init zeroes them)
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fast = copy.deepcopy(plain)
    assert compile_pixel_blocks(fast) == len(fast.pixel_blocks) > 0
    assert list(fast.state_dict()) == list(plain.state_dict())  # names and tensors are the network's
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 3])
    noise, t, drop = draw(0, 1, range(4), (3, 16, 16), 0.1, 1.0)
    for net in (plain, fast):
        loss, _, _ = flow_loss(net, x, y, t, noise, drop, 4)
        loss.backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert any(p.grad.abs().max() > 0 for b in plain.pixel_blocks for p in b.parameters())


def test_compiled_training_is_deterministic_and_resumes_bit_exactly(data, tmp_path):
    train(cfg_for(data, **ON), tmp_path / "a", progress=False)
    s = train(cfg_for(data, **ON), tmp_path / "b", progress=False)
    assert s["compiled_pixel_blocks"] == "train.compile_pixel_blocks true"
    train(cfg_for(data, **{**ON, "train.steps": 2}), tmp_path / "half", progress=False)
    train(cfg_for(data, **ON), tmp_path / "half", resume="auto", progress=False)
    plain = train(cfg_for(data), tmp_path / "plain", progress=False)
    assert plain["compiled_pixel_blocks"].startswith("auto: off")  # 16² pixels
    ck = {
        n: torch.load(tmp_path / n / "checkpoints" / "last.pt", weights_only=True) for n in ("a", "b", "half", "plain")
    }
    for n in ("b", "half"):
        assert states_equal(ck["a"]["model"], ck[n]["model"]) and states_equal(ck["a"]["ema"], ck[n]["ema"]), n
    # four optimizer steps later the compiled run is the plain run within fp32 tolerance
    a, p = ck["a"]["model"], ck["plain"]["model"]
    assert a.keys() == p.keys() and max((a[k] - p[k]).abs().max().item() for k in a) < 1e-5


def test_a_bad_choice_is_one_line(data, tmp_path):
    with pytest.raises(PixelDiTError, match="train.compile_pixel_blocks must be auto, true or false, got 'yes'"):
        train(cfg_for(data, **{"train.compile_pixel_blocks": "yes"}), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_library_sampling_compiled_equals_plain_and_never_uses_stale_weights():
    """pixeldit.sample(..., compile=True): the frozen network within 1e-5 of the plain forward, the same
    images call after call, and after an in-place weight change the new weights' images (frozen constants
    are recompiled, not reused)."""
    from pixeldit_cli import sample
    from pixeldit_cli.solvers import noise_for

    torch.manual_seed(1)
    net = build_model("PixelDiT-XS/4", num_classes=4).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, y = noise_for(range(2), 0, (3, 16, 16)), torch.tensor([1, 2])
    kw = dict(solver="flowdpm", steps=3, cfg=2.0, interval=(0.0, 1.0), precision="fp32")
    plain = sample(net, x, y, fast=False, **kw)
    fast = sample(net, x, y, compile=True, **kw)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)
    assert torch.equal(sample(net, x, y, compile=True, **kw), fast)  # deterministic, and kept
    with torch.no_grad():
        net.final_layer.linear.weight.mul_(1.5)  # a LoRA merge, an optimizer step: weights changed in place
    moved = sample(net, x, y, fast=False, **kw)
    assert (moved - plain).abs().max() > 1e-3
    torch.testing.assert_close(sample(net, x, y, compile=True, **kw), moved, rtol=0, atol=1e-5)


def test_sample_job_with_compile_matches_the_plain_job(tmp_path):
    """`pixeldit sample --compile` (frozen on a CPU in fp32): the official fixture's samples within one uint8
    level of the plain job's."""
    import numpy as np
    from conftest import FIXTURES
    from typer.testing import CliRunner

    from pixeldit_cli.cli import app

    runner = CliRunner()
    args = ["sample", "--ckpt", str(FIXTURES / "official_c2i_small.ckpt"), "--class", "1", "--n", "3", "--steps",
            "4", "--height", "16", "--width", "16", "--format", "npz", "--precision", "fp32"]  # fmt: skip
    for name, extra in (("plain", []), ("compiled", ["--compile"])):
        r = runner.invoke(app, [*args, *extra, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    a, b = (np.load(tmp_path / n / "samples.npz")["arr_0"].astype(int) for n in ("plain", "compiled"))
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99
