"""Networks: shared layers, class-conditional PixelDiT, PixelDiT-T2I, the registry of named sizes, and
load_model (any checkpoint file or folder -> network)."""

from .config import ModelConfig
from .loading import load_model
from .pixeldit import PixelDiT
from .pixeldit_t2i import PixelDiTT2I
from .registry import build_model, count_params, model_config, model_names

__all__ = [
    "ModelConfig",
    "load_model",
    "PixelDiT",
    "PixelDiTT2I",
    "build_model",
    "count_params",
    "model_config",
    "model_names",
]
