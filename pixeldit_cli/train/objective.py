"""The class-conditional training objective, exactly as the release computes one step (docs/conventions.md#training).

Rectified flow in pixel space, c2i convention (t = 1 data):
    t = shift(sigmoid(n)), n ~ N(0, 1)              logit-normal, then t' = t / (t + (1 − t)·s)
    x_t = t·x + (1 − t)·ε,  target v = x − ε,       loss_flow = mean((net(x_t, t, y') − v)²)
    y' = null class with probability 0.1             (classifier-free guidance dropout)
REPA: the patch tokens after block 8 go through a 3-layer MLP and are pulled towards frozen DINOv2
patch features: loss_repa = mean(1 − cos), total = loss_flow + λ·loss_repa with λ = 0.5.

Randomness is drawn per sample from a generator seeded by (seed, step, global sample slot): never the
clock, never a global RNG — so a resumed run and a run on more processes draw the same numbers.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import solvers
from ..errors import PixelDiTError
from ..text import load_pretrained

#################################################################################
#                               Per-sample draws                                #
#################################################################################


def slot_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """A CPU generator for one sample slot of one optimizer step."""
    state = np.random.SeedSequence([seed, step, slot]).generate_state(2, np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def draw(seed: int, step: int, slots, shape, drop_prob: float, time_shift: float):
    """Noise (B, *shape), t (B,) and the class-drop mask (B,) for the given global slots."""
    noise, base, drop = [], [], []
    for j in slots:
        g = slot_generator(seed, step, j)
        base.append(torch.randn(1, generator=g))
        drop.append(torch.rand(1, generator=g) < drop_prob)
        noise.append(torch.randn(*shape, generator=g))
    t = torch.sigmoid(torch.cat(base))
    return torch.stack(noise), solvers.time_shift(t, time_shift), torch.cat(drop)


def flip_mask(seed: int, step: int, slots) -> torch.Tensor:
    """Horizontal-flip coins per sample slot (data.flip; off in the release), from their own stream."""
    return torch.tensor([bool(np.random.SeedSequence([seed, step, j, 0xF11B]).generate_state(1)[0] & 1) for j in slots])


#################################################################################
#                                   REPA                                        #
#################################################################################


class Projector(nn.Module):
    """Linear -> SiLU -> Linear -> SiLU -> Linear; nested like the release (keys proj.0.{0,2,4})."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Sequential(
                nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out)
            )
        )

    def forward(self, h):
        return self.proj(h)


def align_tokens(h, n_target: int, grid_hw=None):
    """Model tokens (B, L, C) to n_target tokens on a square grid: average-pool down, bilinear up."""
    B, L, C = h.shape
    if L == n_target:
        return h
    side, tside = round(L**0.5), round(n_target**0.5)
    if side * side != L or tside * tside != n_target:
        raise ValueError(f"REPA token counts {L} and {n_target} are not both square")
    x = h.transpose(1, 2).reshape(B, C, side, side)
    if n_target < L:
        x = F.adaptive_avg_pool2d(x, (tside, tside))
    else:
        x = F.interpolate(x, size=(tside, tside), mode="bilinear", align_corners=False)
    return x.reshape(B, C, n_target).transpose(1, 2)


def repa_loss(projected, target):
    """mean(1 − cos) over the feature dim (eps 1e-8), token counts aligned first."""
    projected = align_tokens(projected, target.shape[1])
    return (1 - F.cosine_similarity(projected, target, dim=-1, eps=1e-8)).mean()


class DinoEncoder(nn.Module):
    """Frozen DINOv2 (transformers `Dinov2Model`) -> normalised patch tokens (x_norm_patchtokens).

    Input: images in [0, 1]. ImageNet normalisation *then* bicubic resize to (int(14·H/16), int(14·W/16)),
    as the release does — so a 256 px image gives 16×16 = 256 tokens, matching PixelDiT/16's grid.
    """

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, path: str):
        super().__init__()

        try:
            from transformers import Dinov2Model  # noqa: PLC0415 (optional, heavy)
        except ImportError:
            raise PixelDiTError(
                "REPA needs transformers", "pip install 'pixeldit[repa]', or set --train.repa_weight 0"
            ) from None
        if not path:
            raise PixelDiTError(
                "REPA is on but no DINOv2 encoder was given",
                "pass --repa-encoder DIR (a local facebook/dinov2-base), or --train.repa_weight 0",
            )

        self.net = load_pretrained(
            "REPA encoder",
            path,
            "pass the folder of a saved Dinov2Model",
            lambda p, local: Dinov2Model.from_pretrained(p, local_files_only=local),
        )
        self.net = self.net.eval().requires_grad_(False)
        self.dim = self.net.config.hidden_size
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, raw):
        H, W = raw.shape[-2:]
        x = (raw - self.mean) / self.std
        x = F.interpolate(x, size=(int(14 * H / 16), int(14 * W / 16)), mode="bicubic", align_corners=False)
        return self.net(pixel_values=x).last_hidden_state[:, 1:]  # after the final LayerNorm, CLS dropped


#################################################################################
#                                 One step's loss                               #
#################################################################################


def flow_loss(
    net,
    x,
    y,
    t,
    noise,
    drop,
    null_class: int,
    projector=None,
    repa_target=None,
    repa_block: int = 0,
    repa_weight: float = 0.0,
    autocast=None,
):
    """Loss of one (micro-)batch given all its random draws. Returns (total, flow, repa) as fp32 scalars."""
    y = torch.where(drop, torch.full_like(y, null_class), y)
    tb = t.view(-1, *([1] * (x.dim() - 1)))
    x_t = tb * x + (1 - tb) * noise
    v = x - noise
    out, proj = _forward(
        net, x_t, t, y, projector if repa_target is not None and repa_weight > 0 else None, repa_block, autocast
    )
    loss_flow = ((out.float() - v) ** 2).mean()
    loss_repa = repa_loss(proj.float(), repa_target.float()) if proj is not None else torch.zeros((), device=x.device)
    return loss_flow + repa_weight * loss_repa, loss_flow.detach(), loss_repa.detach()


def _forward(net, x_t, t, y, projector, repa_block: int, autocast):
    """The network (under autocast if asked) and, with a projector, the projected patch tokens of `repa_block`."""
    ctx = torch.autocast(x_t.device.type, dtype=autocast) if autocast is not None else _null()
    with ctx:
        if projector is None:
            return net(x_t, t, y), None
        out, h = net(x_t, t, y, return_patch_tokens_at=repa_block)
        return out, projector(h)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


#################################################################################
#            The text-to-image objective (docs/conventions.md#training)         #
#################################################################################


def t2i_sigmas(shift: float) -> torch.Tensor:
    """The release's discrete "linear_flow" grid: σ_i = i/1000, i = 0..999, then σ' = s·σ / (1 + (s − 1)·σ)."""
    s = torch.arange(1000, dtype=torch.float64) / 1000
    return shift * s / (1 + (shift - 1) * s)


def t2i_draw(seed: int, step: int, slots, shape, drop_prob: float, shift: float):
    """Noise, σ' (float), the integer timestep floor(1000·σ') the network sees, and the caption-drop mask."""
    noise, idx, drop = [], [], []
    for j in slots:
        g = slot_generator(seed, step, j)
        n = torch.randn(1, generator=g)
        idx.append(min(int(torch.sigmoid(n).item() * 1000), 999))  # sigmoid can round to 1.0 in fp32
        drop.append(torch.rand(1, generator=g) < drop_prob)
        noise.append(torch.randn(*shape, generator=g))
    sig = t2i_sigmas(shift)[torch.tensor(idx)]
    timestep = torch.floor(1000 * sig)  # the release feeds timestep_map[i] after an integer cast
    return torch.stack(noise), sig.float(), timestep.float(), torch.cat(drop)


class DinoEncoder224(DinoEncoder):
    """T2I REPA target: image in [0, 1], bicubic resize to 224×224 *first*, then ImageNet normalisation."""

    @torch.no_grad()
    def forward(self, raw):
        x = F.interpolate(raw, size=(224, 224), mode="bicubic", align_corners=False)
        x = (x - self.mean) / self.std
        return self.net(pixel_values=x).last_hidden_state[:, 1:]


def t2i_repa_loss(projected, target):
    """L2-normalise; with more model tokens than DINO's, bilinearly resize to DINO's grid and renormalise; −mean(cos)."""
    p = F.normalize(projected, dim=-1)
    if p.shape[1] != target.shape[1]:
        p = F.normalize(align_tokens(p, target.shape[1]), dim=-1)
    return -(p * F.normalize(target, dim=-1)).sum(-1).mean()


def t2i_flow_loss(
    net,
    x,
    text,
    null_text,
    sigma,
    timestep,
    noise,
    drop,
    projector=None,
    repa_target=None,
    repa_block: int = 0,
    repa_weight: float = 0.0,
    autocast=None,
):
    """x_σ = (1 − σ)·x + σ·ε, target ε − x, per-sample MSE mean; dropped captions use the "" embedding."""
    y = torch.where(drop.view(-1, 1, 1), null_text.expand_as(text), text)
    sb = sigma.view(-1, 1, 1, 1)
    x_t = (1 - sb) * x + sb * noise
    target = noise - x
    out, proj = _forward(
        net, x_t, timestep, y, projector if repa_target is not None and repa_weight > 0 else None, repa_block, autocast
    )
    loss_flow = ((out.float() - target) ** 2).mean()
    loss_repa = (
        t2i_repa_loss(proj.float(), repa_target.float()) if proj is not None else torch.zeros((), device=x.device)
    )
    return loss_flow + repa_weight * loss_repa, loss_flow.detach(), loss_repa.detach()
