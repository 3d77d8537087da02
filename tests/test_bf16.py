"""The bf16 autocast path (what CUDA runs by default), exercised on the CPU with tiny models.

Tolerance, derived: autocast rounds both operands of every matmul to bf16 (unit roundoff u = 2^-8) and
accumulates in fp32, so one matmul's output carries a relative error of at most about 2u. Errors of
sequential matmuls add (to first order; RMSNorm keeps each layer's scale near 1), so after L matmuls on
the longest path the relative L2 error is at most about 2·u·L. A dtype bug (a bf16 output returned, a
time or label rounded the wrong way, autocast silently off) shows up either as an O(1) error or as
zero error — so each test also asserts the error is above u/64: bf16 really ran.
"""

import json

import torch
from conftest import randomize
from safetensors.torch import save_file

from pixeldit_cli import build_model
from pixeldit_cli.solvers import Velocity, noise_for, solve
from pixeldit_cli.train.objective import flow_loss

U = 2.0**-8


def longest_matmul_path(cfg) -> int:
    """Matmuls one input passes through in sequence: embedders, per patch block qkv·QK·AV·proj·w1·w2, per
    pixel block compaction/attention/expansion/MLP, final layer (upper bounds)."""
    return 4 + 6 * cfg.patch_depth + 9 * cfg.pixel_depth + 2


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_c2i_forward_under_bf16_autocast(c2i):
    x, t, y = noise_for(range(2), 0, (3, 16, 16)), torch.tensor([0.3, 0.8]), torch.tensor([1, 7])
    with torch.no_grad():
        want = c2i(x, t, y)
        got = Velocity(c2i, y, autocast=torch.bfloat16).net(x, t, y)
    assert got.dtype == torch.float32
    err = rel(got, want)
    assert U / 64 < err < 2 * U * longest_matmul_path(c2i.config), err


def test_t2i_forward_under_bf16_autocast_sees_bf16_times(t2i):
    cfg = t2i.config
    seen = []

    class Spy(torch.nn.Module):
        config = cfg

        def forward(self, x, t, y):
            seen.append(t.clone())
            return t2i(x, t, y)

    x = noise_for(range(1), 0, (3, 32, 32))
    y, u = torch.randn(1, cfg.text_len, cfg.text_dim), torch.randn(1, cfg.text_len, cfg.text_dim)
    with torch.no_grad():
        want, _ = solve(t2i, x, y, u, solver="dpm++2m", steps=3, cfg=3.0)
        got, _ = solve(Spy(), x, y, u, solver="dpm++2m", steps=3, cfg=3.0, autocast=torch.bfloat16)
    assert all(torch.equal(t, t.to(torch.bfloat16).float()) for t in seen)  # the release feeds bf16-rounded 1000·σ
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    err = rel(got, want)
    assert U / 64 < err < 2 * U * longest_matmul_path(cfg) * 3, err  # three solver steps compound


def test_sampler_under_bf16_autocast(c2i):
    x, y = noise_for(range(2), 3, (3, 16, 16)), torch.tensor([2, 5])
    with torch.no_grad():
        want, _ = solve(c2i, x, y, None, solver="flowdpm", steps=4, cfg=2.0)
        got, st = solve(c2i, x, y, None, solver="flowdpm", steps=4, cfg=2.0, autocast=torch.bfloat16)
    assert got.dtype == torch.float32 and st.evals == 7  # t = 0, 1/4, 1/2, 3/4: guidance for 0 < t < 1 skips t = 0
    err = rel(got, want)
    assert U / 64 < err < 2 * U * longest_matmul_path(c2i.config) * 4, err


def test_training_loss_and_gradients_under_bf16_autocast(c2i):
    model = randomize(
        build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), 0
    ).train()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    noise, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([0.2, 0.7])
    y, drop = torch.tensor([1, 2]), torch.tensor([False, True])
    grads = {}
    for name, ac in (("fp32", None), ("bf16", torch.bfloat16)):
        model.zero_grad()
        loss, lf, _ = flow_loss(model, x, y, t, noise, drop, 10, autocast=ac)
        loss.backward()
        assert loss.dtype == torch.float32
        grads[name] = (loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    L = longest_matmul_path(model.config)
    assert abs(grads["bf16"][0] - grads["fp32"][0]) / grads["fp32"][0] < 2 * U * L
    err = rel(grads["bf16"][1], grads["fp32"][1])
    assert U / 64 < err < 2 * U * 2 * L, err  # backward doubles the path


def test_sample_job_in_bf16_on_cpu_records_it(c2i, tmp_path, monkeypatch, capfd):
    import pixeldit_cli.precision as precision
    from pixeldit_cli.sampling import SampleJob, run

    path = tmp_path / "tiny.safetensors"
    save_file(c2i.state_dict(), str(path), metadata={"pixeldit_config": json.dumps(c2i.config.to_dict())})
    base = dict(ckpt=str(path), n=2, solver="euler", steps=2, cfg=2.0, height=16, width=16, format="npz")
    # a CPU without native bf16 (the probe's answer simulated): asked-for bf16 runs, after a warning
    monkeypatch.setattr(precision, "cpu_bf16", lambda: precision.CpuBf16(False, 0.004, (), "probe"))
    precision._warn_once.cache_clear()
    r16 = run(SampleJob(**base, out=str(tmp_path / "b"), precision="bf16"), progress=False)
    assert "bf16 on this CPU is emulated" in capfd.readouterr().err and "emulated" in r16["precision_reason"]
    r32 = run(SampleJob(**base, out=str(tmp_path / "f"), precision="fp32"), progress=False)
    assert r16["dtype"] == "bf16" and r32["dtype"] == "fp32" and r16["device"] == "cpu"
    import numpy as np

    a = np.load(tmp_path / "b" / "samples.npz")["arr_0"].astype(int)
    b = np.load(tmp_path / "f" / "samples.npz")["arr_0"].astype(int)
    assert 0 < np.abs(a - b).mean() < 255 * 2 * U * longest_matmul_path(c2i.config)
