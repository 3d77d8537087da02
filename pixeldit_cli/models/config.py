"""The architecture of one PixelDiT network as a frozen dataclass (what `convert` infers and safetensors store)."""

from dataclasses import asdict, dataclass, replace

from ..families import FAMILIES
from .layers import swiglu_hidden

_ZERO_MEANS_DEFAULT = ("pixel_attn_hidden", "pixel_heads", "mlp_hidden")


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "c2i"  # the family (families/): "c2i" class-conditional, "t2i" text-to-image (MM-DiT)
    in_channels: int = 3
    patch_size: int = 16  # p
    hidden_size: int = 1152  # D, patch-level width
    num_heads: int = 16  # patch-level heads
    patch_depth: int = 26  # N
    pixel_depth: int = 4  # M
    pixel_hidden: int = 16  # d, per-pixel width
    pixel_attn_hidden: int = 0  # A, width of the compacted pixel attention (0: = D, as c2i)
    pixel_heads: int = 0  # heads of the pixel attention (0: = num_heads)
    mlp_hidden: int = 0  # SwiGLU hidden (0: int(8D/3), as released)
    num_classes: int = 1000  # c2i: the null class id is num_classes
    text_dim: int = 2304  # t2i: Gemma-2 feature width
    text_len: int = 300  # t2i: text window (learned positions)

    def __post_init__(self):
        # Types and signs first: a config read from a file (safetensors metadata, config.json) can hold anything.
        for name, f in self.__dataclass_fields__.items():
            value = getattr(self, name)
            if f.type in (int, "int") and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if f.type in (str, "str") and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
            if f.type in (int, "int") and value < (0 if name in _ZERO_MEANS_DEFAULT else 1):
                raise ValueError(
                    f"{name} must be {'0 or more' if name in _ZERO_MEANS_DEFAULT else 'positive'}, got {value}"
                )
        # Resolve the "same as" defaults once, so a stored config is explicit.
        if self.pixel_attn_hidden == 0:
            object.__setattr__(self, "pixel_attn_hidden", self.hidden_size)
        if self.pixel_heads == 0:
            object.__setattr__(self, "pixel_heads", self.num_heads)
        if self.mlp_hidden == 0:
            object.__setattr__(self, "mlp_hidden", swiglu_hidden(self.hidden_size))
        problems = []
        if self.kind not in FAMILIES:
            problems.append(f"kind must be one of {', '.join(map(repr, FAMILIES))}, got {self.kind!r}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        elif (self.hidden_size // self.num_heads) % 4:
            problems.append("the patch head dim must be a multiple of 4 (2-D RoPE)")
        if self.pixel_attn_hidden % self.pixel_heads or (self.pixel_attn_hidden // self.pixel_heads) % 4:
            problems.append("the pixel attention head dim must be an integer multiple of 4 (2-D RoPE)")
        if self.pixel_hidden % 4:
            problems.append("pixel_hidden must be a multiple of 4 (sin-cos table)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **kw) -> "ModelConfig":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a model config must be an object of fields, got a {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)
