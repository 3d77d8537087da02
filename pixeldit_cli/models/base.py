"""What both PixelDiT networks share: the pixel-level pathway, and a forward split into its two pathways.

    semantics(x, t, y) -> Semantics(s, t_emb, aligned)   the patch level: semantic tokens s (B, L, D)
    pixels(x, t_emb, s) -> output                        the pixel level, conditioned per patch on
                                                         s_cond = SiLU(t_emb + s)
    forward(x, t, y) = pixels(x, t_emb, semantics(x, t, y).s)   (paper §3; the same ops in the same order)

The split lets a sampler reuse s across solver steps and run only the pixel pathway in between
(`solvers.SemanticReuse`, docs/semantic-reuse.md): the pixel pathway always takes the current step's
time embedding, so only the patch tokens are carried over.
"""

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import pixel_sincos, pixel_tokens, rope_2d, unpatchify_pixels


class Semantics(NamedTuple):
    s: torch.Tensor  # (B, L, D) patch tokens after the last patch block
    t_emb: torch.Tensor  # (B, 1, D) time embedding of this forward
    aligned: torch.Tensor | None = None  # patch tokens after block `return_patch_tokens_at` (REPA)


class PixelDiTBase(nn.Module):
    """Subclasses define the modules (pixel_embedder, pixel_blocks, final_layer, t_embedder, ...) and
    `semantics`; everything from the semantic tokens to the output lives here."""

    def _run(self, block, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _check_size(self, x):
        p = self.config.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the patch size {p}")

    def pixel_tables(self, H: int, W: int, dtype, device):
        """RoPE for the compacted pixel tokens and the pixel sin-cos table, cached per size (not state)."""
        key = ("pixel", H, W, dtype, device)
        if key not in self._tables:
            cfg, p = self.config, self.config.patch_size
            with torch.inference_mode(False), torch.no_grad():  # usable by later training forwards
                rope_x = rope_2d(cfg.pixel_attn_hidden // cfg.pixel_heads, H // p, W // p, device)
                pos = pixel_sincos(H, W, cfg.pixel_hidden, dtype, device).view(H, W, cfg.pixel_hidden)
                self._tables[key] = (rope_x, pos)
        return self._tables[key]

    def time_embedding(self, t):
        return self.t_embedder(t).unsqueeze(1)  # (B, 1, D)

    def pixels(self, x, t_emb, s):
        """The pixel pathway: every pixel, conditioned per patch on SiLU(t_emb + s)."""
        B, C, H, W = x.shape
        p, L = self.config.patch_size, s.shape[1]
        rope_x, pos = self.pixel_tables(H, W, x.dtype, x.device)
        s_cond = F.silu(t_emb + s).reshape(B * L, -1)  # (B·L, D); no class / text term here
        X = self.pixel_embedder(x.permute(0, 2, 3, 1)) + pos  # (B, H, W, d)
        X = pixel_tokens(X, p)  # (B·L, p², d)
        for block in self.pixel_blocks:
            X = self._run(block, X, s_cond, B, rope_x)
        return unpatchify_pixels(self.final_layer(X), B, H, W, p)  # (B, C, H, W)

    def forward(self, x, t, y, return_patch_tokens_at: int = 0):
        """The official forward. Optionally also the patch tokens after block `return_patch_tokens_at` (1-based; REPA)."""
        sem = self.semantics(x, t, y, return_patch_tokens_at)
        out = self.pixels(x, sem.t_emb, sem.s)
        return (out, sem.aligned) if return_patch_tokens_at else out
