"""oneDNN-packed Linear weights (models/packed.py): the same network within the parity contract.

The packed path must stay within 1e-5 of the official outputs on the official-format fixtures (the
contract the plain path meets), be deterministic run to run, leave the model exactly as it was after
the block, fall back to the plain Linear where gradients are needed, and sample within 1e-5 of the
plain solver (images in [-1, 1]).
"""

import pytest
import torch
from safetensors.torch import load_file

from pixeldit_cli import load_model
from pixeldit_cli.models import packed
from pixeldit_cli.models.packed import available, packed_linears
from pixeldit_cli.solvers import solve

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize(
    "name,io_name,keys",
    [
        ("official_c2i_small.ckpt", "official_c2i_small_io.safetensors", ("x", "t", "y", "out_ema")),
        ("official_t2i_small.pth", "official_t2i_small_io.safetensors", ("x", "t", "y", "out")),
    ],
)
def test_packed_forward_meets_the_official_fixture_tolerance(fixtures, monkeypatch, name, io_name, keys):
    monkeypatch.setattr(packed, "MIN_MACS", 0)  # the fixtures' layers are small: pack them all the same
    io = load_file(fixtures / io_name)
    m = load_model(fixtures / name)
    x, t, y, want = (io[k] for k in keys)
    with torch.inference_mode():
        plain = m(x, t, y)
        with packed_linears(m):
            a, b = m(x, t, y), m(x, t, y)
        after = m(x, t, y)
    assert (a - want).abs().max() <= 1e-5 and 0 < (a - plain).abs().max() <= 1e-5  # really another kernel
    assert torch.equal(a, b)  # deterministic
    assert torch.equal(after, plain)  # the model is restored
    assert not any("forward" in mod.__dict__ for mod in m.modules())


def test_gradients_use_the_plain_linear(c2i):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([0.3, 0.6]), torch.tensor([1, 2])
    with packed_linears(c2i):
        out = c2i(x, t, y)
    assert out.requires_grad  # autograd saw the ordinary Linear
    with torch.no_grad():
        assert torch.equal(out.detach(), c2i(x, t, y))


def test_packed_sampling_stays_within_the_parity_tolerance(c2i, monkeypatch):
    monkeypatch.setattr(packed, "MIN_MACS", 0)
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 3, 5, 9])
    plain, _ = solve(c2i, noise, y, solver="flowdpm", steps=8, cfg=3.0, interval=(0.1, 0.9))
    with packed_linears(c2i):
        fast, _ = solve(c2i, noise, y, solver="flowdpm", steps=8, cfg=3.0, interval=(0.1, 0.9))
    assert 0 < (fast - plain).abs().max() <= 1e-5
