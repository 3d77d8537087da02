"""The `--nproc` launcher's one contract with its workers, kept free of torch (every command runs it first)."""

import ctypes
import os
import signal
import sys

LAUNCHER_ENV = "PIXELDIT_LAUNCHER_PID"


def die_with_launcher() -> None:
    """In a worker started by `--nproc`: ask the kernel to end this process when its launcher dies (Linux
    PR_SET_PDEATHSIG), so a launcher killed with SIGKILL leaves no orphaned workers holding the folder."""
    pid = os.environ.get(LAUNCHER_ENV)
    if not pid or not sys.platform.startswith("linux") or str(os.getpid()) == pid:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != pid:  # the launcher died before the request took effect
        os._exit(1)
