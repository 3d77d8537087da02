"""Training checkpoints: complete, boring, atomic.

`checkpoints/{step:07d}.pt` and `checkpoints/last.pt` hold model, EMA, REPA projector, optimizer, step,
RNG states of every rank, the resolved config, the model config and the class map — loadable with
torch.load(weights_only=True). Each file is written to a temporary name, fsynced, then renamed, so a
process killed mid-write (even by SIGKILL) leaves the previous checkpoint intact.
"""

import os
import pickle
import re
import signal
from pathlib import Path

import torch

from ..errors import PixelDiTError
from ..folders import remove_stale_temporaries
from ..io import atomic_file

FORMAT = "pixeldit-train"  # the "format" entry of every training checkpoint (models/loading.py reads it)


def _atomic_save(obj, path: Path):
    with atomic_file(path) as f:
        torch.save(obj, f)
        f.flush()
        _test_kill_hook(f, path.name)


def _test_kill_hook(f, name: str):
    """Tests only: PIXELDIT_TEST_KILL_IN_SAVE=0000004.pt SIGKILLs the process halfway through writing that file."""
    if os.environ.get("PIXELDIT_TEST_KILL_IN_SAVE") == name:
        f.truncate(max(1, f.tell() // 2))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)


STEP_NAME = re.compile(r"^\d{7}\.pt$")  # {step:07d}.pt: the only names retention ever deletes


def save(state: dict, ckpt_dir: Path, step: int, keep_last: int, keep_every: int) -> Path:
    """Write {step:07d}.pt, point last.pt at it (hard link, renamed into place), apply retention."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(ckpt_dir)  # what a killed save left
    path = ckpt_dir / f"{step:07d}.pt"
    _atomic_save(state, path)
    tmp = ckpt_dir / ".last.pt.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # filesystems without hard links: a second atomic copy
        _atomic_save(state, tmp)
    os.replace(tmp, ckpt_dir / "last.pt")
    steps = sorted(int(p.stem) for p in ckpt_dir.iterdir() if STEP_NAME.match(p.name))
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    for s in steps:
        if s not in keep and not (keep_every and s % keep_every == 0) and s != step:
            (ckpt_dir / f"{s:07d}.pt").unlink(missing_ok=True)
    return path


def find_resume(resume: str, out: Path):
    """'auto' -> out/checkpoints/last.pt if present (else None); a path -> that path."""
    if not resume:
        return None
    if resume == "auto":
        last = out / "checkpoints" / "last.pt"
        return last if last.exists() else None
    p = Path(resume)
    if not p.exists():
        raise PixelDiTError(f"--resume {p} does not exist", "pass a checkpoint path, or --resume auto")
    return p


def load(path: Path) -> dict:
    """A training checkpoint, or one line saying exactly why this file is not one."""
    path = Path(path)
    if path.is_dir():
        raise PixelDiTError(f"--resume {path} is a folder", "pass a checkpoint file such as OUT/checkpoints/last.pt")
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        raise PixelDiTError(
            f"{path} is a weights-only safetensors file, not a training checkpoint",
            "training resumes from OUT/checkpoints/*.pt (weights, optimizer, step, data position)",
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise PixelDiTError(
                f"{path} contains pickled code, which is refused",
                "pixeldit training checkpoints hold tensors and plain values only; is this file from elsewhere?",
            ) from None
        raise PixelDiTError(
            f"checkpoint {path} is corrupt or truncated (unpickling failed)", _others_hint(path)
        ) from None
    except Exception as e:  # truncated zip, garbage
        raise PixelDiTError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__})", _others_hint(path)
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PixelDiTError(
            f"{path} is not a pixeldit training checkpoint",
            "training resumes from OUT/checkpoints/*.pt; released weights cannot be resumed from",
        )
    return state


def _others_hint(path: Path) -> str:
    """Name the step checkpoints that are separate files (last.pt is a hard link to one of them)."""
    others = sorted(p.name for p in path.parent.glob("[0-9]*.pt") if not _same_file(p, path))
    return (
        f"other checkpoints: {', '.join(others[-3:])}; pass one with --resume PATH"
        if others
        else "start without --resume"
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def load_for_resume(resume: str, out: Path) -> tuple[dict | None, Path | None, str]:
    """(state, path, note). With --resume auto, a last.pt that no longer loads falls back to the newest step
    checkpoint that does (a different file: last.pt is a hard link), and the note says so."""
    path = find_resume(resume, out)
    if path is None:
        return None, None, ""
    try:
        return load(path), path, ""
    except PixelDiTError as first:
        if resume != "auto":
            raise
        ckpts = sorted((p for p in path.parent.glob("[0-9]*.pt") if not _same_file(p, path)), reverse=True)
        for p in ckpts:
            try:
                return load(p), p, f"{path.name} does not load ({first.message}); resuming from {p.name}"
            except PixelDiTError:
                continue
        raise PixelDiTError(first.message, "no other checkpoint in the run loads either: start a new --out") from None
