"""pixeldit: PixelDiT (pixel-space diffusion transformer) as a toolkit. `import pixeldit` is the same package.

Public API (its contracts: the README):
    load_model(path, weights="ema")  -> network in eval mode with `.config`, official forward(x, t, y)
    build_model(name_or_config)      -> fresh network, official init
    model_config(name)               -> ModelConfig for a registry name such as "PixelDiT-XL/16"
    sample(model, noise, cond, uncond, *, solver, steps, cfg, interval, shift) -> images in [-1, 1]

Nothing heavy is imported here: the names above load on first use (PEP 562), so `pixeldit --help`
does not pay for torch.
"""

import importlib
import importlib.abc
import sys
import types

__version__ = "0.1.0"

_LAZY = {
    "load_model": ".convert",
    "sample": ".sample",
    "PixelDiTError": ".errors",
    "ModelConfig": ".models.config",
    "build_model": ".models.registry",
    "model_config": ".models.registry",
}
__all__ = [*_LAZY, "__version__"]


class _Package(types.ModuleType):
    """Keeps `pixeldit_cli.sample` the public function although a submodule has the same name: importing
    a submodule sets the package attribute of that name to the module, which would shadow the function."""

    def __setattr__(self, name, value):
        if name in _LAZY and isinstance(value, types.ModuleType):
            return  # the function (loaded by __getattr__) keeps the name; the module stays in sys.modules
        super().__setattr__(name, value)

    def __getattr__(self, name):
        if name in _LAZY:
            value = getattr(importlib.import_module(_LAZY[name], __name__), name)
            self.__dict__[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__(self):
        return sorted({*super().__dir__(), *_LAZY})


sys.modules[__name__].__class__ = _Package


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`pixeldit.X` is `pixeldit_cli.X`, the same module object (no second copy of any module state)."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith("pixeldit.") or name == "pixeldit":
            import importlib.util

            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module("pixeldit_cli" + spec.name[len("pixeldit"):])
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.real_spec  # the import machinery put the alias's spec on the shared module


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())  # before the path finder, which would load a second copy
