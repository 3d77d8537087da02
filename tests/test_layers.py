"""Building blocks against hand-derived values and the facts of docs/conventions.md#numerics."""

import math

import pytest
import torch

from pixeldit_cli.models.layers import (
    PiTBlock,
    RMSNorm,
    apply_rope,
    patchify,
    pixel_sincos,
    pixel_tokens,
    rope_1d,
    rope_2d,
    swiglu_hidden,
    timestep_features,
    unpatchify_pixels,
)


def test_timestep_features_max_period_10_cos_first():
    t = torch.tensor([0.0, 0.5, 700.0])
    e = timestep_features(t)
    assert e.shape == (3, 256)
    # t = 0: cos = 1 for all 128 frequencies, then sin = 0
    assert torch.equal(e[0, :128], torch.ones(128)) and torch.equal(e[0, 128:], torch.zeros(128))
    # frequencies 10^(-k/128): f_0 = 1, f_127 ≈ 0.10182 (max_period 10, not 10000)
    for k in (0, 1, 64, 127):
        f = 10 ** (-k / 128)
        assert e[1, k].item() == pytest.approx(math.cos(0.5 * f), abs=1e-6)
        assert e[1, 128 + k].item() == pytest.approx(math.sin(0.5 * f), abs=1e-6)
    assert 10 ** (-127 / 128) == pytest.approx(0.10182, abs=1e-5)
    # T2I sees 1000·σ: large arguments, still fp32 arithmetic
    assert e[2, 127].item() == pytest.approx(math.cos(700 * 10 ** (-127 / 128)), abs=1e-4)


def test_rope_2d_positions_are_linspace_0_16_alternating_x_y():
    dh, rows, cols = 8, 3, 16  # 2 frequencies: f0 = 1, f1 = 10000^(-4/8) = 0.01
    table = rope_2d(dh, rows, cols)
    assert table.shape == (rows * cols, dh // 2) and table.dtype == torch.complex64
    ang = torch.angle(table).double()
    i, j = 2, 1  # token l = i*cols + j; X = 16*j/15, Y = 16*i/2
    X, Y = 16 * j / 15, 16 * i / 2
    expect = [X * 1.0, Y * 1.0, X * 0.01, Y * 0.01]
    got = ang[i * cols + j].tolist()
    for e, g in zip(expect, got):  # compare on the circle
        assert math.remainder(e - g, 2 * math.pi) == pytest.approx(0, abs=1e-5)
    # the last column sits at exactly 16 whatever the width (not at cols - 1)
    assert torch.angle(rope_2d(4, 1, 64)[63, 0]).item() == pytest.approx(math.remainder(16.0, 2 * math.pi), abs=1e-5)
    # a grid of size 1 is position 0
    assert torch.allclose(rope_2d(4, 1, 1), torch.ones(1, 2, dtype=torch.complex64))


def test_apply_rope_rotates_adjacent_pairs():
    x = torch.tensor([[[[1.0, 0.0, 0.0, 2.0]]]])  # (B, h, N=1, Dh=4): pairs (1,0) and (0,2)
    f = torch.polar(torch.ones(1, 2), torch.tensor([[math.pi / 2, math.pi]]))
    out = apply_rope(x, f)[0, 0, 0]
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 0.0, -2.0]), atol=1e-6)


def test_rope_1d_integer_positions():
    ang = torch.angle(rope_1d(4, 5)).double()  # g = 1, 0.01
    assert ang[3, 0].item() == pytest.approx(3.0, abs=1e-6)
    assert ang[3, 1].item() == pytest.approx(0.03, abs=1e-6)


def test_pixel_sincos_column_first_float64():
    tab = pixel_sincos(4, 5, 16)  # ω = 1, 0.1, 0.01, 0.001
    r, c = 2, 3
    v = tab[r * 5 + c]
    w = [1, 0.1, 0.01, 0.001]
    expect = (
        [math.sin(c * x) for x in w]
        + [math.cos(c * x) for x in w]
        + [math.sin(r * x) for x in w]
        + [math.cos(r * x) for x in w]
    )
    assert torch.allclose(v.double(), torch.tensor(expect, dtype=torch.float64), atol=1e-7)


def test_rmsnorm_closed_form_and_dtype_promotion():
    n = RMSNorm(4)
    with torch.no_grad():
        n.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # mean square = 6.25, rms = 2.5
    assert torch.allclose(n(x), torch.tensor([[1.2, 3.2, 0.0, 0.0]]), atol=1e-5)
    assert n(x.bfloat16()).dtype == torch.float32  # weight multiply after the cast back


def test_swiglu_hidden_sizes():
    assert swiglu_hidden(1152) == 3072 and swiglu_hidden(1536) == 4096 and swiglu_hidden(768) == 2048
    assert swiglu_hidden(1024) == 2730


def test_patch_and_pixel_token_orders():
    B, C, H, W, p = 1, 2, 4, 6, 2
    x = torch.arange(B * C * H * W, dtype=torch.float32).view(B, C, H, W)
    s = patchify(x, p)  # (B, L, C*p*p), token l = i*Ws + j, feature c*p*p + ki*p + kj
    i, j, c, ki, kj = 1, 2, 1, 0, 1
    assert s[0, i * 3 + j, c * 4 + ki * 2 + kj] == x[0, c, i * 2 + ki, j * 2 + kj]
    X = pixel_tokens(x.permute(0, 2, 3, 1), p)  # (B*L, p*p, C), pixel index ki*p + kj
    assert torch.equal(X[i * 3 + j, ki * 2 + kj], x[0, :, i * 2 + ki, j * 2 + kj])
    assert torch.equal(unpatchify_pixels(X, B, H, W, p), x)  # exact inverse


def test_pit_adaln_is_pixel_major():
    """Only the [pixel][6][d] reading makes pixel 1's gate (and nothing else) open in this hand-built case."""
    torch.manual_seed(0)
    d, P, A = 4, 4, 8
    blk = PiTBlock(cond_dim=3, pixel_dim=d, pixels=P, attn_dim=A, heads=2).eval()
    with torch.no_grad():
        for prm in blk.parameters():
            prm.zero_()
        blk.norm1.weight.fill_(1)
        blk.norm2.weight.fill_(1)
        blk.expand_from_attn.bias.fill_(1.0)  # the attention branch contributes exactly 1 everywhere
        bias = blk.adaLN_modulation[0].bias.view(P, 6, d)
        bias[1, 2] = 2.0  # pixel 1, chunk 2 = gate1
    X = torch.randn(2, P, d)  # (B·L = 2, P, d)
    out = blk(X, torch.zeros(2, 3), B=1, freqs_cis=rope_2d(4, 1, 2))
    delta = out - X
    assert torch.allclose(delta[:, 1], torch.full((2, d), 2.0))
    assert torch.equal(delta[:, [0, 2, 3]], torch.zeros(2, 3, d))
