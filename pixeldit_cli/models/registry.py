"""Named sizes: `PixelDiT-XL/16` and friends (paper Table 3 / 7), plus tiny CPU sizes.

Any size takes any patch size after the slash (`PixelDiT-XL/8`, `PixelDiT-B/32`); without one, p = 16.
"""

import contextlib
import re

import torch
import torch.nn as nn

from ..errors import PixelDiTError
from ..families import family_of
from ..families.base import NETWORK_CLASSES
from .config import ModelConfig
from .pixeldit import PixelDiT
from .pixeldit_t2i import PixelDiTT2I

NETWORK_CLASSES.update({cls.__name__: cls for cls in (PixelDiT, PixelDiTT2I)})  # a family names its class

# patch depth N, pixel depth M, D, heads; d = 16 everywhere.
SIZES = {
    "B": dict(patch_depth=12, pixel_depth=2, hidden_size=768, num_heads=12),
    "L": dict(patch_depth=22, pixel_depth=4, hidden_size=1024, num_heads=16),
    "XL": dict(patch_depth=26, pixel_depth=4, hidden_size=1152, num_heads=16),
    "T2I": dict(
        kind="t2i",
        patch_depth=14,
        pixel_depth=2,
        hidden_size=1536,
        num_heads=24,
        pixel_attn_hidden=1152,
        pixel_heads=16,
    ),
    # CPU sizes (not in the paper): the `smoke` preset and tests.
    "S": dict(patch_depth=4, pixel_depth=1, hidden_size=128, num_heads=4, num_classes=10),
    "XS": dict(patch_depth=2, pixel_depth=1, hidden_size=32, num_heads=2, num_classes=10),
    "T2I-S": dict(
        kind="t2i",
        patch_depth=2,
        pixel_depth=1,
        hidden_size=64,
        num_heads=4,
        pixel_attn_hidden=48,
        pixel_heads=3,
        text_dim=64,
        text_len=32,
    ),
}

_NAME = re.compile(r"^PixelDiT-([A-Za-z0-9-]+?)(?:/(\d+))?$")


def model_names() -> list[str]:
    return [f"PixelDiT-{k}/16" for k in SIZES]


def model_config(name: str, **overrides) -> ModelConfig:
    """'PixelDiT-XL/16' -> ModelConfig. Keyword overrides (e.g. num_classes=10) win."""
    m = _NAME.match(name)
    if not m or m.group(1) not in SIZES:
        raise PixelDiTError(
            f"unknown model {name!r}", f"use one of {', '.join(model_names())} (any patch size after the slash)"
        )
    kw = dict(SIZES[m.group(1)], patch_size=int(m.group(2) or 16))
    kw.update(overrides)
    try:
        return ModelConfig(**kw)
    except ValueError as e:
        raise PixelDiTError(f"invalid model {name!r}: {e}") from None


def build_model(config: ModelConfig | str, init: bool = True, **overrides) -> nn.Module:
    """A fresh network for a config or a registry name, with the official init unless init=False."""
    cfg = model_config(config, **overrides) if isinstance(config, str) else config
    model = family_of(cfg).network(cfg)
    if init:
        model.initialize_weights()
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def empty_model(config: ModelConfig) -> nn.Module:
    """The network's structure on the meta device, nothing initialised: loading a state dict fills it.

    The layers' own default inits are skipped (as transformers' `no_init_weights` does): on meta tensors
    `nn.init.normal_` runs through torch's reference decompositions, whose first use imports all of
    torch._dynamo — two seconds of start-up for every command that loads a checkpoint.
    """
    names = (
        "uniform_",
        "normal_",
        "trunc_normal_",
        "constant_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "zeros_",
        "ones_",
        "orthogonal_",
    )
    saved = {n: getattr(nn.init, n) for n in names}
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [setattr(nn.init, n, f) for n, f in saved.items()])
        for n in names:
            setattr(nn.init, n, lambda t, *a, **k: t)
        with torch.device("meta"):
            return build_model(config, init=False)
