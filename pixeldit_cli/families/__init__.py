"""Model families: what a network is conditioned on, and which time and velocity convention it uses.

PixelDiT comes in two families that share the pixel pathway and differ everywhere a condition or a
time enters (docs/conventions.md):

    family             condition                       network time       network output
    class-conditional  class ids, null class = K       t (1 = data)       x − ε
    text-to-image      Gemma-2 states, "" = null       1000·σ (1 = noise) ε − x

Solvers, the trainer, `sample`, `edit` and `flops` ask the family object instead of branching on
`ModelConfig.kind`. A third family is one new module here and one entry in FAMILIES.
"""

from .base import Family
from .class_conditional import ClassConditional
from .text_to_image import TextToImage

FAMILIES: dict[str, Family] = {f.kind: f for f in (ClassConditional(), TextToImage())}


def family_of(config) -> Family:
    """The family of a ModelConfig (anything with `.kind`), a network (its `.config`), or a kind string."""
    kind = config if isinstance(config, str) else getattr(config, "config", config).kind
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ValueError(f"unknown model family {kind!r}; known: {', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "ClassConditional", "Family", "TextToImage", "family_of"]
