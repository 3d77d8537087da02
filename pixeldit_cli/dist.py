"""The runtime every command shares: processes (torchrun or `--nproc`) and the device.

One rule for the device, in every command: `--device auto` is CUDA when present (under torchrun the
local rank's GPU), else the CPU; an explicit `cpu`, `cuda` or `cuda:N` is checked before any work. The
precision is chosen from the hardware in precision.py.
"""

import os
import sys
import uuid

import torch

from .errors import PixelDiTError
from .workers import LAUNCHER_ENV


def dist_env() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's environment; (0, 1, 0) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def pick_device(spec: str | None = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a device this process can use (the local rank's GPU for 'cuda')."""
    spec = (spec or "auto").strip().lower()
    _, _, local = dist_env()
    if spec == "auto":
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise PixelDiTError(f"--device {spec}: no CUDA device is visible here", "use --device cpu (or auto)")
        index = local if spec == "cuda" else spec.split(":", 1)[1]
        if not str(index).isdigit() or int(index) >= torch.cuda.device_count():
            raise PixelDiTError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}",
            )
        return torch.device(f"cuda:{int(index)}")
    raise PixelDiTError(f"unknown --device {spec!r}", "use auto, cpu, cuda or cuda:N")


def init_distributed(device: str | None = "auto") -> tuple[int, int, torch.device]:
    """(rank, world, device); joins the process group when started by torchrun / --nproc."""
    rank, world, _ = dist_env()
    dev = pick_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def broadcast(obj, world: int):
    """Rank 0's `obj` on every rank (a picklable object; small)."""
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, world: int) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def device_report(device: torch.device, precision: str, reason: str = "") -> dict:
    """What a results.json says about where it ran, and in which precision (and why: precision.choose)."""
    rep = {"device": str(device), "dtype": precision, "precision_reason": reason or None, "world_size": dist_env()[1]}
    if device.type == "cuda":
        rep["device_name"] = torch.cuda.get_device_name(device)
    return rep


def launch_workers(nproc: int, argv: list[str] | None = None) -> None:
    """Re-run this command in `nproc` local processes through torch.distributed's launcher (torchrun's)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch  # noqa: PLC0415 (heavy: only when used)

    if nproc < 1:
        raise PixelDiTError(f"--nproc must be at least 1, got {nproc}")
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a == "--nproc":
            del argv[i : i + 2]
            break
        if a.startswith("--nproc="):
            del argv[i]
            break
    if argv and argv[0] == "--":
        argv = argv[1:]
    os.environ[LAUNCHER_ENV] = str(os.getpid())  # the workers die with this process (die_with_launcher)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "pixeldit_cli", *argv)
    except Exception as e:  # ChildFailedError: a worker already printed its own one-line error
        raise PixelDiTError(f"{nproc} worker processes did not all finish ({type(e).__name__})") from None
