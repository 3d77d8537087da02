"""`import pixeldit`: the public API of the `pixeldit_cli` package under the distribution's name.

The names are the very objects of `pixeldit_cli` (`pixeldit.load_model is pixeldit_cli.load_model`); the
modules themselves are only `pixeldit_cli.*`, so there is one copy of each.
"""

import pixeldit_cli
from pixeldit_cli import __all__, __version__  # noqa: F401


def __getattr__(name):
    return getattr(pixeldit_cli, name)


def __dir__():
    return sorted(__all__)
