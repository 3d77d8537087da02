"""Reading diffusers-layout folders (no diffusers needed): ours, and the community port's.

  a pipeline folder     model_index.json + transformer/ (+ scheduler/, text_encoder/, ...): the transformer
  ours                  transformer/config.json with "_class_name": "PixelDiTTransformer2DModel" and the
                        ModelConfig's fields (kind, pixel_hidden, ...; class_names, train_config) and diffusion_pytorch_model
                        .safetensors (or shards and their index): the network's tensors under "model."
  the community port    config.json with num_groups (the patch-level heads, as the official code names
                        them), hidden_size, pixel_hidden_size, patch_depth, pixel_depth, patch_size,
                        num_classes, in_channels, model_type ("c2i" | "t2i", or absent), and the official
                        network's tensor names (optionally under "model."); the widths it does not state are
                        read from the tensors' shapes, and every stated one must agree with them.

`layout(folder)` names the files a folder is read from (so a checkpoint's SHA-256 covers exactly them);
`read(folder)` returns (tensors, metadata) as for one of our safetensors files. docs/diffusers.md.
"""

import json
from pathlib import Path

from ..errors import PixelDiTError
from ..io import inside, json_object
from .config import ModelConfig

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"
OURS = "PixelDiTTransformer2DModel"
PREFIX = "model."
COMMUNITY_KEYS = {  # the community port's config key -> ModelConfig field
    "hidden_size": "hidden_size",
    "pixel_hidden_size": "pixel_hidden",
    "patch_depth": "patch_depth",
    "pixel_depth": "pixel_depth",
    "patch_size": "patch_size",
    "num_classes": "num_classes",
    "in_channels": "in_channels",
    "num_groups": "num_heads",
}
MODEL_TYPES = {"c2i": "c2i", "t2i": "t2i", "class-conditional": "c2i", "text-to-image": "t2i"}


def is_diffusers(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() or (folder / WEIGHTS).is_file() or (folder / INDEX).is_file()


def transformer_folder(folder: Path) -> Path:
    """The folder holding the transformer: `folder/transformer` for a pipeline, else `folder` itself."""
    if (folder / "model_index.json").is_file():
        index = json_object(folder / "model_index.json", "a diffusers pipeline's model_index.json")
        entry = index.get("transformer")
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise PixelDiTError(
                f"{folder}/model_index.json has no transformer entry (got {entry!r})",
                'a PixelDiT pipeline names its "transformer": [module, class]',
            )
        if entry[1] != OURS:
            raise PixelDiTError(
                f"{folder}/model_index.json names the transformer class {entry[1]!r}",
                f"a PixelDiT pipeline's transformer is {OURS}: is this another model's pipeline?",
            )
        if not (folder / "transformer").is_dir():
            raise PixelDiTError(f"{folder} is missing its transformer/ folder", "is the download complete?")
        return folder / "transformer"
    return folder


def config_of(folder: Path) -> dict:
    tf = transformer_folder(folder)
    if not (tf / "config.json").is_file():
        raise PixelDiTError(f"{tf} has no config.json", "a diffusers model folder holds config.json and its weights")
    return json_object(tf / "config.json", "a diffusers transformer config")


def to_model_config(conf: dict, source: str) -> tuple[dict, str]:
    """(ModelConfig fields stated by the config, its layout name): ours or the community port's."""
    if conf.get("_class_name") == OURS and {"kind", "pixel_hidden"} <= set(conf):  # the port uses the class name too
        fields = {k: conf[k] for k in ModelConfig.__dataclass_fields__ if k in conf}
        return fields, "pixeldit diffusers"
    fields = {}
    kind = conf.get("model_type")
    if kind is not None:
        if kind not in MODEL_TYPES:
            raise PixelDiTError(
                f"{source}: unknown model_type {kind!r}",
                f"a PixelDiT transformer's model_type is one of {', '.join(MODEL_TYPES)}",
            )
        fields["kind"] = MODEL_TYPES[kind]
    known = [k for k in COMMUNITY_KEYS if k in conf]
    if not known:
        raise PixelDiTError(
            f"{source} is not a PixelDiT transformer config (_class_name {conf.get('_class_name')!r})",
            "pass a folder written by `pixeldit convert --format diffusers`",
        )
    for k in known:
        fields[COMMUNITY_KEYS[k]] = conf[k]
    return fields, "community diffusers port"


def layout(folder: Path) -> tuple[Path, Path | None, list[Path]]:
    """(config.json, the shard index or None, the weight files) of a diffusers-layout folder."""
    tf = transformer_folder(folder)
    index_path = tf / INDEX
    if not index_path.is_file():
        return tf / "config.json", None, [tf / WEIGHTS]
    index = json_object(index_path, "a safetensors shard index")
    wm = index.get("weight_map")
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise PixelDiTError(f"{index_path} has no weight_map (tensor name -> shard file)", "is the index complete?")
    return tf / "config.json", index_path, [inside(tf, f, index_path) for f in sorted(set(wm.values()))]


def read(folder: Path, read_file) -> tuple[dict, dict]:
    """(tensors, metadata) from a diffusers-layout folder; `read_file` reads one safetensors shard."""
    conf = config_of(folder)
    fields, name = to_model_config(conf, f"{transformer_folder(folder)}/config.json")
    _, _, files = layout(folder)
    tensors = {}
    for f in files:
        if not f.is_file():
            raise PixelDiTError(f"{folder} is missing {f.relative_to(folder)}", "is the download complete?")
        part, _ = read_file(f)
        tensors.update(part)
    if tensors and all(k.startswith(PREFIX) for k in tensors):
        tensors = {k[len(PREFIX) :]: v for k, v in tensors.items()}
    meta = {
        "diffusers_layout": name,
        "stated_config": json.dumps(fields),
        "class_names": json.dumps(conf.get("class_names") or []),
        "train_config": json.dumps(conf.get("train_config") or {}),
        "weights": str(conf.get("weights", "ema")),
    }
    return tensors, meta
