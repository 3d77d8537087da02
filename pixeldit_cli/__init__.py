"""pixeldit: PixelDiT (pixel-space diffusion transformer) as a toolkit.

Public API (contracts in DESIGN.md):
    load_model(path, weights="ema")  -> network in eval mode with `.config`, official forward(x, t, y)
    build_model(name_or_config)      -> fresh network, official init
    model_config(name)               -> ModelConfig for a registry name such as "PixelDiT-XL/16"
    sample(model, noise, cond, uncond, *, solver, steps, cfg, interval, shift) -> images in [-1, 1]
"""

__version__ = "0.1.0"

from .convert import load_model
from .sample import sample
from .errors import PixelDiTError
from .models.config import ModelConfig
from .models.registry import build_model, model_config

__all__ = ["load_model", "sample", "build_model", "model_config", "ModelConfig", "PixelDiTError", "__version__"]
