"""FSDP for large runs (the 1.3B T2I model): shard parameters, gradients and optimizer state across ranks.

`train.fsdp: true` with more than one process shards every patch/pixel block and the network root with
FSDP2's `fully_shard` (the EMA copy and the REPA projector likewise). Checkpoints stay in the one format
every run writes and reads: full tensors, optimizer state keyed by parameter index — gathered here on
all ranks (collective) before rank 0 writes, and converted back when a sharded run resumes. With LoRA the
frozen base is sharded like the rest and the checkpoint keeps the adapters alone, as an unsharded run's does.
"""

import torch
import torch.nn as nn


def shard(model: nn.Module, ema: nn.Module, projector: nn.Module | None):
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415 (heavy: only when used)

    for net in (model, ema):
        for block in [*net.patch_blocks, *net.pixel_blocks]:
            fully_shard(block)
        fully_shard(net)
    if projector is not None:
        fully_shard(projector)


def _names(mods: nn.ModuleDict) -> list[str]:
    """The optimizer's parameters in order (what trains: with LoRA the adapters, as an unsharded run's index)."""
    return [n for n, p in mods.named_parameters() if p.requires_grad]


def index_to_names(osd: dict, names: list[str]) -> dict:
    return {
        "state": {names[int(i)]: v for i, v in osd["state"].items()},
        "param_groups": [dict(g, params=[names[int(i)] for i in g["params"]]) for g in osd["param_groups"]],
    }


def names_to_index(osd: dict, names: list[str]) -> dict:
    pos = {n: i for i, n in enumerate(names)}
    return {
        "state": {pos[n]: v for n, v in osd["state"].items()},
        "param_groups": [dict(g, params=[pos[n] for n in g["params"]]) for g in osd["param_groups"]],
    }


def full_state(model, ema, projector, opt, mods: nn.ModuleDict) -> dict:
    """Full model / EMA / projector / optimizer state on rank 0 (others get empty dicts). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict  # noqa: PLC0415 (heavy: only when used)

    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    out = {
        "model": get_model_state_dict(model, options=o),
        "ema": get_model_state_dict(ema, options=o),
        "projector": get_model_state_dict(projector, options=o) if projector is not None else {},
    }
    osd = get_optimizer_state_dict(mods, opt, options=o)
    out["optimizer"] = names_to_index(osd, _names(mods)) if osd else {}
    return out


def load_optimizer(opt, mods: nn.ModuleDict, osd: dict):
    """An index-keyed full optimizer state into a sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # noqa: PLC0415 (heavy: only when used)

    set_optimizer_state_dict(
        mods, opt, optim_state_dict=index_to_names(osd, _names(mods)), options=StateDictOptions(full_state_dict=True)
    )


def as_full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (e.g. a sharded grad norm) as a plain tensor; plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
