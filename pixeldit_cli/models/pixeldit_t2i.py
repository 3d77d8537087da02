"""PixelDiT-T2I: MM-DiT blocks on the patch path, the same pixel path (docs/conventions.md).

Conventions (hazards, opposite to the class-conditional model): the timestep is 1000·σ with σ = 1
NOISE, and the output is v = ε − x. The text enters only through joint attention — the AdaLN
condition is SiLU(t_emb) alone, no pooled text vector — and no attention mask is ever used, so padded
text positions are attended to (they carry real Gemma states).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .base import PixelDiTBase, Semantics
from .config import ModelConfig
from .layers import (
    FinalLayer,
    PiTBlock,
    PixelEmbedder,
    RMSNorm,
    SwiGLU,
    TimestepEmbedder,
    apply_rope,
    modulate,
    patchify,
    rope_1d,
    rope_2d,
)
from .pixeldit import PatchEmbedder

#################################################################################
#                                Text embedder                                  #
#################################################################################


class TextEmbedder(nn.Module):
    """Linear(2304 -> D) then RMSNorm; the learned positions are added after the norm (by the network)."""

    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(text_dim, hidden)
        self.norm = RMSNorm(hidden)

    def forward(self, y):
        return self.norm(self.proj(y))


#################################################################################
#                               MM-DiT block                                    #
#################################################################################


class JointAttention(nn.Module):
    """Two streams, one softmax: [text; image] (text first), per-stream qkv / q-k norms / RoPE / proj."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        dh = width // heads
        self.qkv_x, self.qkv_y = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, 3 * width, bias=False)
        self.q_norm_x, self.k_norm_x = RMSNorm(dh), RMSNorm(dh)
        self.q_norm_y, self.k_norm_y = RMSNorm(dh), RMSNorm(dh)
        self.proj_x, self.proj_y = nn.Linear(width, width), nn.Linear(width, width)

    def _qkv(self, linear, q_norm, k_norm, h, rope):
        B, N, W = h.shape
        q, k, v = linear(h).view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        return apply_rope(q_norm(q), rope), apply_rope(k_norm(k), rope), v

    def forward(self, x, y, rope_x, rope_y):
        B, Nx, W = x.shape
        Ny = y.shape[1]
        qx, kx, vx = self._qkv(self.qkv_x, self.q_norm_x, self.k_norm_x, x, rope_x)
        qy, ky, vy = self._qkv(self.qkv_y, self.q_norm_y, self.k_norm_y, y, rope_y)
        o = F.scaled_dot_product_attention(
            torch.cat([qy, qx], dim=2), torch.cat([ky, kx], dim=2), torch.cat([vy, vx], dim=2)
        )  # (B, h, Ny + Nx, Dh), no mask
        o = o.transpose(1, 2).reshape(B, Ny + Nx, W)
        return self.proj_x(o[:, Ny:]), self.proj_y(o[:, :Ny])


class MMDiTBlock(nn.Module):
    """Image stream x and text stream y, each with its own norms, AdaLN (from the same condition) and SwiGLU."""

    def __init__(self, hidden: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm_x1, self.norm_y1 = RMSNorm(hidden), RMSNorm(hidden)
        self.attn = JointAttention(hidden, heads)
        self.norm_x2, self.norm_y2 = RMSNorm(hidden), RMSNorm(hidden)
        self.mlp_x, self.mlp_y = SwiGLU(hidden, mlp_hidden), SwiGLU(hidden, mlp_hidden)
        self.adaLN_modulation_img = nn.Sequential(nn.Linear(hidden, 6 * hidden))
        self.adaLN_modulation_txt = nn.Sequential(nn.Linear(hidden, 6 * hidden))

    def forward(self, x, y, c, rope_x, rope_y):
        sx1, cx1, gx1, sx2, cx2, gx2 = self.adaLN_modulation_img(c).chunk(6, dim=-1)
        sy1, cy1, gy1, sy2, cy2, gy2 = self.adaLN_modulation_txt(c).chunk(6, dim=-1)
        ax, ay = self.attn(modulate(self.norm_x1(x), sx1, cx1), modulate(self.norm_y1(y), sy1, cy1), rope_x, rope_y)
        x = x + gx1 * ax
        y = y + gy1 * ay
        x = x + gx2 * self.mlp_x(modulate(self.norm_x2(x), sx2, cx2))
        y = y + gy2 * self.mlp_y(modulate(self.norm_y2(y), sy2, cy2))
        return x, y


#################################################################################
#                                 The network                                   #
#################################################################################


class PixelDiTT2I(PixelDiTBase):
    """forward(x (B,3,H,W), t (B,) = 1000·σ, y (B, Lt, text_dim) text states) -> v = ε − x."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        D, d, p, C = cfg.hidden_size, cfg.pixel_hidden, cfg.patch_size, cfg.in_channels
        # Registration order = the official state-dict order (here the final layer comes last).
        self.y_pos_embedding = nn.Parameter(torch.zeros(1, cfg.text_len, D))
        self.pixel_embedder = PixelEmbedder(C, d)
        self.s_embedder = PatchEmbedder(C * p * p, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = TextEmbedder(cfg.text_dim, D)
        self.patch_blocks = nn.ModuleList(
            [MMDiTBlock(D, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.patch_depth)]
        )
        self.pixel_blocks = nn.ModuleList(
            [PiTBlock(D, d, p * p, cfg.pixel_attn_hidden, cfg.pixel_heads) for _ in range(cfg.pixel_depth)]
        )
        self.final_layer = FinalLayer(d, C)
        self._tables = {}
        self.grad_checkpointing = False  # recompute block activations in backward (training memory)

    def initialize_weights(self):
        """Fresh-training init as released (upstream pixdit_core/pixeldit_t2i.py): unlike c2i, the AdaLN layers are *not* zeroed."""
        nn.init.xavier_uniform_(self.s_embedder.proj.weight)
        nn.init.zeros_(self.s_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.y_pos_embedding, std=1.0)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def patch_tables(self, H: int, W: int, Lt: int, dtype, device):
        """Image RoPE on the patch grid and text RoPE, cached per size (not state)."""
        key = ("patch", H, W, Lt, dtype, device)
        if key not in self._tables:
            cfg, p = self.config, self.config.patch_size
            with torch.inference_mode(False), torch.no_grad():  # usable by later training forwards
                self._tables[key] = (rope_2d(cfg.head_dim, H // p, W // p, device), rope_1d(cfg.head_dim, Lt, device))
        return self._tables[key]

    def semantics(self, x, t, y, return_patch_tokens_at: int = 0) -> Semantics:
        """The patch pathway: joint image/text attention (MM-DiT); the text never reaches the pixel pathway."""
        self._check_size(x)
        B, C, H, W = x.shape
        y = y[:, : self.config.text_len]  # the window: first text_len tokens
        Lt = y.shape[1]
        rope_s, rope_t = self.patch_tables(H, W, Lt, x.dtype, x.device)
        t_emb = self.time_embedding(t)  # (B, 1, D)
        c = F.silu(t_emb)  # no pooled text
        s = self.s_embedder(patchify(x, self.config.patch_size))  # (B, L, D)
        u = self.y_embedder(y) + self.y_pos_embedding[:, :Lt]  # (B, Lt, D)
        aligned = None
        for i, block in enumerate(self.patch_blocks, start=1):
            s, u = self._run(block, s, u, c, rope_s, rope_t)
            if i == return_patch_tokens_at:
                aligned = s
        return Semantics(s, t_emb, aligned)
