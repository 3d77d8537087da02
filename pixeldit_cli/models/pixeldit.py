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
    RotaryAttention,
    SwiGLU,
    TimestepEmbedder,
    modulate,
    patchify,
    rope_2d,
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


class PixelDiT(PixelDiTBase):
    """Class-conditional PixelDiT. forward(x (B,C,H,W) in [-1,1], t (B,) with 1 = data, y (B,)) -> v = x − ε."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        D, d, p, C = cfg.hidden_size, cfg.pixel_hidden, cfg.patch_size, cfg.in_channels
        # Registration order = the official state-dict order (final layer before the blocks).
        self.pixel_embedder = PixelEmbedder(C, d)
        self.s_embedder = PatchEmbedder(C * p * p, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D)
        self.final_layer = FinalLayer(d, C)
        self.patch_blocks = nn.ModuleList([DiTBlock(D, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.patch_depth)])
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

    def patch_tables(self, H: int, W: int, dtype, device):
        """RoPE for the patch grid, cached per size (not state)."""
        key = ("patch", H, W, dtype, device)
        if key not in self._tables:
            with torch.inference_mode(False), torch.no_grad():  # usable by later training forwards
                self._tables[key] = rope_2d(
                    self.config.head_dim, H // self.config.patch_size, W // self.config.patch_size, device
                )
        return self._tables[key]

    def semantics(self, x, t, y, return_patch_tokens_at: int = 0) -> Semantics:
        """The patch pathway: semantics on L = (H/p)·(W/p) tokens, conditioned on time and class."""
        self._check_size(x)
        B, C, H, W = x.shape
        rope_s = self.patch_tables(H, W, x.dtype, x.device)
        t_emb = self.time_embedding(t)  # (B, 1, D)
        c = F.silu(t_emb + self.y_embedder(y).unsqueeze(1))  # (B, 1, D) global condition
        s = self.s_embedder(patchify(x, self.config.patch_size))  # (B, L, D)
        aligned = None
        for i, block in enumerate(self.patch_blocks, start=1):
            s = self._run(block, s, c, rope_s)
            if i == return_patch_tokens_at:
                aligned = s
        return Semantics(s, t_emb, aligned)
