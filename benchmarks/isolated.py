"""Run a benchmark's plain variants in a child process that never enters the fast path.

The fast path changes the process, not only the network: it has glibc keep freed memory in the heap for the
rest of the process (pixeldit_cli/heap.py), which speeds up every later forward in it, plain ones
included. Measured in one process, "plain" after "ours" would be a plain network no user runs. So the plain
calls run in a spawned child that builds the same network from the same seed, and the parent asks it for
one call at a time: the two still alternate call by call (machine noise hits both alike) and never
overlap (each waits for the other).

    with Isolated(factory, *args) as plain:   # factory(*args) -> {label: zero-argument call}
        seconds, output = plain("fp32 plain")
"""

import multiprocessing as mp
import time


def _serve(conn, factory, args):
    calls = factory(*args)
    conn.send(sorted(calls))
    while (label := conn.recv()) is not None:
        t0 = time.perf_counter()
        out = calls[label]()
        conn.send((time.perf_counter() - t0, out))


class Isolated:
    def __init__(self, factory, *args):
        self.factory, self.args = factory, args

    def __enter__(self):
        self.conn, child = mp.get_context("spawn").Pipe()
        self.proc = mp.get_context("spawn").Process(target=_serve, args=(child, self.factory, self.args))
        self.proc.start()
        self.labels = self.conn.recv()  # built: the child's network exists before any timing
        return self

    def __call__(self, label: str):
        self.conn.send(label)
        return self.conn.recv()

    def __exit__(self, *exc):
        self.conn.send(None)
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()
