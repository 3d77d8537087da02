"""`pixeldit convert`: any checkpoint `models/loading.py` reads -> a safetensors file (config in its metadata)
or a Hugging Face style folder (config.json + model.safetensors, sharded above a size). Only pixeldit's own
outputs are ever replaced (--force), and a second convert to the same destination is refused (a lock)."""

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
#                               Reading files                                   #
#################################################################################


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
        old = None
        if dst.exists():  # checked by replaceable_folder: ours, and only our files; moved aside, then emptied
            old = dst.with_name(f".{dst.name}.pixeldit-old-{os.getpid()}.tmp")
            os.replace(dst, old)
        os.replace(tmp, dst)
        if old is not None:
            _remove_own_files(old)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(dst, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


HF_OWN = re.compile(
    r"^(config\.json|model\.safetensors|model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors|README\.md)$"
)


def replaceable_folder(dst: Path, src: Path) -> None:
    """`--force` on a folder: only one `convert --format hf` wrote, holding nothing but the files it writes,
    and neither holding the source nor the working folder. Anything else is refused before any work."""
    real, src_real, cwd = dst.resolve(), src.resolve(), Path.cwd().resolve()
    if real == src_real or real in src_real.parents:
        raise PixelDiTError(f"{dst} contains the source {src}", "choose a new folder as DST")
    if real == cwd or real in cwd.parents:
        raise PixelDiTError(f"{dst} is the working folder or one above it", "choose a new folder as DST")
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
#                       Architecture from tensor shapes                         #
#################################################################################


#################################################################################
#                      Any format -> (network state, config)                    #
#################################################################################


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
) -> KeyReport:
    """Write the network of `src` (any understood format) to `dst`: one safetensors file with its config in
    the metadata, or (format "hf") a Hugging Face style folder: config.json + model.safetensors (sharded)."""
    src, dst = Path(src), Path(os.path.abspath(dst))  # abspath: "." and ".." get a real name and parent
    if dst.resolve() == src.resolve():
        raise PixelDiTError("destination is the source file", "choose another DST")
    if format == "hf":
        if dst.exists() and not (dst.is_dir() and force):
            raise PixelDiTError(
                f"{dst} already exists", "pass --force to replace the folder" if dst.is_dir() else "choose another DST"
            )
        if dst.exists():
            replaceable_folder(dst, src)
        ensure_writable_dir(dst.parent, what=f"the folder of {dst.name}")
    else:
        ensure_writable_file(dst, force, what="DST")  # before reading a 10 GB source, not after
        if dst.exists():
            replaceable_file(dst)
    with lock(dst.parent, "DST", lock_name(dst.name)):  # two converts to one DST: the second is refused
        return _convert_locked(src, dst, weights, unsafe_pickle, format, max_shard_size)


def _convert_locked(src: Path, dst: Path, weights, unsafe_pickle, format, max_shard_size) -> KeyReport:
    sd, cfg, rep = extract(read_state(src, unsafe_pickle), weights, str(src))
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
