"""PixelDiT, class-conditional (paper §3; official `PixDiT`, docs/conventions.md).

Two levels in pixel space, no VAE:
  patch level  — a DiT on p×p patch tokens (RMSNorm, 2-D RoPE, SwiGLU, one global AdaLN condition)
                 that decides *what* goes where;
  pixel level  — PiT blocks on every pixel (d = 16 channels) with pixel-wise AdaLN driven by the
                 patch tokens, and pixel token compaction: the p² pixels of a patch are flattened
                 and projected to one token so attention costs L², not (H·W)².

Conventions (hazards): t ∈ [0, 1] with t = 1 DATA; output v = x − ε; class id `num_classes` is the
null class used for classifier-free guidance.
"""

import torch
import torch.utils.checkpoint
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .layers import (
    FinalLayer,
    PiTBlock,
    PixelEmbedder,
    RMSNorm,
    RotaryAttention,
    SwiGLU,
    TimestepEmbedder,
    modulate,
    patchify,
    pixel_sincos,
    pixel_tokens,
    rope_2d,
    unpatchify_pixels,
)


#################################################################################
#                                Embedders                                      #
#################################################################################


class PatchEmbedder(nn.Module):
    """Linear(C·p² -> D) on unfolded patches. Key: s_embedder.proj."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)

    def forward(self, x):
        return self.proj(x)


class LabelEmbedder(nn.Module):
    """Class table with one extra row: id num_classes is the null (unconditional) class."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y):
        return self.embedding_table(y)


#################################################################################
#                              Patch-level block                                #
#################################################################################


class DiTBlock(nn.Module):
    """Pre-norm DiT block with global AdaLN (6 chunks: shift, scale, gate for attention then MLP)."""

    def __init__(self, hidden: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = RMSNorm(hidden)
        self.attn = RotaryAttention(hidden, heads)
        self.norm2 = RMSNorm(hidden)
        self.mlp = SwiGLU(hidden, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.Linear(hidden, 6 * hidden))  # c is already SiLU'd

    def forward(self, s, c, freqs_cis):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        s = s + gate_msa * self.attn(modulate(self.norm1(s), shift_msa, scale_msa), freqs_cis)
        s = s + gate_mlp * self.mlp(modulate(self.norm2(s), shift_mlp, scale_mlp))
        return s


#################################################################################
#                                 The network                                   #
#################################################################################


class PixelDiT(nn.Module):
    """Class-conditional PixelDiT. forward(x (B,C,H,W) in [-1,1], t (B,) with 1 = data, y (B,)) -> v = x − ε."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.kind == "c2i"
        self.config = cfg = config
        D, d, p, C = cfg.hidden_size, cfg.pixel_hidden, cfg.patch_size, cfg.in_channels
        # Registration order = the official state-dict order (final layer before the blocks).
        self.pixel_embedder = PixelEmbedder(C, d)
        self.s_embedder = PatchEmbedder(C * p * p, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D)
        self.final_layer = FinalLayer(d, C)
        self.patch_blocks = nn.ModuleList(
            [DiTBlock(D, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.patch_depth)]
        )
        self.pixel_blocks = nn.ModuleList(
            [PiTBlock(D, d, p * p, cfg.pixel_attn_hidden, cfg.pixel_heads) for _ in range(cfg.pixel_depth)]
        )
        self._tables = {}  # (H, W, dtype, device) -> RoPE / sin-cos tables; not state
        self.grad_checkpointing = False  # recompute block activations in backward (training memory)

    def initialize_weights(self):
        """The official fresh-training init (upstream pixdit_core/pixeldit_c2i.py); loading weights overrides it."""
        nn.init.xavier_uniform_(self.s_embedder.proj.weight)
        nn.init.zeros_(self.s_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        for block in [*self.patch_blocks, *self.pixel_blocks]:
            nn.init.zeros_(block.adaLN_modulation[0].weight)
            nn.init.zeros_(block.adaLN_modulation[0].bias)

    def _run(self, block, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def tables(self, H: int, W: int, dtype, device):
        """RoPE for the patch grid (patch and pixel head dims) and the pixel sin-cos table, cached per size."""
        key = (H, W, dtype, device)
        if key not in self._tables:
            with torch.inference_mode(False), torch.no_grad():  # usable by later training forwards
                self._tables[key] = self._make_tables(H, W, dtype, device)
        return self._tables[key]

    def _make_tables(self, H, W, dtype, device):
        cfg, p = self.config, self.config.patch_size
        rope_s = rope_2d(cfg.head_dim, H // p, W // p, device)
        rope_x = rope_2d(cfg.pixel_attn_hidden // cfg.pixel_heads, H // p, W // p, device)
        pos = pixel_sincos(H, W, cfg.pixel_hidden, dtype, device).view(H, W, cfg.pixel_hidden)
        return rope_s, rope_x, pos

    def forward(self, x, t, y, return_patch_tokens_at: int = 0):
        """Optionally also return the patch tokens after block `return_patch_tokens_at` (1-based; REPA)."""
        B, C, H, W = x.shape
        p = self.config.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        rope_s, rope_x, pos = self.tables(H, W, x.dtype, x.device)

        # ---- patch level: semantics on L = (H/p)·(W/p) tokens -------------------------------------
        t_emb = self.t_embedder(t).unsqueeze(1)                       # (B, 1, D)
        c = F.silu(t_emb + self.y_embedder(y).unsqueeze(1))           # (B, 1, D) global condition
        s = self.s_embedder(patchify(x, p))                           # (B, L, D)
        aligned = None
        for i, block in enumerate(self.patch_blocks, start=1):
            s = self._run(block, s, c, rope_s)
            if i == return_patch_tokens_at:
                aligned = s
        L = s.shape[1]
        s_cond = F.silu(t_emb + s).reshape(B * L, -1)                 # (B·L, D); no class term here

        # ---- pixel level: every pixel, conditioned per patch ---------------------------------------
        X = self.pixel_embedder(x.permute(0, 2, 3, 1)) + pos          # (B, H, W, d)
        X = pixel_tokens(X, p)                                        # (B·L, p², d)
        for block in self.pixel_blocks:
            X = self._run(block, X, s_cond, B, rope_x)
        out = unpatchify_pixels(self.final_layer(X), B, H, W, p)     # (B, C, H, W)
        return (out, aligned) if return_patch_tokens_at else out
