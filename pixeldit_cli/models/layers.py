"""Building blocks shared by both PixelDiT networks.

Every numeric detail here follows the official release (docs/conventions.md#numerics): RMSNorm statistics
in fp32, a timestep embedding with max_period 10 and cos before sin, 2-D RoPE on linspace(0, 16)
positions with x/y frequencies alternating pair by pair, and a pixel sin-cos table with the column
coordinate first. These look odd; they are what the released weights were trained with.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#################################################################################
#                               Normalisation                                   #
#################################################################################


class RMSNorm(nn.Module):
    """RMSNorm(eps=1e-6): statistics in fp32, cast back, *then* the weight (dtype promotion as official)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


#################################################################################
#                      Timestep and position embeddings                         #
#################################################################################


def timestep_features(t, dim: int = 256, max_period: float = 10.0):
    """[cos(t·f), sin(t·f)] with f_k = max_period^(-k/half). max_period is 10 in PixelDiT, not 10000."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim): cos first


class TimestepEmbedder(nn.Module):
    """Sinusoidal features (fp32) -> Linear -> SiLU -> Linear. Keys mlp.0 / mlp.2 as released."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        return self.mlp(timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def rope_2d(head_dim: int, rows: int, cols: int, device=None):
    """Complex RoPE table (rows·cols, head_dim/2) for row-major tokens l = i·cols + j.

    Positions are linspace(0, 16, n) on each axis — every axis spans [0, 16] whatever the resolution
    (the 16 is hard-coded upstream, it is not the patch size). Pair 2k rotates by X_j·f_k, pair 2k+1
    by Y_i·f_k, with f_k = 10000^(-4k/head_dim).
    """
    assert head_dim % 4 == 0, f"2-D RoPE needs a head dim divisible by 4, got {head_dim}"
    freqs = 1.0 / (10000 ** (torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim))
    xs = torch.linspace(0, 16, cols, device=device, dtype=torch.float32)
    ys = torch.linspace(0, 16, rows, device=device, dtype=torch.float32)
    ang_x = torch.outer(xs, freqs)  # (cols, n)
    ang_y = torch.outer(ys, freqs)  # (rows, n)
    ang = torch.stack(
        [ang_x[None, :, :].expand(rows, cols, -1), ang_y[:, None, :].expand(rows, cols, -1)], dim=-1
    )  # (rows, cols, n, 2): x, y alternate pair by pair
    ang = ang.reshape(rows * cols, head_dim // 2)
    return torch.polar(torch.ones_like(ang), ang)


def rope_1d(head_dim: int, length: int, device=None):
    """Standard adjacent-pair RoPE on integer positions 0..length-1 (the T2I text tokens)."""
    freqs = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    ang = torch.outer(torch.arange(length, device=device, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(ang), ang)


def apply_rope(x, freqs_cis):
    """x: (B, heads, N, Dh); freqs_cis: (N, Dh/2) complex. Rotation in complex64, cast back to x.dtype."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis).flatten(-2).type_as(x)


def pixel_sincos(height: int, width: int, dim: int, dtype=torch.float32, device=None):
    """Absolute pixel table (H·W, dim): [sin(c·w), cos(c·w), sin(r·w), cos(r·w)], column first, float64."""
    q = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    ac = cols.reshape(-1, 1) * omega
    ar = rows.reshape(-1, 1) * omega
    table = torch.cat([torch.sin(ac), torch.cos(ac), torch.sin(ar), torch.cos(ar)], dim=1)
    return table.to(dtype=dtype, device=device)


#################################################################################
#                          Attention and feed-forward                           #
#################################################################################


class RotaryAttention(nn.Module):
    """qkv (no bias) -> per-head q/k RMSNorm -> RoPE -> SDPA -> proj. Width W, `heads` heads."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_norm = RMSNorm(width // heads)
        self.k_norm = RMSNorm(width // heads)
        self.proj = nn.Linear(width, width)

    def forward(self, x, freqs_cis):
        B, N, W = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, N, Dh)
        q = apply_rope(self.q_norm(q), freqs_cis)
        k = apply_rope(self.k_norm(k), freqs_cis)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, W))


def swiglu_hidden(dim: int) -> int:
    """The SwiGLU hidden width the release uses: int(2 · 4D / 3) (3072 for D = 1152)."""
    return int(2 * (4 * dim) / 3)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)  # registration order w1, w3, w2 as released
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class PixelMLP(nn.Module):
    """fc1 (d -> 4d) -> exact erf GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


#################################################################################
#                      Pixel level: PiT block and patchify                      #
#################################################################################


class PiTBlock(nn.Module):
    """Pixel Transformer block: pixel-wise AdaLN, token compaction to the patch grid, attention, expansion.

    X is (B·L, P, d): one row per patch token, P = p² pixels of d channels. The AdaLN linear maps the
    per-patch condition to 6·P·d values laid out [pixel][6 chunks][d] — every pixel gets its own
    shift/scale/gate. Attention runs over the L compacted tokens (width A), not the H·W pixels.
    """

    def __init__(self, cond_dim: int, pixel_dim: int, pixels: int, attn_dim: int, heads: int):
        super().__init__()
        self.compress_to_attn = nn.Linear(pixels * pixel_dim, attn_dim)
        self.expand_from_attn = nn.Linear(attn_dim, pixels * pixel_dim)
        self.norm1 = RMSNorm(pixel_dim)
        self.attn = RotaryAttention(attn_dim, heads)
        self.norm2 = RMSNorm(pixel_dim)
        self.mlp = PixelMLP(pixel_dim, 4 * pixel_dim)
        self.adaLN_modulation = nn.Sequential(nn.Linear(cond_dim, 6 * pixels * pixel_dim))

    def forward(self, X, s_cond, B: int, freqs_cis):
        BL, P, d = X.shape
        mod = self.adaLN_modulation(s_cond).view(BL, P, 6 * d)  # pixel-major layout
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)  # each (B·L, P, d)
        h = modulate(self.norm1(X), shift1, scale1).reshape(B, BL // B, P * d)
        h = self.attn(self.compress_to_attn(h), freqs_cis)  # (B, L, A): token compaction
        X = X + gate1 * self.expand_from_attn(h).view(BL, P, d)
        X = X + gate2 * self.mlp(modulate(self.norm2(X), shift2, scale2))
        return X


class PixelEmbedder(nn.Module):
    """Per-pixel Linear(C -> d). Key: pixel_embedder.proj."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, dim)

    def forward(self, x):
        return self.proj(x)


class FinalLayer(nn.Module):
    """RMSNorm(d) -> Linear(d -> C). No AdaLN here (unlike DiT)."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.linear = nn.Linear(dim, out_channels)

    def forward(self, x):
        return self.linear(self.norm(x))


def patchify(x, p: int):
    """(B, C, H, W) -> (B, L, C·p²); token l = i·Ws + j, features ordered (c, ki, kj) as torch unfold."""
    return F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)


def pixel_tokens(x_pix, p: int):
    """(B, H, W, d) -> (B·L, p², d): one row per patch, pixel index ki·p + kj inside it."""
    B, H, W, d = x_pix.shape
    x = x_pix.view(B, H // p, p, W // p, p, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B * (H // p) * (W // p), p * p, d)


def unpatchify_pixels(X, B: int, H: int, W: int, p: int):
    """(B·L, p², C) -> (B, C, H, W): the exact inverse of `pixel_tokens` (the release's torch fold)."""
    C = X.shape[-1]
    x = X.view(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, H, W)
