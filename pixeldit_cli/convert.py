"""`pixeldit convert`: any checkpoint `models/loading.py` reads -> a safetensors file (config in its metadata),
a Hugging Face style folder (config.json + model.safetensors, sharded above a size) or a diffusers pipeline
folder (pipelines.py; docs/diffusers.md). Only pixeldit's own outputs are ever replaced (--force), and a
second convert to the same destination is refused (a lock)."""

import json
import os
import re
import shutil
import struct
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .errors import PixelDiTError
from .families import family_of
from .folders import lock, lock_name, remove_own
from .io import atomic_path, ensure_writable_dir, ensure_writable_file, temporary_name, write_error, write_text
from .models.config import ModelConfig
from .models.loading import HF_CONFIG, HF_INDEX, KeyReport, extract, kind_of_file, read_state

#################################################################################
#              Hugging Face style folders: config.json + model.safetensors      #
#################################################################################


def write_hf_folder(sd: dict, cfg: ModelConfig, rep, dst: Path, source: str, max_shard_size: str = "5GB") -> None:
    """config.json + model.safetensors (or shards and an index above `max_shard_size`), atomically as a
    folder: written beside DST, then renamed into place. Sharding is huggingface_hub's own."""
    from huggingface_hub import split_torch_state_dict_into_shards  # noqa: PLC0415 (optional/heavy)

    tmp = temporary_name(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        split = split_torch_state_dict_into_shards(
            sd, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
        )
        for filename, keys in split.filename_to_tensors.items():
            with atomic_path(tmp / filename) as t:
                _save(str(t), {k: sd[k].contiguous() for k in keys}, {"format": "pt"})
        if split.is_sharded:
            index = {
                "metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
                "weight_map": dict(sorted(split.tensor_to_filename.items())),
            }
            write_text(tmp / HF_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
        conf = {
            "model_type": "pixeldit",
            "architectures": [family_of(cfg).architecture],
            "pixeldit_config": cfg.to_dict(),
            "weights": rep.weights,
            "class_names": rep.class_names or None,
            "train_config": rep.train_config or None,
            "source": source,
            "source_format": rep.source_format,
        }
        write_text(tmp / HF_CONFIG, json.dumps(conf, indent=2, sort_keys=True) + "\n")
        _swap_in(tmp, dst, _remove_own_files)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(dst, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


HF_OWN = re.compile(
    r"^(config\.json|model\.safetensors|model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors|README\.md)$"
)


def _swap_in(tmp: Path, dst: Path, remove_old) -> None:
    """Rename a finished folder into place; an existing DST (checked by replaceable_folder: ours, and only our
    files) is moved aside first, then emptied by `remove_old`."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.pixeldit-old-{os.getpid()}.tmp")
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        remove_old(old)


def replaceable_folder(dst: Path, src: Path, format: str = "hf") -> None:
    """`--force` on a folder: only one `convert --format hf|diffusers` wrote, holding nothing but the files
    it writes, and neither holding the source nor the working folder. Anything else is refused before any work."""
    real, src_real, cwd = dst.resolve(), src.resolve(), Path.cwd().resolve()
    if real == src_real or real in src_real.parents:
        raise PixelDiTError(f"{dst} contains the source {src}", "choose a new folder as DST")
    if real == cwd or real in cwd.parents:
        raise PixelDiTError(f"{dst} is the working folder or one above it", "choose a new folder as DST")
    if format == "diffusers" or (real / "model_index.json").exists():
        foreign = _foreign_diffusers_files(real)
        if foreign:
            raise PixelDiTError(
                f"{dst} is not a folder written by `pixeldit convert --format diffusers`: it holds {foreign}",
                "--force only replaces pixeldit's own model folders: choose a new DST; nothing was changed",
            )
        return
    conf = real / HF_CONFIG
    marked = False
    if conf.is_file():
        try:
            marked = json.loads(conf.read_text(encoding="utf-8")).get("model_type") == "pixeldit"
        except (ValueError, UnicodeDecodeError, AttributeError, OSError):
            marked = False
    foreign = sorted(
        e.name for e in os.scandir(real) if not (HF_OWN.match(e.name) and e.is_file(follow_symlinks=False))
    )
    if not marked or foreign:
        what = f"files pixeldit did not write ({', '.join(foreign[:3])})" if foreign else "no pixeldit config.json"
        raise PixelDiTError(
            f"{dst} is not a folder written by `pixeldit convert --format hf`: it holds {what}",
            "--force only replaces pixeldit's own model folders: choose a new DST; nothing was changed",
        )


def replaceable_file(dst: Path) -> None:
    """`--force` on a file: only a safetensors file that pixeldit wrote (metadata format "pixeldit")."""
    ours = False
    try:
        if kind_of_file(dst) == "safetensors":
            with safe_open(str(dst), framework="pt") as f:
                ours = (f.metadata() or {}).get("format") == "pixeldit"
    except Exception:  # unreadable: not provably ours
        ours = False
    if not ours:
        raise PixelDiTError(
            f"{dst} exists and was not written by pixeldit",
            "--force only replaces pixeldit's own "
            "safetensors files: choose another DST, or remove the file yourself; nothing was changed",
        )


def _remove_own_files(folder: Path) -> None:
    remove_own(folder, HF_OWN.match)
    os.rmdir(folder)


#################################################################################
#              diffusers pipeline folders (pipelines.py reads them)             #
#################################################################################

DIFFUSERS_MARK = "pixeldit-diffusers"
_SHARD = r"diffusion_pytorch_model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?"
DIFFUSERS_OWN = {  # sub-folder -> the names pixeldit writes there
    "": re.compile(r"^(model_index\.json|README\.md|pipeline_pixeldit\.py)$"),
    "transformer": re.compile(rf"^(config\.json|transformer_pixeldit\.py|{_SHARD})$"),
    "scheduler": re.compile(r"^(scheduler_config\.json|scheduler_pixeldit\.py)$"),
}
LINKED = ("text_encoder", "tokenizer")  # symbolic links to the user's encoder folder, never followed
THIN = {  # the module files diffusers imports with trust_remote_code: each re-exports the installed class
    "pipeline_pixeldit.py": ("PixelDiTPipeline", "PixelDiTT2IPipeline"),
    "transformer/transformer_pixeldit.py": ("PixelDiTTransformer2DModel",),
    "scheduler/scheduler_pixeldit.py": ("PixelDiTScheduler",),
}


def _foreign_diffusers_files(real: Path) -> str:
    """What in a folder `--force` would replace was not written by pixeldit ('' when all of it was)."""
    conf = real / "model_index.json"
    try:
        marked = json.loads(conf.read_text(encoding="utf-8")).get("_pixeldit", {}).get("format") == DIFFUSERS_MARK
    except (ValueError, UnicodeDecodeError, AttributeError, OSError):
        marked = False
    if not marked:
        return "no pixeldit model_index.json"
    foreign = []
    for e in os.scandir(real):
        if e.name in LINKED and e.is_symlink():
            continue
        if e.name in DIFFUSERS_OWN and e.name and e.is_dir(follow_symlinks=False):
            pattern = DIFFUSERS_OWN[e.name]
            foreign += [f"{e.name}/{c.name}" for c in os.scandir(e.path)
                        if not (pattern.match(c.name) and c.is_file(follow_symlinks=False))]  # fmt: skip
        elif not (DIFFUSERS_OWN[""].match(e.name) and e.is_file(follow_symlinks=False)):
            foreign.append(e.name)
    return f"files pixeldit did not write ({', '.join(sorted(foreign)[:3])})" if foreign else ""


def _remove_diffusers_folder(folder: Path) -> None:
    """Remove a folder _foreign_diffusers_files found to be all ours: its files, links (not what they point
    to) and sub-folders, nothing else."""
    for name in LINKED:
        if (folder / name).is_symlink():
            os.unlink(folder / name)
    for sub, pattern in DIFFUSERS_OWN.items():
        if sub and (folder / sub).is_dir():
            remove_own(folder / sub, pattern.match)
            os.rmdir(folder / sub)
    remove_own(folder, DIFFUSERS_OWN[""].match)
    os.rmdir(folder)


def _require_diffusers() -> None:
    try:
        import diffusers  # noqa: F401, PLC0415 (optional extra)
    except ImportError:
        raise PixelDiTError(
            "--format diffusers needs the diffusers package", "pip install 'pixeldit[diffusers]'; nothing was written"
        ) from None


def write_diffusers_folder(sd, cfg, rep, dst: Path, src: Path, max_shard_size="5GB", text_encoder: str = "") -> None:
    """A diffusers pipeline folder (docs/diffusers.md#layout), atomically: written beside DST, renamed into place."""
    from .config import command_config  # noqa: PLC0415
    from .models.loading import checkpoint_sha256  # noqa: PLC0415
    from .models.registry import empty_model  # noqa: PLC0415
    from .pipelines import PixelDiTScheduler, PixelDiTTransformer2DModel  # noqa: PLC0415 (diffusers)

    family = family_of(cfg)
    linked = _encoder_entries(text_encoder) if (text_encoder and family.prompted) else None
    net = empty_model(cfg)
    net.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True, assign=True)
    net.train_config, net.class_names = rep.train_config or None, rep.class_names or None
    defaults, defaults_from = command_config(None, None, net)
    sc = defaults.sample
    size = sc.height or defaults.data.resolution
    transformer = PixelDiTTransformer2DModel.from_network(net, sample_size=size, weights=rep.weights)
    scheduler = PixelDiTScheduler(solver=sc.solver, shift=sc.shift, num_inference_steps=sc.steps,
                                  guidance_scale=sc.cfg, guidance_interval=list(sc.interval))  # fmt: skip
    digest = checkpoint_sha256(src)
    pipe = family.pipeline
    index = {
        "_class_name": ["pipeline_pixeldit", pipe],
        "_diffusers_version": _diffusers_version(),
        "_pixeldit": {"format": DIFFUSERS_MARK, "source": src.name, "source_sha256": digest, "weights": rep.weights},
        "transformer": ["transformer_pixeldit", "PixelDiTTransformer2DModel"],
        "scheduler": ["scheduler_pixeldit", "PixelDiTScheduler"],
    }
    if family.prompted:
        index.update(linked or {"text_encoder": [None, None], "tokenizer": [None, None]})
    tmp = temporary_name(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        transformer.save_pretrained(tmp / "transformer", max_shard_size=max_shard_size, safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        for name, classes in THIN.items():
            write_text(tmp / name, _thin_module(classes))
        write_text(tmp / "model_index.json", json.dumps(index, indent=2) + "\n")
        card = _model_card(cfg, rep, src, digest, family.title, pipe, sc, size, defaults_from, bool(linked))
        write_text(tmp / "README.md", card)
        if linked:
            for name in LINKED:
                os.symlink(os.path.abspath(text_encoder), tmp / name, target_is_directory=True)
        _swap_in(tmp, dst, _remove_diffusers_folder)
    except OSError as e:
        _remove_partial(tmp)
        raise write_error(dst, e) from None
    except BaseException:
        _remove_partial(tmp)
        raise


def _remove_partial(tmp: Path) -> None:
    """Our temporary folder, links unfollowed (shutil.rmtree never follows a symlink to a directory)."""
    shutil.rmtree(tmp, ignore_errors=True)


def _encoder_entries(path: str) -> dict:
    """model_index.json's text_encoder / tokenizer entries for a local Gemma-2 folder (read, never fetched)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise PixelDiTError(f"--text-encoder {path} is not a local model folder (no config.json)",
                            "pass the folder of gemma-2-2b-it; nothing is downloaded")  # fmt: skip
    from transformers import AutoTokenizer  # noqa: PLC0415 (optional, heavy)
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES  # noqa: PLC0415

    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    model_class = MODEL_MAPPING_NAMES.get(model_type)
    if model_class is None:
        raise PixelDiTError(f"--text-encoder {path}: unknown model_type {model_type!r}", "pass gemma-2-2b-it")
    tokenizer = type(AutoTokenizer.from_pretrained(folder, local_files_only=True)).__name__
    return {"text_encoder": ["transformers", model_class], "tokenizer": ["transformers", tokenizer]}


def _diffusers_version() -> str:
    import diffusers  # noqa: PLC0415 (optional extra)

    return diffusers.__version__


def _thin_module(classes) -> str:
    names = ", ".join(classes)
    return (
        '"""Written by `pixeldit convert --format diffusers`: diffusers imports this file when loading with\n'
        "trust_remote_code=True; the classes are the installed pixeldit's (pip install 'pixeldit[diffusers]').\n"
        '"""\n\n'
        f"from pixeldit_cli.pipelines import {names}  # noqa: F401\n"
    )


def _model_card(cfg, rep, src: Path, digest, title, pipe, sc, size, defaults_from, linked) -> str:
    """README.md: what the checkpoint is, where it came from, how the release samples it."""
    from . import __version__  # noqa: PLC0415
    from .models.registry import count_params, empty_model  # noqa: PLC0415

    params = count_params(empty_model(cfg))
    lo, hi = sc.interval
    if family_of(cfg).prompted:
        call = 'pipe("a red fox in the snow", generator=[torch.Generator().manual_seed(0)]).images[0]'
        load = (
            "PixelDiTT2IPipeline.from_pretrained(folder" + ("" if linked else ", text_encoder=..., tokenizer=...") + ")"
        )
        tag = "text-to-image"
    else:
        call = "pipe(class_labels=[0], generator=[torch.Generator().manual_seed(0)]).images[0]"
        load = "PixelDiTPipeline.from_pretrained(folder)"
        tag = "unconditional-image-generation"
    return f"""---
library_name: diffusers
pipeline_tag: {tag}
tags: [pixeldit, pixel-space-diffusion]
license: ""  # fill in: the license of the source checkpoint
---

# PixelDiT ({title}) — diffusers pipeline

Converted by pixeldit {__version__} (`pixeldit convert --format diffusers`) from `{src.name}`
(format: {rep.source_format}; weights: {rep.weights}).

- source SHA-256: `{digest}`
- network: {params:,} parameters; patch size {cfg.patch_size}, width {cfg.hidden_size}, {cfg.patch_depth} patch
  blocks + {cfg.pixel_depth} pixel blocks (pixel width {cfg.pixel_hidden}); {cfg.in_channels} channels
- pipeline: `{pipe}`; scheduler `PixelDiTScheduler` (pixeldit's own solvers)

## Sampling settings (the pipeline's defaults; from {defaults_from})

| solver | steps | guidance scale | guidance interval | shift | resolution |
|---|---|---|---|---|---|
| {sc.solver} | {sc.steps} | {sc.cfg:g} | {lo:g} – {hi:g} | {sc.shift:g} | {size}² |

## Use

```python
import torch
import pixeldit  # noqa: F401  (pip install 'pixeldit[diffusers]')
from pixeldit_cli.pipelines import {pipe}

pipe = {load.replace("folder", '"path/to/this/folder"')}
image = {call}
```

or `diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`. With one generator per
image seeded `seed + i`, image i equals `pixeldit sample --ckpt <this folder> --seed seed` (fp32, CPU: the
same uint8 pixels).
"""


#################################################################################
#                           convert and load_model                              #
#################################################################################


def canonical_header(path) -> None:
    """Sort a safetensors file's metadata keys in place, so one input always gives the same bytes.

    safetensors serialises `__metadata__` from a hash map: its key order (and so the file's SHA-256,
    which results.json records) changes from run to run. The sorted header has the same length, so no
    tensor byte moves.
    """
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
        header = json.loads(raw)
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
        new = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) > n:  # cannot happen for the same content; leave the file valid rather than guess
            return
        f.seek(8)
        f.write(new + b" " * (n - len(new)))  # safetensors pads its header with spaces


def convert(
    src,
    dst,
    weights: str = "ema",
    force: bool = False,
    unsafe_pickle: bool = False,
    format: str = "safetensors",
    max_shard_size: str = "5GB",
    text_encoder: str = "",
    merge_lora: tuple = (),
) -> KeyReport:
    """Write the network of `src` (any understood format) to `dst`: one safetensors file with its config in
    the metadata, (format "hf") a Hugging Face style folder: config.json + model.safetensors (sharded), or
    (format "diffusers") a diffusers pipeline folder; `text_encoder` (T2I) is linked into the latter.
    `merge_lora`: ((peft LoRA folder, scale, sha256), ...) merged into the weights first (models/lora.py)."""
    src, dst = Path(src), Path(os.path.abspath(dst))  # abspath: "." and ".." get a real name and parent
    if dst.resolve() == src.resolve():
        raise PixelDiTError("destination is the source file", "choose another DST")
    if format not in ("safetensors", "hf", "diffusers"):
        raise PixelDiTError(f"unknown format {format!r}", "use safetensors, hf or diffusers")
    if format == "diffusers":
        _require_diffusers()
    if text_encoder and format != "diffusers":
        raise PixelDiTError("--text-encoder is only for --format diffusers", "drop it, or add --format diffusers")
    if format in ("hf", "diffusers"):
        if dst.exists() and not (dst.is_dir() and force):
            raise PixelDiTError(
                f"{dst} already exists", "pass --force to replace the folder" if dst.is_dir() else "choose another DST"
            )
        if dst.exists():
            replaceable_folder(dst, src, format)
        ensure_writable_dir(dst.parent, what=f"the folder of {dst.name}")
    else:
        ensure_writable_file(dst, force, what="DST")  # before reading a 10 GB source, not after
        if dst.exists():
            replaceable_file(dst)
    with lock(dst.parent, "DST", lock_name(dst.name)):  # two converts to one DST: the second is refused
        return _convert_locked(src, dst, weights, unsafe_pickle, format, max_shard_size, text_encoder, merge_lora)


def _convert_locked(src: Path, dst: Path, weights, unsafe_pickle, format, max_shard_size, text_encoder,
                    merge_lora=()) -> KeyReport:  # fmt: skip
    sd, cfg, rep = extract(read_state(src, unsafe_pickle), weights, str(src))
    if merge_lora:
        from .models.lora import apply_loras  # noqa: PLC0415
        from .models.registry import empty_model  # noqa: PLC0415

        net = empty_model(cfg)
        net.load_state_dict({k: v.float().clone() for k, v in sd.items()}, strict=True, assign=True)
        apply_loras(net, merge_lora)
        sd = net.state_dict()
        rep.notes.append(
            f"merged {len(merge_lora)} LoRA adapter(s): {', '.join(f'{p} x{s:g}' for p, s, _ in merge_lora)}"
        )
    if format == "diffusers":
        write_diffusers_folder(sd, cfg, rep, dst, src, max_shard_size, text_encoder)
        return rep
    if format == "hf":
        write_hf_folder(sd, cfg, rep, dst, src.name, max_shard_size)
        return rep
    meta = {
        "format": "pixeldit",
        "pixeldit_config": json.dumps(cfg.to_dict()),
        "weights": rep.weights,
        "source": src.name,
        "source_format": rep.source_format,
    }
    if rep.class_names:
        meta["class_names"] = json.dumps(rep.class_names)
    if rep.train_config:  # so `sample --ckpt X` uses the model's own resolution and sampling defaults
        meta["train_config"] = json.dumps(rep.train_config, sort_keys=True)
    # contiguous() is a no-op for the usual case; memory-mapped sources are copied once, here.
    with atomic_path(dst) as tmp:
        _save(str(tmp), {k: v.contiguous() for k, v in sd.items()}, meta)
    return rep


def _save(path: str, tensors: dict, meta: dict) -> None:
    """safetensors' save_file with sorted metadata; its I/O errors come back as the OSError they are."""
    try:
        save_file(tensors, path, metadata=meta)
    except Exception as e:  # safetensors reports an I/O failure as its own error type: "... (os error 28)"
        m = re.search(r"os error (\d+)", str(e))
        if m is None:
            raise
        raise OSError(int(m.group(1)), os.strerror(int(m.group(1)))) from None
    canonical_header(path)
