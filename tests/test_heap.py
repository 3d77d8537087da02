"""The kept heap (heap.py): once the fast path has run, a forward no longer faults its working set in again.

Counted by the kernel, in a fresh process each (the setting is for the process): the third forward of a
tiny network at 256², batch 2. Its pixel-wise AdaLN table alone is 2·64²·16·96 floats = 48 MB = 12,288 pages,
above glibc's largest mmap threshold (32 MB), so by default it is mapped afresh — and faulted page by
page — on every forward; with the heap kept it is the memory the previous forward freed.
"""

import os
import subprocess
import sys

import pytest

from pixeldit_cli import heap

CHILD = """
import resource, sys, torch
from pixeldit_cli import build_model, heap
kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
net = build_model("PixelDiT-XS/4").eval()
x, t, y = torch.randn(2, 3, 256, 256), torch.tensor([0.3, 0.7]), torch.tensor([1, 2])
with torch.inference_mode():
    net(x, t, y), net(x, t, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x, t, y)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
TABLE_PAGES = 2 * 64 * 64 * 16 * 96 * 4 // 4096  # the AdaLN table of one forward, in 4 KB pages


def faults(mode: str, **env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})  # fmt: skip
    kept, n = out.stdout.split()
    return kept, int(n)


@pytest.mark.skipif(heap._libc() is None, reason="no glibc mallopt here")
def test_a_forward_stops_faulting_its_memory_in_once_the_heap_is_kept():
    kept, default = faults("default")
    assert kept == "False" and default >= TABLE_PAGES == 12_288
    kept, n = faults("keep")
    assert kept == "True" and n <= default / 4  # measured: 0–6K against 41K
    kept, n = faults("keep", PIXELDIT_KEEP_HEAP="0")  # the opt-out
    assert kept == "False" and n >= TABLE_PAGES
