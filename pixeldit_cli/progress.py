"""One progress bar for every command (rich), off when asked or on ranks other than 0."""

import contextlib


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


@contextlib.contextmanager
def progress(enabled: bool = True):
    """`with progress(on) as bar: t = bar.add("sampling", total=n); bar.advance(t, k, info="2.1 img/s")`."""
    if not enabled:
        yield _Quiet()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                 TimeRemainingColumn())
    p.start()
    try:
        yield _Bar(p)
    finally:
        p.stop()
