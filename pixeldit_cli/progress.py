"""One progress bar for every command: rich's live bar on a terminal, plain lines in a log file (every
5% of the work, with rate and ETA), nothing when asked or on ranks other than 0."""

import contextlib
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class _Quiet:
    def add(self, label: str, total: int, **fields):
        return None

    def advance(self, task, n: int = 1, **fields):
        pass

    def update(self, task, **kw):
        pass


class _Bar:
    def __init__(self, progress):
        self.p = progress

    def add(self, label: str, total: int, completed: int = 0, **fields):
        return self.p.add_task(label, total=total, completed=completed, info=fields.get("info", ""))

    def advance(self, task, n: int = 1, info: str | None = None):
        kw = {"info": info} if info is not None else {}
        self.p.update(task, advance=n, **kw)

    def update(self, task, **kw):
        self.p.update(task, **kw)


class _Lines:
    """For output that is not a terminal (`train ... > log 2>&1`): one whole line per 5% of a task, and
    the last. A live bar there prints nothing until the end, and its last frame is cut to the width."""

    def __init__(self, stream, every: float = 0.05):
        self.stream, self.every, self.tasks = stream, every, {}

    def add(self, label: str, total: int, completed: int = 0, **fields):
        self.tasks[label] = {
            "total": max(1, total),
            "done": completed,
            "start": completed,
            "t0": time.perf_counter(),
            "shown": completed,
            "info": fields.get("info", ""),
        }
        return label

    def advance(self, task, n: int = 1, info: str | None = None):
        self.update(task, completed=self.tasks[task]["done"] + n, info=info)

    def update(self, task, completed=None, info=None, **_):
        t = self.tasks[task]
        if info is not None:
            t["info"] = info
        if completed is None:
            return
        t["done"] = completed
        if completed - t["shown"] >= self.every * t["total"] or completed >= t["total"] > t["shown"]:
            t["shown"] = completed
            self._line(task, t)

    def _line(self, label, t):
        elapsed = time.perf_counter() - t["t0"]
        made = t["done"] - t["start"]
        eta = elapsed / made * (t["total"] - t["done"]) if made > 0 else float("nan")
        eta_s = f"ETA {int(eta // 60)}m{int(eta % 60):02d}s" if eta == eta else "ETA ?"
        print(
            f"{label} {t['done']}/{t['total']} ({100 * t['done'] / t['total']:.0f}%) {elapsed:.0f}s elapsed, {eta_s}"
            + (f" | {t['info']}" if t["info"] else ""),
            file=self.stream,
            flush=True,
        )


@contextlib.contextmanager
def progress(enabled: bool = True):
    """`with progress(on) as bar: t = bar.add("sampling", total=n); bar.advance(t, k, info="2.1 img/s")`."""
    if not enabled:
        yield _Quiet()
        return
    if not sys.stdout.isatty():
        yield _Lines(sys.stderr)
        return

    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    p.start()
    try:
        yield _Bar(p)
    finally:
        p.stop()
