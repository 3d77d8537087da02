"""Output folders pixeldit owns: the ownership marker, the lock, and the only names it ever deletes.

The rule (README, Reliability): a command writes only into a folder that is new, empty, or carries
pixeldit's own marker for that command — `run.json` with `"format": "pixeldit-<kind>"` (sample, train,
edit jobs; HF / diffusers folders are recognised by their own config files). It deletes only files it
created, under names only it uses (`TEMPORARY`, part files, the outputs a job lists), and never a folder
it did not create. While a job runs, `lock` holds `OUT/.pixeldit.lock` so two processes never share
one folder.
"""

import contextlib
import errno
import fcntl
import json
import os
import re
from pathlib import Path

from .errors import PixelDiTError

MARKER = "run.json"
LOCK = ".pixeldit.lock"
# Temporary files of the atomic writers: `.NAME.pixeldit-PID.tmp` (io.temporary_name). A user's `.draft.tmp`
# does not match, so stale-temporary cleanup can never take it.
TEMPORARY = re.compile(r"^\..+\.pixeldit-\d+\.tmp$")
_OURS_ALWAYS = {LOCK}


def lock_name(target: str) -> str:
    """The lock of one file or folder written beside others (convert's DST): `.NAME.pixeldit.lock`."""
    return f".{target}.pixeldit.lock"


def lock_target(name: str) -> str:
    return name[1 : -len(".pixeldit.lock")]


def marker_format(kind: str) -> str:
    return f"pixeldit-{kind}"


def read_marker(folder: Path) -> dict | None:
    """The folder's run.json as a dict, None when there is none; a malformed one is one line."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PixelDiTError(
            f"{path} is not valid JSON ({str(e).splitlines()[0][:80]})",
            "it was not written by pixeldit, or was damaged: choose another --out",
        ) from None
    if not isinstance(d, dict):
        raise PixelDiTError(
            f"{path} holds a JSON {type(d).__name__}, not pixeldit's job description", "choose another --out"
        )
    return d


def owned_by(folder: Path, kind: str, legacy=None) -> bool:
    """True when `folder` carries pixeldit's marker for `kind` (or `legacy(folder)` recognises a folder
    made before markers had a format field)."""
    d = read_marker(folder)
    if d is not None and d.get("format") == marker_format(kind):
        return True
    return bool(legacy and legacy(folder, d))


def foreign_entries(folder: Path) -> list[str]:
    """What a folder holds besides pixeldit's lock and temporaries (so an 'empty' folder may hold those)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.name not in _OURS_ALWAYS and not TEMPORARY.match(e.name))


def claim(folder, kind: str, what: str = "--out", legacy=None) -> None:
    """Check that pixeldit may write into `folder` as a `kind` job.

    A missing or empty folder is fine (the caller creates it when it is about to write); a folder with
    anything else in it must carry our marker, or the command stops before any work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PixelDiTError(f"{what} {folder} is a file, not a folder", f"choose another {what}")
    if not folder.is_dir() or owned_by(folder, kind, legacy):
        return
    entries = foreign_entries(folder)
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise PixelDiTError(
            f"{what} {folder} already holds files pixeldit did not write for this command ({shown})",
            f"choose a new or empty folder for {what}; nothing was changed",
        )


def differences(marker: dict, identity: dict) -> list[str]:
    """The keys in which a folder's marker and this job's identity disagree (the format field aside)."""
    return sorted(k for k in set(marker) | set(identity) if k != "format" and marker.get(k) != identity.get(k))


def remove_own(folder, is_ours) -> int:
    """Delete the plain files of `folder` whose name `is_ours(name)` accepts — the one way pixeldit removes
    files: by names only it writes, never following links, never a folder."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        with os.scandir(folder) as it:
            for e in it:
                if is_ours(e.name) and e.is_file(follow_symlinks=False):
                    Path(e.path).unlink(missing_ok=True)
                    n += 1
    return n


def remove_stale_temporaries(folder) -> int:
    """Delete the temporaries a killed pixeldit process left in `folder`: only names of TEMPORARY's shape."""
    return remove_own(folder, TEMPORARY.match)


@contextlib.contextmanager
def lock(folder, what: str = "--out", name: str = LOCK):
    """Hold `folder/.pixeldit.lock` (flock) for the life of a job: a second process on the same folder is
    refused at once, in one line, instead of racing the first. The lock dies with its process; the file
    is removed when the job ends (a process that opened it just before then sees, after locking, that
    the name no longer points at its file, and is refused too)."""
    folder = Path(folder)
    path = folder / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PixelDiTError(
            f"could not write {path}: {e.strerror or e}", f"the folder is not writable: choose another {what}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same = os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            same = None
        if not same:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            target = folder if name == LOCK else folder / lock_target(name)
            raise PixelDiTError(
                f"another pixeldit process (pid {holder}) is writing to {target}",
                f"wait for it to finish, or choose another {what}",
            )
        os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):  # the pid is only a courtesy for the message above (a full disk)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    finally:
        os.close(fd)  # releases the lock
