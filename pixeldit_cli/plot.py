"""`pixeldit plot RUN`: the training curves of a run folder as one image, from its metrics.jsonl.

Four panels against step: the loss (total, and the flow part when REPA adds its own), the REPA loss,
the learning rate, and the gradient norm before clipping (with the clip threshold). The trainer also
draws it at every checkpoint when matplotlib is installed (`pip install pixeldit[plot]`).
"""

import json
from pathlib import Path

from .errors import PixelDiTError
from .io import atomic_path, is_complete_png


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise PixelDiTError(f"{run} has no metrics.jsonl", "pass a run folder written by `pixeldit train`")
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line a crash tore
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)  # anything else is not a line the trainer wrote
    if not rows:
        raise PixelDiTError(f"{path} holds no logged steps yet", "plot again after the first log line")
    return rows


def plot_metrics(run, out=None) -> Path:
    """Write RUN/loss.png (or `out`) and return its path."""
    try:
        import matplotlib  # noqa: PLC0415 (optional)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415 (optional)
    except ImportError:
        raise PixelDiTError("plotting needs matplotlib", "pip install 'pixeldit[plot]' (or matplotlib)") from None
    out = Path(out) if out else Path(run) / "loss.png"
    if out.suffix.lower() != ".png" or out.is_dir():
        raise PixelDiTError(f"--out {out} is not a .png file name", "e.g. --out curves.png")
    if out.exists() and not is_complete_png(out):
        raise PixelDiTError(f"{out} exists and is not a PNG pixeldit could have drawn", "choose another --out")
    rows = read_metrics(run)
    step = [r["step"] for r in rows]
    col = lambda k: [r.get(k, float("nan")) for r in rows]
    fig, ax = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    mark = "o" if len(rows) < 3 else None  # one or two logged steps are points, not an empty panel
    ax[0, 0].plot(step, col("loss"), label="total", marker=mark)
    if any(r.get("loss_repa", 0) for r in rows):
        ax[0, 0].plot(step, col("loss_flow"), label="flow", alpha=0.8, marker=mark)
        ax[0, 0].legend()
    ax[0, 0].set_title("loss")
    ax[0, 1].plot(step, col("loss_repa"), color="tab:purple", marker=mark)
    ax[0, 1].set_title("REPA loss (0 when REPA is off)")
    ax[1, 0].plot(step, col("lr"), color="tab:green", marker=mark)
    ax[1, 0].set_title("learning rate")
    ax[1, 1].plot(step, col("grad_norm"), color="tab:red", label="grad norm", marker=mark)
    ax[1, 1].plot(step, col("grad_clip"), color="black", linestyle="--", linewidth=0.8, label="clip")
    ax[1, 1].set_title("gradient norm (before clipping)")
    ax[1, 1].legend()
    for a in ax[1]:
        a.set_xlabel("step")
    for a in ax.flat:
        a.grid(alpha=0.3)
    fig.suptitle(f"{Path(run).name}: {len(rows)} log lines, step {step[-1]}")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out
