"""LoRA adapters for PixelDiT with peft: added for training, saved in peft's own format, merged for sampling.

  add_adapters(model, ...)    peft's LoRA layers on the target Linears (inject_adapter_in_model: the module
                              names stay the network's); every base weight frozen
  adapter_state(model)        the adapter tensors alone (what a LoRA run's checkpoints and EMA hold)
  save_adapters(model, dir)   adapter_config.json + adapter_model.safetensors, as PeftModel.save_pretrained
                              writes them ("base_model.model.<module>.lora_A.weight"): PeftModel.from_pretrained
                              loads them onto the project's network
  merge_adapters(model, dir, scale)
                              W ← W + scale · (α / r) · B A on every target, in place — sampling then runs the
                              plain (and packed) network at full speed; scale 0 leaves every weight bit for bit

Default targets (both families, docs/fine-tuning.md#lora): the attention projections and MLPs of the patch
and pixel blocks — `attn.qkv`, `attn.proj` (T2I: `_x`, `_y` streams too), `mlp.w1/w2/w3` (SwiGLU, T2I
`mlp_x`, `mlp_y`) and `mlp.fc1/fc2` (pixel level). The embedders, AdaLN modulations and the final layer
stay as they are.
"""

import json
from pathlib import Path

import torch

from ..errors import PixelDiTError
from ..io import atomic_path

DEFAULT_TARGETS = r".*(patch_blocks|pixel_blocks)\.\d+\.(attn\.(qkv|proj)(_x|_y)?|mlp(_x|_y)?\.(w1|w2|w3|fc1|fc2))"
CONFIG, WEIGHTS, PREFIX = "adapter_config.json", "adapter_model.safetensors", "base_model.model."


def _peft():
    try:
        import peft  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise PixelDiTError("LoRA needs the peft package", "pip install 'pixeldit[lora]'") from None
    return peft


def lora_config(rank: int, alpha: float = 0.0, dropout: float = 0.0, targets: str = ""):
    """peft's LoraConfig; alpha 0 means alpha = rank (scaling 1); targets: a regex over module names."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise PixelDiTError(f"train.lora.rank must be a positive integer, got {rank!r}", "e.g. --train.lora.rank 16")
    if not 0.0 <= dropout < 1.0:
        raise PixelDiTError(f"train.lora.dropout must be in [0, 1), got {dropout}")
    if alpha < 0:
        raise PixelDiTError(f"train.lora.alpha must be 0 (= rank) or positive, got {alpha}")
    return _peft().LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=dropout,
                              target_modules=targets or DEFAULT_TARGETS, init_lora_weights=True)  # fmt: skip


def targets_of(model, pattern: str) -> list[str]:
    """The Linear modules a target regex selects (full match, as peft matches a string), in order."""
    import re  # noqa: PLC0415

    rx = re.compile(pattern)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and rx.fullmatch(n)]


def add_adapters(model, config):
    """LoRA layers (peft) on the config's targets, in place; base weights frozen, adapters trainable."""
    hits = targets_of(model, config.target_modules)
    if not hits:
        raise PixelDiTError(
            f"train.lora.targets {config.target_modules!r} matches no Linear of this network",
            "give a regex over module names such as patch_blocks.0.attn.qkv (empty: the default targets)",
        )
    model = _peft().inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def adapter_state(model, state: dict | None = None) -> dict:
    """The adapter tensors (peft's names without the adapter name: `<module>.lora_A.weight`), of the model or
    of a full state dict of it (a sharded run's, gathered)."""
    return dict(_peft().get_peft_model_state_dict(model, state_dict=state))


def load_adapter_state(model, state: dict) -> None:
    result = _peft().set_peft_model_state_dict(model, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise PixelDiTError(f"the adapter state lacks {len(missing)} tensor(s), e.g. {missing[0]}")


def save_adapters(state: dict, config, folder: Path) -> None:
    """adapter_config.json + adapter_model.safetensors, in the layout PeftModel.save_pretrained writes."""
    from safetensors.torch import save_file  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file({PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), {"format": "pt"})
    conf = config.to_dict()
    conf["target_modules"] = (
        config.target_modules if isinstance(config.target_modules, str) else sorted(config.target_modules)
    )
    with atomic_path(folder / CONFIG) as tmp:
        Path(tmp).write_text(json.dumps(conf, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def read_adapters(folder) -> tuple[dict, dict]:
    """(adapter_config, {module: (A, B)}) of a peft LoRA folder, or one line saying what is wrong."""
    from safetensors.torch import load_file  # noqa: PLC0415

    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise PixelDiTError(f"--lora {folder} is not a peft LoRA folder", f"it needs {CONFIG} and {WEIGHTS}")
    try:
        conf = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as e:  # a damaged JSON or safetensors file: one line
        raise PixelDiTError(f"--lora {folder} is not readable ({str(e).splitlines()[0][:100]})") from None
    if conf.get("peft_type", "LORA") != "LORA" or not isinstance(conf.get("r"), int):
        raise PixelDiTError(f"--lora {folder} holds a {conf.get('peft_type')!r} adapter", "only LoRA adapters load")
    pairs = pairs_of({(k[len(PREFIX) :] if k.startswith(PREFIX) else k): v for k, v in tensors.items()})
    if not pairs:
        raise PixelDiTError(f"--lora {folder} has no complete lora_A / lora_B pairs")
    return conf, pairs


def merge_adapters(model, folder, scale: float = 1.0) -> list[str]:
    """W ← W + scale · (α / r) · B A for every adapted Linear of `model`, in place; the names merged."""
    conf, pairs = read_adapters(folder)
    return merge_pairs(model, conf, pairs, scale, f"--lora {folder}")


def pairs_of(state: dict) -> dict:
    """{module: (A, B)} from adapter tensors named `<module>.lora_A.weight` (a LoRA run's checkpoint)."""
    pairs = {}
    for k, v in state.items():
        for part in (".lora_A.weight", ".lora_B.weight"):
            if k.endswith(part):
                pairs.setdefault(k[: -len(part)], {})[part[6]] = v
    return {m: (p["A"], p["B"]) for m, p in sorted(pairs.items()) if set(p) == {"A", "B"}}


def check_pairs(model, pairs: dict, what: str) -> None:
    """Every adapter pair names a Linear of `model` with matching shapes; else one line naming two."""
    modules = dict(model.named_modules())
    problems = []
    for name, (a, b) in pairs.items():
        lin = modules.get(name)
        if not isinstance(lin, torch.nn.Linear):
            problems.append(f"{name} (no such Linear in this network)")
        elif a.shape[1] != lin.in_features or b.shape[0] != lin.out_features or a.shape[0] != b.shape[1]:
            problems.append(
                f"{name} (A {tuple(a.shape)}, B {tuple(b.shape)} for a {lin.out_features}x{lin.in_features} weight)"
            )
    if problems:
        raise PixelDiTError(f"{what} does not fit this network: {'; '.join(problems[:2])}",
                            "use adapters trained on this architecture")  # fmt: skip


@torch.no_grad()
def merge_pairs(model, conf: dict, pairs: dict, scale: float, what: str) -> list[str]:
    modules = dict(model.named_modules())
    scaling = float(conf.get("lora_alpha") or conf["r"]) / conf["r"]
    check_pairs(model, pairs, what)
    if scale == 0:
        return []
    for name, (a, b) in pairs.items():
        w = modules[name].weight
        w.add_((b.to(torch.float32) @ a.to(torch.float32)).to(w.dtype), alpha=scale * scaling)
    return list(pairs)


def lora_specs(folders, scales) -> tuple:
    """--lora DIR ... with --lora-scale s ... -> ((absolute DIR, scale, SHA-256 of its weights), ...), checked."""
    from ..io import file_sha256  # noqa: PLC0415
    from ..validate import finite  # noqa: PLC0415

    if len(scales) > len(folders):
        raise PixelDiTError(
            f"{len(scales)} --lora-scale values for {len(folders)} --lora folders", "one scale per --lora"
        )
    out = []
    for i, folder in enumerate(folders):
        scale = finite("--lora-scale", scales[i], lo=-100.0, hi=100.0) if i < len(scales) else 1.0
        read_adapters(folder)  # a folder that is not a LoRA is one line now, before the checkpoint loads
        out.append((str(Path(folder).resolve()), float(scale), file_sha256(Path(folder) / WEIGHTS)))
    return tuple(out)


def apply_loras(model, specs) -> None:
    """Merge every (folder, scale, sha256) of `specs` into `model`'s weights, in order."""
    for folder, scale, _ in specs:
        merge_adapters(model, folder, scale)
