"""TF1 legacy ResizeBilinear (align_corners=False, half_pixel_centers=False), as inside the FID graph.

TF's CPU kernel, in float32: scale = in / out; source = dst · scale; lower = floor(source),
upper = min(ceil(source), in − 1), lerp = source − floor(source); then
top = tl + (tr − tl)·x_lerp, bottom = bl + (br − bl)·x_lerp, out = top + (bottom − top)·y_lerp.
No antialiasing, also when shrinking 512 -> 299 (that aliasing is part of the reference numbers).
Not `F.interpolate`: PyTorch uses half-pixel centres.
"""

import numpy as np
import torch


def tf1_indices(n_in: int, n_out: int):
    """(lower, upper, lerp) for one axis, computed in float32 exactly as TF does."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.arange(n_out, dtype=np.float32) * scale
    lower = np.maximum(np.floor(src).astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), n_in - 1)
    lerp = (src - np.floor(src)).astype(np.float32)
    return torch.from_numpy(lower), torch.from_numpy(upper), torch.from_numpy(lerp)


def tf1_resize_bilinear(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """x: (N, C, H, W) float32 -> (N, C, out_h, out_w); identity when the size already matches."""
    H, W = x.shape[-2:]
    if (H, W) == (out_h, out_w):
        return x
    y0, y1, fy = (t.to(x.device) for t in tf1_indices(H, out_h))
    x0, x1, fx = (t.to(x.device) for t in tf1_indices(W, out_w))
    top, bot = x.index_select(2, y0), x.index_select(2, y1)
    tl, tr = top.index_select(3, x0), top.index_select(3, x1)
    bl, br = bot.index_select(3, x0), bot.index_select(3, x1)
    fx, fy = fx.view(1, 1, 1, -1), fy.view(1, 1, -1, 1)
    t = tl + (tr - tl) * fx
    b = bl + (br - bl) * fx
    return t + (b - t) * fy
