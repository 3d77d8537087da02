"""Keep freed memory in the process heap: page faults cost a tenth of a CPU forward.

glibc's malloc serves large blocks (above a threshold that rises to at most 32 MB) with a fresh `mmap` and
gives them back to the kernel on `free`, and trims the heap's top beyond a few MB. A CPU forward makes
hundreds of such activations — XL/16 at 256² writes its 50 MB pixel-wise AdaLN table four times per
evaluation — so every evaluation faults much of its working set in again, page by page: 70K–270K minor
faults per XL/16 forward, measured, 0.15–0.25 s of a 2.2 s forward (the GEMMs that write fresh outputs
take the blame in a profile). With the heap kept (`M_MMAP_MAX = 0`: no mmap; up to 2 GB kept free at the
heap's top) a forward faults nothing once the first has run. This is what jemalloc / tcmalloc under
`LD_PRELOAD` buy CPU inference servers, without a preload, and what PyTorch's caching allocator does on CUDA.

`keep_freed_memory()` switches it on for the rest of the process — the fast path (models/packed.py
`fast_linears`: the jobs, `pixeldit.sample`, `flowedit`) and `train` call it on a CPU (a B/16 training
step faulted 120K–145K pages per step: 2–10% of its time). The cost is the caching
allocator's: the process's resident memory stays near its peak until it exits. It is for the process because it only pays across calls: given back after every call, the next
one faults its working set in again (measured: slower than never keeping it). Numerics are untouched: only
where memory comes from changes. No-op on a libc without `mallopt` (musl, macOS) and with
PIXELDIT_KEEP_HEAP=0.
"""

import ctypes
import ctypes.util
import functools
import os
import threading

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers
KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GB free at the heap's top

_lock = threading.Lock()
_kept = False


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc's mallopt, or None where it does not exist."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory() -> bool:
    """From now on this process keeps freed memory in its heap (no mmap for large blocks, no trimming).
    Returns whether that is in effect (False where the libc cannot, or PIXELDIT_KEEP_HEAP=0)."""
    global _kept
    if os.environ.get("PIXELDIT_KEEP_HEAP", "1").strip() == "0" or _libc() is None:
        return False
    with _lock:
        if not _kept:
            mallopt = _libc()
            _kept = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD))
    return _kept


def kept() -> bool:
    """Whether this process keeps freed memory in its heap (keep_freed_memory ran and took effect)."""
    return _kept


def mem_available() -> int | None:
    """The kernel's MemAvailable in bytes (what can still be allocated without swapping), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
