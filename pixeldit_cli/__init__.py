"""pixeldit: PixelDiT (pixel-space diffusion transformer) as a toolkit. `import pixeldit` gives the same names.

Public API (its contracts: the README):
    load_model(path, weights="ema")  -> network in eval mode with `.config`, official forward(x, t, y)
    build_model(name_or_config)      -> fresh network, official init
    model_config(name)               -> ModelConfig for a registry name such as "PixelDiT-XL/16"
    sample(model, noise, cond, uncond, *, solver, steps, cfg, interval, shift) -> images in [-1, 1]
    PixelDiTPipeline, PixelDiTT2IPipeline, PixelDiTTransformer2DModel, PixelDiTScheduler
                                     -> the diffusers classes (pipelines.py; needs pixeldit[diffusers])

Nothing heavy is imported here: the names above load on first use (PEP 562), so `pixeldit --help`
does not pay for torch.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": ".models.loading",
    "sample": ".sampling",
    "PixelDiTError": ".errors",
    "ModelConfig": ".models.config",
    "build_model": ".models.registry",
    "model_config": ".models.registry",
}
_DIFFUSERS = ("PixelDiTPipeline", "PixelDiTT2IPipeline", "PixelDiTTransformer2DModel", "PixelDiTScheduler")
__all__ = [*_LAZY, "__version__"]  # the diffusers classes are not in `import *`: they need the optional extra
_LAZY.update(dict.fromkeys(_DIFFUSERS, ".pipelines"))


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})
