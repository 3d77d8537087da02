"""Networks: shared layers, class-conditional PixelDiT, PixelDiT-T2I, and the registry of named sizes."""

from .config import ModelConfig
from .pixeldit import PixelDiT
from .pixeldit_t2i import PixelDiTT2I
from .registry import build_model, count_params, model_config, model_names

__all__ = ["ModelConfig", "PixelDiT", "PixelDiTT2I", "build_model", "count_params", "model_config", "model_names"]
