"""Any checkpoint -> one network: read the file, infer the architecture from its shapes, load it.

Formats understood (auto-detected):
  official c2i Lightning `.ckpt`  state_dict with `denoiser.` (raw), `ema_denoiser.` (EMA, sampled with),
                                  `diffusion_trainer.proj.` (REPA projector, training only)
  official T2I `.pth`             {"state_dict": {"core.*", "_repa_projector.*"}} (or a flat FSDP dict)
  our training checkpoints        {"format": "pixeldit-train", "model", "ema", "model_config", ...}
  our safetensors                 the network's keys, config in the metadata
  our model folders               config.json + model.safetensors (or shards and an index)
  a flat state dict               the network's keys, nothing else

Safety: pickles load with torch.load(weights_only=True); one that needs code is refused unless the caller
passes unsafe_pickle=True. Memory: zip checkpoints are memory-mapped and each tensor's pages are given
back once it is copied, so an 800M-parameter file is not held twice. Writing them is `convert.py`.
"""

import ctypes
import hashlib
import json
import mmap
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import PixelDiTError
from ..io import file_sha256, inside, json_object
from ..train.checkpoint import FORMAT as TRAIN_FORMAT
from . import diffusers_layout
from .config import ModelConfig
from .registry import empty_model


@dataclass
class KeyReport:
    source_format: str = ""
    weights: str = ""
    used: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)  # key group -> reason (training-only, raw weights, ...)
    unexpected: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    class_names: list = field(default_factory=list)  # from training checkpoints (e.g. Fashion-MNIST's)
    train_config: dict = field(default_factory=dict)  # the resolved training config (resolution, sampling defaults)

    def lines(self) -> list[str]:
        out = [f"format: {self.source_format}, weights: {self.weights}", f"used: {len(self.used)} tensors"]
        for reason, keys in self.dropped.items():
            if reason == "training state":  # top-level entries (optimizer, rng, config, ...), worth naming
                out.append(f"dropped ({reason}): {len(keys)} entries ({', '.join(keys)})")
            else:
                out.append(f"dropped ({reason}): {len(keys)} tensors")
        out.append(
            f"unexpected: {len(self.unexpected)}" + (f" ({', '.join(self.unexpected[:5])})" if self.unexpected else "")
        )
        return out + self.notes


#################################################################################
#                                 Reading files                                 #
#################################################################################


def kind_of_file(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def read_state(path: str | os.PathLike, unsafe_pickle: bool = False):
    """Whatever the file holds: a dict for torch checkpoints, (tensors, metadata) for safetensors."""
    path = Path(path)
    if not path.exists():
        raise PixelDiTError(f"checkpoint {path} does not exist", "check the path")
    if path.is_dir():
        if diffusers_layout.is_diffusers(path):
            return diffusers_layout.read(path, _safetensors_shard)
        return read_hf_folder(path)
    if not path.is_file():
        raise PixelDiTError(f"checkpoint {path} is not a regular file (a pipe or a device?)", "pass a checkpoint file")
    fmt = kind_of_file(path)
    if fmt == "safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error type for bad headers / short files
            raise PixelDiTError(
                f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})", "is the file complete?"
            ) from None
        return tensors, meta
    if fmt not in ("zip", "pickle"):
        raise PixelDiTError(
            f"{path} is not a checkpoint (not a torch zip, pickle or safetensors file)",
            "pass a .ckpt/.pth/.pt/.safetensors file",
        )
    if fmt == "zip":
        try:
            zipfile.ZipFile(path).testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise PixelDiTError(f"{path} is truncated or corrupt ({e})", "re-download or re-copy the file") from None
    try:
        if path.suffix == ".safetensors":  # torch.load would hand it to safetensors by its name alone: read what it is
            with open(path, "rb") as f:
                return _torch_load(f, unsafe_pickle, mmap=False)
        return _torch_load(path, unsafe_pickle, mmap=fmt == "zip")
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise PixelDiTError(
                f"{path} contains pickled code, which is refused by default",
                "pass --unsafe-pickle only if you trust where the file came from",
            ) from None
        raise PixelDiTError(f"{path} is not a readable checkpoint ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise PixelDiTError(
            f"{path} is truncated or not a checkpoint ({str(e).splitlines()[0]})", "re-download or re-copy the file"
        ) from None


def _torch_load(f, unsafe_pickle: bool, mmap: bool):
    """torch.load, without the multi-line warnings it may print around a one-line error (pickle protocol)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(f, map_location="cpu", weights_only=not unsafe_pickle, mmap=mmap)


HF_CONFIG, HF_WEIGHTS, HF_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"


def shard_files(folder: Path) -> list[Path]:
    """The weight files of a folder: model.safetensors, or the shards its index names (inside the folder only)."""
    index_path = folder / HF_INDEX
    if not index_path.is_file():
        return [folder / HF_WEIGHTS]
    index = json_object(index_path, "a safetensors shard index")
    wm = index.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise PixelDiTError(f"{index_path} has no weight_map (tensor name -> shard file)", "is the index complete?")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise PixelDiTError(f"{index_path}: every weight_map value must be a shard file name", "is the index complete?")
    return [inside(folder, f, index_path) for f in sorted(set(wm.values()))]


def checkpoint_files(path) -> list[Path]:
    """The files a checkpoint is read from: the file itself, or a folder's config, index and shards."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    if diffusers_layout.is_diffusers(path):
        config, index, shards = diffusers_layout.layout(path)
        return [f for f in (config, *([index] if index else []), *shards) if f.is_file()]
    files = [path / HF_CONFIG] + ([path / HF_INDEX] if (path / HF_INDEX).is_file() else []) + shard_files(path)
    return [f for f in files if f.is_file()]


def checkpoint_sha256(path) -> str:
    """SHA-256 of what a checkpoint is: its file, or (a folder) each file it is read from, name and
    contents in order. Samples are keyed on it, so a file changed under the same name is noticed."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in checkpoint_files(path):
        h.update(f.name.encode() + b"\0" + bytes.fromhex(file_sha256(f)))
    return h.hexdigest()


def read_hf_folder(folder: Path):
    """A folder written by `convert --format hf` (the layout of Hugging Face model repos and of
    huggingface_hub's PyTorchModelHubMixin): (tensors, metadata) as for one safetensors file."""
    if not (folder / HF_CONFIG).is_file():
        raise PixelDiTError(
            f"checkpoint {folder} is a folder without {HF_CONFIG}",
            "pass a checkpoint file, or a folder written by `pixeldit convert --format hf`",
        )
    conf = json_object(folder / HF_CONFIG, "a pixeldit model folder")
    if conf.get("model_type") != "pixeldit" or not isinstance(conf.get("pixeldit_config"), dict):
        raise PixelDiTError(
            f"{folder} is not a pixeldit model folder (config.json model_type {conf.get('model_type')!r})"
        )
    tensors = {}
    for f in shard_files(folder):
        if not f.is_file():
            raise PixelDiTError(f"{folder} is missing {f.name}", "is the download complete?")
        part, _ = _safetensors_shard(f)
        tensors.update(part)
    meta = {
        "pixeldit_config": json.dumps(conf["pixeldit_config"]),
        "weights": str(conf.get("weights", "ema")),
        "class_names": json.dumps(conf.get("class_names") or []),
        "train_config": json.dumps(conf.get("train_config") or {}),
    }
    return tensors, meta


def _safetensors_shard(f: Path):
    if kind_of_file(f) != "safetensors":
        raise PixelDiTError(f"{f} is not a safetensors file", "a model folder's weights are safetensors shards")
    return read_state(f)


#################################################################################
#                        Architecture from tensor shapes                        #
#################################################################################


def _need(sd: dict, key: str):
    if key not in sd:
        raise PixelDiTError(
            f"cannot infer the architecture: tensor {key!r} is missing", "is this a PixelDiT checkpoint?"
        )
    return sd[key].shape


def _depth(sd: dict, prefix: str) -> int:
    idx = {
        int(k[len(prefix) :].split(".")[0])
        for k in sd
        if k.startswith(prefix) and k[len(prefix) :].split(".")[0].isdigit()
    }
    if not idx:
        raise PixelDiTError(f"cannot infer the architecture: no {prefix}N tensors", "is this a PixelDiT checkpoint?")
    return max(idx) + 1


def infer_config(sd: dict) -> ModelConfig:
    """ModelConfig from a network state dict's shapes alone (docs/checkpoints.md#shapes)."""
    t2i = "y_embedder.proj.weight" in sd or "y_pos_embedding" in sd
    D = _need(sd, "s_embedder.proj.weight")[0]
    d, C = _need(sd, "pixel_embedder.proj.weight")
    p = round((_need(sd, "s_embedder.proj.weight")[1] / C) ** 0.5)
    qn = "patch_blocks.0.attn.q_norm_x.weight" if t2i else "patch_blocks.0.attn.q_norm.weight"
    A = _need(sd, "pixel_blocks.0.compress_to_attn.weight")[0]
    kw = dict(
        kind="t2i" if t2i else "c2i",
        in_channels=C,
        patch_size=p,
        hidden_size=D,
        num_heads=D // _need(sd, qn)[0],
        patch_depth=_depth(sd, "patch_blocks."),
        pixel_depth=_depth(sd, "pixel_blocks."),
        pixel_hidden=d,
        pixel_attn_hidden=A,
        pixel_heads=A // _need(sd, "pixel_blocks.0.attn.q_norm.weight")[0],
        mlp_hidden=_need(sd, "patch_blocks.0.mlp_x.w1.weight" if t2i else "patch_blocks.0.mlp.w1.weight")[0],
    )
    if t2i:
        kw.update(text_dim=_need(sd, "y_embedder.proj.weight")[1], text_len=_need(sd, "y_pos_embedding")[1])
    else:
        kw.update(num_classes=_need(sd, "y_embedder.embedding_table.weight")[0] - 1)
    try:
        return ModelConfig(**kw)
    except ValueError as e:
        raise PixelDiTError(f"cannot infer the architecture: {e}") from None


def check_state(sd: dict, cfg: ModelConfig) -> None:
    """Every tensor the network needs is there with the right shape; nothing else is. Names the culprits."""
    expected = {k: v.shape for k, v in empty_model(cfg).state_dict().items()}
    missing = [k for k in expected if k not in sd]
    wrong = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k])})"
        for k in expected
        if k in sd and sd[k].shape != expected[k]
    ]
    extra = [k for k in sd if k not in expected]
    if missing:
        raise PixelDiTError(
            f"checkpoint is missing {len(missing)} tensor(s): {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
        )
    if wrong:
        raise PixelDiTError(
            f"checkpoint has {len(wrong)} tensor(s) of the wrong shape: {', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}"
        )
    if extra:
        raise PixelDiTError(
            f"checkpoint has {len(extra)} unexpected tensor(s): {', '.join(extra[:4])}",
            "is this a PixelDiT checkpoint of a known layout?",
        )


#################################################################################
#                     Any format -> (network state, config)                     #
#################################################################################


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def extract(obj, weights: str = "ema", source: str = "checkpoint") -> tuple[dict, ModelConfig, KeyReport]:
    """Network tensors, architecture and a key report from whatever `read_state` returned."""
    if weights not in ("ema", "raw"):
        raise PixelDiTError(f"unknown weights {weights!r}", "use ema or raw")
    rep = KeyReport(weights=weights)
    cfg = None
    if isinstance(obj, tuple):  # safetensors
        sd, cfg = _from_safetensors(*obj, weights, rep, source)
    elif isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        sd, cfg = _from_training(obj, weights, rep, source)
    elif isinstance(obj, dict):
        sd = _from_state_dict(obj, weights, source, rep)
    else:
        raise PixelDiTError(f"{source} holds a {type(obj).__name__}, not a checkpoint dict")
    if cfg is None:
        cfg = infer_config(sd)  # a stored config's family was checked by ModelConfig itself
    rep.class_names = checked_class_names(rep.class_names, cfg, source)
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PixelDiTError(f"{source} holds entries that are not tensors where the network's weights should be")
    check_state(sd, cfg)
    rep.used = list(sd)
    rep.dropped = {k: v for k, v in rep.dropped.items() if v}
    return sd, cfg, rep


def model_config_from(d, source: str) -> ModelConfig:
    """A ModelConfig read from a file, or one line naming the file and what is wrong with it."""
    try:
        cfg = ModelConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise PixelDiTError(
            f"{source}: invalid model config ({e})", "the file is damaged or was not written by pixeldit"
        ) from None
    return cfg


def _meta_json(meta: dict, key: str, want: type, source: str, default):
    """One JSON field of safetensors metadata (always strings there), of the type `want`."""
    if key not in meta:
        return default
    try:
        value = json.loads(meta[key])
    except (TypeError, ValueError):
        raise PixelDiTError(
            f"{source}: metadata field {key!r} is not valid JSON", "the file is damaged or was not written by pixeldit"
        ) from None
    if value is None:
        return default
    if not isinstance(value, want):
        raise PixelDiTError(
            f"{source}: metadata field {key!r} is a JSON {type(value).__name__}, not a{'n object' if want is dict else ' list'}",
            "the file is damaged or was not written by pixeldit",
        )
    return value


def checked_class_names(names, cfg: ModelConfig, source: str) -> list:
    """Class names index-aligned with class ids: a list of strings, no longer than the class table (a
    shorter one names the first ids; the rest are shown by id)."""
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PixelDiTError(
            f"{source}: class_names must be a list of strings", "the file is damaged or was not written by pixeldit"
        )
    if len(names) > cfg.num_classes:
        raise PixelDiTError(
            f"{source}: {len(names)} class_names for a model with {cfg.num_classes} classes",
            "the file is damaged or was not written by pixeldit",
        )
    return names


def _from_safetensors(sd: dict, meta: dict, weights: str, rep: KeyReport, source: str):
    """Our .safetensors: the tensors, and the config, class names and training config in its metadata."""
    rep.source_format = "safetensors"
    cfg = None
    if "diffusers_layout" in meta:
        rep.source_format = meta["diffusers_layout"]
        cfg = _stated_config(sd, _meta_json(meta, "stated_config", dict, source, {}), meta["diffusers_layout"], source)
    elif "pixeldit_config" in meta:
        cfg = model_config_from(_meta_json(meta, "pixeldit_config", dict, source, None), source)
        rep.weights = meta.get("weights", weights) if meta.get("weights") in ("ema", "raw") else weights
    rep.class_names = _meta_json(meta, "class_names", list, source, [])
    rep.train_config = _meta_json(meta, "train_config", dict, source, {})
    return sd, cfg


def _stated_config(sd: dict, stated: dict, layout: str, source: str) -> ModelConfig:
    """A diffusers folder's architecture: ours states every field; the community port's config states some,
    the rest comes from the tensors' shapes, and what it states must agree with them."""
    if layout == "pixeldit diffusers":
        return model_config_from(stated, source)
    inferred = infer_config(sd)
    differ = [f"{k} {v!r} (the tensors say {getattr(inferred, k)!r})" for k, v in stated.items()
              if getattr(inferred, k) != v]  # fmt: skip
    if differ:
        raise PixelDiTError(
            f"{source}: its config.json disagrees with its weights: {', '.join(differ[:3])}",
            "the folder's config or weights are damaged, or from different models",
        )
    return inferred


def _from_training(obj: dict, weights: str, rep: KeyReport, source: str):
    """Our training checkpoint: the EMA (or raw) network; optimizer, RNG and projector are dropped."""
    rep.source_format = "pixeldit training checkpoint"
    key = "ema" if weights == "ema" else "model"
    for k in (key, "model_config"):
        if not isinstance(obj.get(k), dict):
            raise PixelDiTError(
                f"{source} is a pixeldit training checkpoint without its {k!r} entry",
                "the file is damaged: resume from another step's checkpoint",
            )
    sd = dict(obj[key]) if "lora" not in obj else _lora_network(obj, key, source, rep)
    names, conf = obj.get("class_names"), obj.get("config")
    rep.class_names = list(names) if isinstance(names, (list, tuple)) else names
    if conf is not None and not isinstance(conf, dict):
        raise PixelDiTError(
            f"{source}: its training config is a {type(conf).__name__}, not a mapping", "the file is damaged"
        )
    rep.train_config = dict(conf or {})
    # class names and the training config are carried into the output; the rest of the training state is not
    rep.dropped.update(
        {"training state": [k for k in obj if k not in ("ema", "model", "class_names", "config", "model_config")]}
    )
    rep.dropped["the other weights"] = list(obj.get("model" if weights == "ema" else "ema") or [])
    return sd, model_config_from(obj["model_config"], source)


def _lora_network(obj: dict, key: str, source: str, rep: KeyReport) -> dict:
    """A LoRA run's checkpoint holds adapters only: its base (train.init_from, checked by SHA-256, or the
    seed's initial network) with the EMA (or raw) adapters merged in (models/lora.py)."""
    from .lora import merge_pairs, pairs_of  # noqa: PLC0415
    from .registry import build_model  # noqa: PLC0415

    lora, cfg = obj["lora"], model_config_from(obj["model_config"], source)
    base = lora.get("base") or {}
    if base.get("init_from"):
        path = Path(base["init_from"])
        if not path.exists():
            raise PixelDiTError(f"{source} holds LoRA adapters on {path}, which is not there",
                                "put the base checkpoint back where the run found it")  # fmt: skip
        if checkpoint_sha256(path) != base.get("sha256"):
            raise PixelDiTError(f"{source} holds LoRA adapters on {path}, which has changed since (SHA-256)",
                                "use the base weights the adapters were trained on")  # fmt: skip
        sd, _, _ = extract(read_state(path), base.get("weights", "ema"), str(path))
        if isinstance(lora.get("class_table"), torch.Tensor):
            sd["y_embedder.embedding_table.weight"] = lora["class_table"]
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(base.get("seed", 0)))
            sd = build_model(cfg).state_dict()
    net = empty_model(cfg)
    net.load_state_dict({k: v.float().clone() for k, v in sd.items()}, strict=True, assign=True)
    merge_pairs(net, lora["config"], pairs_of(obj[key]), 1.0, source)
    rep.notes.append(
        f"LoRA rank {lora['config']['r']} adapters merged into their base ({base.get('init_from') or 'the seed init'})"
    )
    return net.state_dict()


def _from_state_dict(obj: dict, weights: str, source: str, rep: KeyReport) -> dict:
    """A torch state dict: the official class-conditional (Lightning) or text-to-image layout, or a flat one.
    Training-only tensors are reported as dropped; anything else unexpected is refused."""
    full = obj.get("state_dict", obj)
    if not isinstance(full, dict) or not all(isinstance(v, torch.Tensor) for v in full.values()):
        raise PixelDiTError(f"{source} holds no state dict of tensors", "is this a PixelDiT checkpoint?")
    if any(k.startswith(("ema_denoiser.", "denoiser.")) for k in full):
        rep.source_format = "official class-conditional (Lightning)"
        keep = "ema_denoiser." if weights == "ema" else "denoiser."
        sd = _strip(full, keep)
        if not sd:
            raise PixelDiTError(
                f"{source} has no {keep}* tensors", "try --weights raw" if weights == "ema" else "try --weights ema"
            )
        rep.dropped["the other weights"] = [
            k for k in full if k.startswith("denoiser." if keep == "ema_denoiser." else "ema_denoiser.")
        ]
        rep.dropped["training only (REPA projector)"] = [k for k in full if k.startswith("diffusion_trainer.")]
        rest = [k for k in full if not k.startswith(("denoiser.", "ema_denoiser.", "diffusion_trainer."))]
    elif any(k.startswith("core.") for k in full):
        rep.source_format = "official text-to-image"
        use = full
        if weights == "ema" and isinstance(obj.get("state_dict_ema"), dict):
            use = obj["state_dict_ema"]
        elif weights == "ema":
            rep.weights = "raw"  # what is used, so the report's first line does not say "ema"
            rep.notes.append(
                "no EMA weights in this file (the release trains without EMA): using state_dict, as the official inference does"
            )
        sd = _strip(use, "core.")
        rep.dropped["training only (REPA projector)"] = [k for k in use if k.startswith("_repa_projector.")]
        rep.dropped["unused position table"] = [k for k in use if k in ("pos_embed", "core.pos_embed")]
        sd.pop("pos_embed", None)
        rest = [k for k in use if not k.startswith(("core.", "_repa_projector.")) and k != "pos_embed"]
    else:
        rep.source_format = "flat state dict"
        sd, rest = dict(full), []
    rep.unexpected = rest
    if rest:
        raise PixelDiTError(
            f"{source} has {len(rest)} unexpected tensor(s): {', '.join(rest[:4])}", "is this a PixelDiT checkpoint?"
        )
    return sd


#################################################################################
#                                   load_model                                  #
#################################################################################


class _MappedPages:
    """Give a memory-mapped checkpoint's pages back to the kernel once a tensor has been copied out (Linux).

    Both readers map the file (torch.load(mmap=True); safetensors 0.8 returns views into its map), and a
    page read through a map stays resident until the map closes: copying an 800M-parameter model out
    would peak at the copies plus every page read. Only whole pages inside a mapping of this very file
    are dropped (MADV_DONTNEED on a file map nobody writes to: a later read re-faults them from the
    file), so no other memory can ever be touched. Anywhere else this does nothing.
    """

    def __init__(self, path):
        self.ranges, self.madvise = [], None
        try:
            files = checkpoint_files(path)
            real = {os.fsencode(os.path.realpath(f)) for f in files}
            with open("/proc/self/maps", "rb") as f:  # bytes: a path in any encoding, whatever the locale says
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].strip() in real:  # rw-p: private; we never write to it
                        lo, hi = (int(x, 16) for x in parts[0].split(b"-"))
                        self.ranges.append((lo, hi))
            self.page = mmap.PAGESIZE
            self.madvise = ctypes.CDLL(None, use_errno=True).madvise if self.ranges else None
        except (OSError, AttributeError):
            self.ranges = []

    def drop(self, t: torch.Tensor) -> None:
        if self.madvise is None or t.device.type != "cpu":
            return
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        lo, hi = -(-start // self.page) * self.page, end // self.page * self.page
        if hi > lo and any(a <= lo and hi <= b for a, b in self.ranges):
            self.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED


def load_model(path, weights: str = "ema", device="cpu", dtype=torch.float32, unsafe_pickle: bool = False):
    """The network of any understood checkpoint, strict, in eval mode, with `.config` (a ModelConfig)."""
    sd, cfg, rep = extract(read_state(path, unsafe_pickle), weights, str(path))
    model = empty_model(cfg)
    # Fresh, aligned copies, one tensor at a time: safetensors and mmap'd files hand back buffers at
    # arbitrary offsets, and BLAS picks different (slower, differently rounded) kernels for those. Each
    # source's pages are given back as soon as it is copied, so peak memory is the model plus one tensor.
    pages = _MappedPages(path)
    state = {}
    for k in list(sd):
        src = sd.pop(k)
        state[k] = src.to(dtype=dtype, copy=True)
        pages.drop(src)
    model.load_state_dict(state, strict=True, assign=True)
    model.key_report = rep
    model.class_names = rep.class_names or None
    model.train_config = rep.train_config or None
    return model.to(device).eval()
