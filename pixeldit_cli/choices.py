"""The fixed choices of the CLI, as enums (shown as {a|b|c} in --help, completed by the shell, checked
by the parser). The library modules take their tuples from here, so each list exists once. Nothing heavy
is imported: the CLI reads this before any command runs."""

from enum import Enum


class Solver(str, Enum):
    flowdpm = "flowdpm"
    euler = "euler"
    heun = "heun"
    dpmpp2m = "dpm++2m"


class ClassMode(str, Enum):
    uniform = "uniform"
    balanced = "balanced"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Weights(str, Enum):
    ema = "ema"
    raw = "raw"


class Fit(str, Enum):
    crop = "crop"
    pad = "pad"
    resize = "resize"


class Sqrtm(str, Enum):
    scipy = "scipy"
    eigh = "eigh"


class PRDistances(str, Enum):
    fp16 = "fp16"
    fp32 = "fp32"


class SampleFormat(str, Enum):
    auto = "auto"
    png = "png"
    npz = "npz"
    both = "both"


class ReuseSchedule(str, Enum):
    uniform = "uniform"
    ends = "ends"


class WeightsFormat(str, Enum):
    safetensors = "safetensors"
    hf = "hf"
    diffusers = "diffusers"


def values(enum) -> tuple[str, ...]:
    return tuple(e.value for e in enum)
