"""The one config system: YAML preset -> frozen dataclasses -> dotted overrides (`train.lr=1e-5`).

Unknown keys are errors everywhere (in a preset file and on the command line), values are checked
against the field's type, and the resolved config is what gets printed and saved.
"""

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .errors import PixelDiTError

#################################################################################
#                                 Sections                                      #
#################################################################################


@dataclass(frozen=True)
class ModelSection:
    name: str = "PixelDiT-XL/16"  # registry entry (see `pixeldit flops --help` for the list)
    num_classes: int = 1000  # class-conditional only; id num_classes is the null class
    in_channels: int = 3  # 3: RGB; 1: gray data on a 1-channel network (samples, grids, FID and edits follow)
    # The named size's shape, changed (0: as named). For new small models; released checkpoints carry their own.
    hidden_size: int = 0  # D
    num_heads: int = 0
    patch_depth: int = 0  # N
    pixel_depth: int = 0  # M
    pixel_hidden: int = 0  # d


@dataclass(frozen=True)
class DataSection:
    path: str = ""  # ImageFolder, EDM2 zip/folder with dataset.json, or image+.txt folder
    resolution: int = 256  # training resolution (square; T2I stage 2 buckets around it)
    multi_aspect: bool = False  # T2I aspect-ratio bucketing
    flip: bool = False  # the release uses no augmentation
    num_workers: int = 8


@dataclass(frozen=True)
class LoraSection:
    """train.lora: peft LoRA adapters instead of a full fine-tune (docs/fine-tuning.md)."""

    rank: int = 0  # 0: train every weight; r > 0: LoRA adapters of rank r (peft), the base frozen
    alpha: float = 0.0  # LoRA scaling alpha / r (0: alpha = r)
    dropout: float = 0.0
    targets: str = ""  # regex over module names (empty: attention + MLPs of both levels, models/lora.py)


@dataclass(frozen=True)
class TrainSection:
    steps: int = 400_000  # optimizer steps in total
    global_batch: int = 256
    micro_batch: int = 32  # per process per forward; accumulation keeps global_batch
    optimizer: str = "adamw"
    lr: float = 1e-4
    lr_drop_step: int = 0  # 0: never; else lr -> lr_drop_to from this step on
    lr_drop_to: float = 1e-5
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant (the release) | cosine | linear: after warm-up, decay to 0 at `steps`
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_clip_drop_step: int = 0  # 0: never; else clip -> grad_clip_drop_to from this step on
    grad_clip_drop_to: float = 0.5
    ema_decay: float = 0.9999  # updated every optimizer step, no warm-up (as released)
    cond_drop: float = 0.1  # class (or caption) dropout for CFG
    time_shift: float = 1.0  # c2i: t' = t / (t + (1 - t)·s) on logit-normal t
    repa_weight: float = 0.5
    repa_block: int = 8  # 1-based patch block whose output is aligned (T2I: 6)
    repa_encoder: str = ""  # local DINOv2 ViT-B/14 directory (transformers format)
    repa_width: int = 0  # the REPA projector's hidden width (0: the network's; the T2I release: 2048)
    precision: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16 (precision.py), else fp32
    grad_checkpointing: bool = False
    fsdp: bool = False  # shard params/grads/optimizer over ranks (FSDP2); needs > 1 process
    compile: bool = False
    compile_pixel_blocks: str = "auto"  # auto | true | false (models/compiled.py)
    seed: int = 0
    log_every: int = 100
    sample_every: int = 10_000
    ckpt_every: int = 10_000
    keep_last: int = 2
    keep_every: int = 100_000
    max_nonfinite: int = 10  # stop after this many non-finite steps in a row
    tensorboard: bool = False  # also log every metrics line to OUT/tensorboard (needs tensorboard)
    init_from: str = ""  # a new run starts from these weights (any --ckpt format; docs/fine-tuning.md)
    init_weights: str = "ema"  # ema | raw: which weights of init_from
    lora: LoraSection = field(default_factory=LoraSection)


@dataclass(frozen=True)
class SampleSection:
    solver: str = "flowdpm"
    steps: int = 100
    cfg: float = 2.75
    interval: tuple[float, float] = (0.1, 0.9)  # guidance on for lo < t < hi, t: 0 noise -> 1 data
    shift: float = 1.0  # in the c2i convention for both models
    height: int = 0  # 0: data.resolution
    width: int = 0
    seed: int = 0
    batch_size: int = 32


@dataclass(frozen=True)
class EditSection:
    """FlowEdit's SD3 schedule (T = 50, editing from noise level 0.66) with guidance scales for PixelDiT,
    which samples at CFG ~3 rather than SD3's 13.5 (docs/editing.md#schedule)."""

    steps: int = 50  # the time grid T
    strength: float = 0.66  # editing starts at this noise level: n_max = round(strength·steps)
    n_min: int = 0  # last steps sampled from the target alone
    n_avg: int = 1  # noise draws averaged per step
    src_cfg: float = 1.5
    tgt_cfg: float = 4.0
    shift: float = 1.0  # time shift of the grid (c2i convention)


@dataclass(frozen=True)
class EvalSection:
    batch_size: int = 64  # images per Inception forward
    pr_distances: str = "fp16"  # fp16 (ADM's distance tiles) | fp32
    sqrtm: str = "scipy"  # scipy (ADM's path) | eigh (fast, symmetric)


@dataclass(frozen=True)
class TextSection:
    encoder: str = ""  # local Gemma-2-2b-it directory (the text window is the model's: 300)
    negative_prompt: str = ""


@dataclass(frozen=True)
class Config:
    preset: str = ""
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)
    edit: EditSection = field(default_factory=EditSection)
    eval: EvalSection = field(default_factory=EvalSection)
    text: TextSection = field(default_factory=TextSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#################################################################################
#                       Building from dicts, with checks                        #
#################################################################################


def _coerce(value, tp, where: str):
    """Check/convert one value to the annotated type; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise PixelDiTError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise PixelDiTError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PixelDiTError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PixelDiTError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise PixelDiTError(f"{where} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} at {where}")


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise PixelDiTError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise PixelDiTError(
            f"unknown config key {where + '.' if where else ''}{unknown[0]}",
            f"valid keys here: {', '.join(sorted(names))}",
        )
    kw = {}
    for name, value in data.items():
        tp, key = hints[name], f"{where}.{name}" if where else name
        kw[name] = _build(tp, value, key) if dataclasses.is_dataclass(tp) else _coerce(value, tp, key)
    return cls(**kw)


# train keys renamed since a release, as found in a run's saved config.yaml: read as train.lora.<new>.
_LORA_RENAMED = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_targets": "targets"}


def config_from_dict(data: dict) -> Config:
    train = data.get("train") if isinstance(data, dict) else None
    if isinstance(train, dict) and any(k in _LORA_RENAMED for k in train):
        train = dict(train)
        lora = dict(train.get("lora") or {})
        for old, new in _LORA_RENAMED.items():
            if old in train:
                lora.setdefault(new, train.pop(old))
        data = {**data, "train": {**train, "lora": lora}}
    return _build(Config, data, "")


#################################################################################
#                          Presets and overrides                                #
#################################################################################


def presets_dir() -> Path:
    """`pixeldit_cli/presets` in an installed wheel, `presets/` at the root of a checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "presets"
    return installed if any(installed.glob("*.yaml")) else here.parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def load_preset(name_or_path: str) -> Config:
    """A preset by name (`xl256`) or a path to a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = presets_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise PixelDiTError(f"unknown preset {name_or_path!r}", f"use one of: {', '.join(preset_names())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PixelDiTError(f"preset {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise PixelDiTError(
            f"preset {path} holds a YAML {type(data).__name__}, not a mapping of sections",
            "a preset is `model:`, `data:`, `train:` ... sections (see presets/)",
        )
    data.setdefault("preset", path.stem)
    return config_from_dict(data)


def defaults_for(model, preset: str | None = None) -> tuple[Config, str]:
    """The config whose data/sample sections give a command its defaults, and where it came from:
    --preset if given, else the training config stored in the checkpoint (so a converted Fashion-MNIST
    model samples at 32² with its own settings), else the release preset of the model's family."""
    if preset:
        return load_preset(preset), f"preset {preset}"
    stored = getattr(model, "train_config", None)
    if stored:
        try:
            return config_from_dict(stored), "the checkpoint's training config"
        except PixelDiTError:
            pass  # written by another version with other keys: the family default below
    from .families import family_of  # noqa: PLC0415 (families imports torch: `pixeldit --help` must not)

    name = family_of(model.config).release_preset
    return load_preset(name), f"preset {name} (the release's settings)"


def command_config(preset: str | None, overrides: dict | None, model=None) -> tuple[Config, str]:
    """The resolved config of a command other than train, and where its defaults came from: the preset,
    the checkpoint's training config or the family default (defaults_for; the built-in defaults when
    there is no model), then the dotted overrides. Flags a command was given win over both."""
    if model is not None:
        base, where = defaults_for(model, preset)
    else:
        base, where = (load_preset(preset), f"preset {preset}") if preset else (Config(), "the built-in defaults")
    if overrides:
        base, where = apply_overrides(base, overrides), where + " with overrides"
    return base, where


def check_overrides(preset: str | None, overrides: dict | None) -> None:
    """Fail fast, before a checkpoint loads: the preset exists and each dotted override names a key and
    holds a value of its type. (The command's config itself is resolved once, with the model: command_config.)"""
    base = load_preset(preset) if preset else Config()
    if overrides:
        apply_overrides(base, overrides)


def parse_overrides(args: list[str], flags: tuple = (), command: str = "train") -> dict[str, str]:
    """['--train.lr', '1e-5', 'sample.cfg=3'] -> {'train.lr': '1e-5', 'sample.cfg': '3'}.

    `flags`: the command's own options (`--steps`, ...). Every config key is dotted, so an undotted word is
    a mistyped flag: it is reported as one, with the closest flags, then keys, suggested first."""
    out, i = {}, 0
    while i < len(args):
        a = args[i].lstrip("-")
        if "." not in a.split("=", 1)[0]:
            raise _unknown_flag(a.split("=", 1)[0], flags, command)
        if "=" in a:
            k, v = a.split("=", 1)
            i += 1
        elif i + 1 < len(args):
            k, v = a, args[i + 1]
            i += 2
        else:
            raise PixelDiTError(f"override {args[i]!r} has no value", "write --section.key VALUE or section.key=VALUE")
        out[k] = v
    return out


def dotted_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every settable key, dotted: ['model.name', ..., 'train.lr', ...]."""
    keys = []
    for f in fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += dotted_keys(tp, f"{prefix}{f.name}.")
        elif prefix:
            keys.append(prefix + f.name)
    return keys


def _unknown_flag(word: str, flags, command: str) -> PixelDiTError:
    close = difflib.get_close_matches("--" + word, list(flags), n=3, cutoff=0.6)
    if not close:
        close = (
            difflib.get_close_matches(word, dotted_keys(), n=3, cutoff=0.6)
            or [k for k in dotted_keys() if k.split(".")[-1] == word][:3]
        )
        close = ["--" + k for k in close]
    hint = f"did you mean {', '.join(close)}?" if close else f"`pixeldit {command} --help` lists the options"
    return PixelDiTError(f"no such option --{word}", hint)


def _unknown_key(key: str) -> PixelDiTError:
    close = difflib.get_close_matches(key, dotted_keys(), n=3, cutoff=0.6)
    if not close:  # the right key in another section? (`--lr` for `train.lr`)
        close = [k for k in dotted_keys() if k.split(".")[-1] == key.split(".")[-1]][:3]
    hint = f"did you mean {', '.join(close)}?" if close else "`--print-config` on any command lists every key"
    return PixelDiTError(f"unknown config key {key!r}", hint)


def with_values(config: Config, section: str, /, **values) -> Config:
    """`cfg` with the given (non-None) values in one section: a command's flags folded into its config, so
    that the config it prints and records is the one it ran with."""
    given = {k: v for k, v in values.items() if v is not None}
    return (
        dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **given)})
        if given
        else config
    )


def apply_overrides(cfg: Config, overrides: dict[str, typing.Any]) -> Config:
    """Dotted overrides; string values are parsed as YAML scalars/lists ('1e-5', '[0.1, 0.9]', 'true')."""
    data = cfg.to_dict()
    for key, raw in overrides.items():
        parts = key.split(".")
        node = data
        for j, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise _unknown_key(key)
            if j < len(parts) - 1:
                node = node[part]
        value = raw
        if isinstance(raw, str):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
            if value is None:
                value = raw
        if isinstance(node[parts[-1]], dict):
            raise PixelDiTError(f"{key!r} is a section, not a value", "override one of its keys, e.g. train.lr")
        if isinstance(node[parts[-1]], str) and not isinstance(value, str):
            value = raw if isinstance(raw, str) else str(value)
        node[parts[-1]] = value
    return config_from_dict(data)


def resolve(preset: str, overrides: dict | None = None) -> Config:
    return apply_overrides(load_preset(preset), overrides or {})


def to_yaml(cfg: Config) -> str:
    def plain(o):
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        if isinstance(o, tuple):
            return [plain(v) for v in o]
        return o

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)
