"""Edits measured, not judged by eye: FlowEdit's evaluation with a classifier in place of CLIP (docs/editing.md#measured).

For a class-conditional model, a fixed set of real images per source class and a few source → target
pairs, every setting of a small sweep (strength × target CFG) is scored by an independent classifier:

  success      share of class-changing edits the classifier assigns to the target class
  kept         share of identity edits (source == target, only the guidance differs) still assigned to
               the source class — an edit method must not wander when asked for nothing
  ssim / mse   similarity to the source over the whole image (how much of the picture survives)
  bg_ssim/mse  the same outside the pair's edit box, for pairs that name one (what the edit must not touch)

Baselines are measured too: the classifier's accuracy on the unedited sources and the share of sources it
already calls the target (an edit's success must be read against that floor).

Choosing a setting (stated so a reader can redo it): among settings whose success rate is within
`tolerance` of the best one, the one that keeps most of the source (highest whole-image SSIM).

Run as a script (the demo's measured edits, FlowEdit over real test images):

    python -m studies.edit_study --ckpt MODEL --classifier CLF.pt --out DIR [--per-pair 12] [--steps 25]

Writes DIR/edit_study.json (every row), DIR/edit_table.md (the sweep), DIR/strip.png (the chosen
setting on the first pair: each row a real source and its edit, labelled) and prints the table.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixeldit_cli.edit import background_metrics, bbox_region, flowedit, ssim_map
from pixeldit_cli.io import write_grid, write_json, write_text
from pixeldit_cli.models.loading import load_model
from pixeldit_cli.solvers import to_uint8
from pixeldit_cli.train.data import FashionMNIST
from studies.classifier import load_classifier, predict


@dataclass(frozen=True)
class Pair:
    src: int
    tgt: int
    box: tuple | None = None  # (x0, y0, x1, y1): where the edit may change the image; None = no box

    @property
    def identity(self) -> bool:
        return self.src == self.tgt


def pick_sources(labels, pair: Pair, n: int) -> np.ndarray:
    """The first n images of the source class: a fixed set, the same for every setting."""
    idx = np.flatnonzero(np.asarray(labels) == pair.src)[:n]
    if len(idx) < n:
        raise ValueError(f"only {len(idx)} images of class {pair.src}, need {n}")
    return idx


def _similarity(src_u8, out_u8):
    a, b = src_u8.double() / 255, out_u8.double() / 255
    return float(((a - b) ** 2).mean()), float(ssim_map(a, b).mean())


def edit_pair(model, classifier, images_u8, pair: Pair, *, strength, tgt_cfg, src_cfg, steps, n_avg=1, seed=0):
    """Edit one batch of uint8 (N, C, H, W) sources (C = the model's channels) for `pair`; returns (row of metrics, edited uint8)."""
    dev = next(model.parameters()).device
    x = (images_u8.float() / 127.5 - 1).to(dev)
    n = len(x)
    src = torch.full((n,), pair.src, device=dev)
    tgt = torch.full((n,), pair.tgt, device=dev)
    z, _ = flowedit(
        model, x, src, tgt, steps=steps, strength=strength, src_cfg=src_cfg, tgt_cfg=tgt_cfg, n_avg=n_avg, seed=seed
    )
    out = to_uint8(z).cpu()
    pred = predict(classifier, out)
    sims = np.array([_similarity(a, b) for a, b in zip(images_u8, out)])
    row = {
        "src": pair.src,
        "tgt": pair.tgt,
        "n": n,
        "strength": strength,
        "tgt_cfg": tgt_cfg,
        "to_target": float((pred == pair.tgt).mean()),
        "to_source": float((pred == pair.src).mean()),
        "mse": float(sims[:, 0].mean()),
        "ssim": float(sims[:, 1].mean()),
    }
    if pair.box is not None:
        region = bbox_region(out.shape[-2], out.shape[-1], pair.box)
        bg = [background_metrics(a, b, region) for a, b in zip(images_u8, out)]
        row["bg_mse"] = float(np.mean([m["background_mse"] for m in bg]))
        row["bg_ssim"] = float(np.mean([m["background_ssim"] for m in bg]))
    return row, out


def summarize(rows) -> dict:
    """One setting's rows -> success (class changes), kept (identity edits), mean similarity of the changes."""
    change = [r for r in rows if r["src"] != r["tgt"]]
    same = [r for r in rows if r["src"] == r["tgt"]]
    mean = lambda rs, k: float(np.mean([r[k] for r in rs])) if rs and all(k in r for r in rs) else None
    return {
        "success": mean(change, "to_target"),
        "kept": mean(same, "to_source"),
        "ssim": mean(change, "ssim"),
        "mse": mean(change, "mse"),
        "bg_ssim": mean([r for r in change if "bg_ssim" in r], "bg_ssim"),
        "bg_mse": mean([r for r in change if "bg_mse" in r], "bg_mse"),
    }


def choose(settings: list[dict], tolerance: float = 0.05) -> dict:
    """The setting with the best success up to `tolerance`, then the most source kept (whole-image SSIM)."""
    best = max(s["success"] for s in settings)
    near = [s for s in settings if s["success"] >= best - tolerance]
    return max(near, key=lambda s: s["ssim"])


def study(
    model,
    classifier,
    images_u8,
    labels,
    pairs,
    *,
    per_pair: int,
    strengths,
    tgt_cfgs,
    src_cfg: float,
    steps: int,
    n_avg: int = 1,
    seed: int = 0,
    log=None,
):
    """Run the sweep. Returns {"baseline", "settings" (summaries with their rows), "chosen", "edits"}.

    images_u8: uint8 (N, 3, H, W) real images, labels (N,). `edits[(strength, tgt_cfg, src, tgt)]` holds
    the edited images (uint8) so a caller can draw strips without re-running anything.
    """
    labels = np.asarray(labels)
    sources = {p: images_u8[torch.as_tensor(pick_sources(labels, p, per_pair))] for p in pairs}
    base = {}
    for p in pairs:
        pred = predict(classifier, sources[p])
        base[f"{p.src}->{p.tgt}"] = {
            "source_correct": float((pred == p.src).mean()),
            "already_target": float((pred == p.tgt).mean()),
        }
    settings, edits = [], {}
    for s in strengths:
        for g in tgt_cfgs:
            rows = []
            for p in pairs:
                row, out = edit_pair(
                    model,
                    classifier,
                    sources[p],
                    p,
                    strength=s,
                    tgt_cfg=g,
                    src_cfg=src_cfg,
                    steps=steps,
                    n_avg=n_avg,
                    seed=seed,
                )
                rows.append(row)
                edits[(s, g, p.src, p.tgt)] = out
            summary = {"strength": s, "tgt_cfg": g, **summarize(rows), "rows": rows}
            settings.append(summary)
            if log:
                log(
                    f"strength {s:.2f}  target CFG {g:g}: success {summary['success']:.2f}  "
                    f"kept {summary['kept'] if summary['kept'] is not None else float('nan'):.2f}  SSIM {summary['ssim']:.3f}"
                )
    chosen = choose(settings)
    return {
        "baseline": base,
        "settings": settings,
        "chosen": {"strength": chosen["strength"], "tgt_cfg": chosen["tgt_cfg"]},
        "sources": sources,
        "edits": edits,
    }


def table_markdown(result, class_names) -> str:
    """The sweep as a Markdown table (one line per setting) plus the per-pair success of the chosen one."""
    name = lambda c: class_names[c] if class_names else str(c)
    lines = [
        "| strength | target CFG | success | kept (identity) | SSIM to source | MSE | background SSIM (box) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v, f: "—" if v is None else format(v, f)
    ch = result["chosen"]
    for s in result["settings"]:
        mark = " **chosen**" if (s["strength"], s["tgt_cfg"]) == (ch["strength"], ch["tgt_cfg"]) else ""
        lines.append(
            f"| {s['strength']:.2f}{mark} | {s['tgt_cfg']:g} | {fmt(s['success'], '.2f')} | {fmt(s['kept'], '.2f')} "
            f"| {fmt(s['ssim'], '.3f')} | {fmt(s['mse'], '.4f')} | {fmt(s['bg_ssim'], '.3f')} |"
        )
    best = next(s for s in result["settings"] if (s["strength"], s["tgt_cfg"]) == (ch["strength"], ch["tgt_cfg"]))
    lines += [
        "",
        "| pair (chosen setting) | to target | to source | SSIM | unedited: correct / already target |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in best["rows"]:
        b = result["baseline"][f"{r['src']}->{r['tgt']}"]
        lines.append(
            f"| {name(r['src'])} → {name(r['tgt'])} | {r['to_target']:.2f} | {r['to_source']:.2f} | {r['ssim']:.3f} "
            f"| {b['source_correct']:.2f} / {b['already_target']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# Sneaker → Ankle boot may change the upper rows only (the shaft grows up; the sole stays): that box gives
# the background metric. The identity pairs ask for nothing and must keep their class.
PAIRS = [Pair(7, 9, (0, 0, 32, 18)), Pair(5, 7), Pair(0, 3), Pair(1, 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-pair", type=int, default=12)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.8, 0.96])
    ap.add_argument("--tgt-cfgs", type=float, nargs="+", default=[4.0, 6.0])
    ap.add_argument("--src-cfg", type=float, default=1.0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_model(a.ckpt)
    clf, meta = load_classifier(a.classifier)
    test = FashionMNIST("test", 32, channels=model.config.in_channels)  # gray for a 1-channel model
    images = torch.stack([test[i][0] for i in range(2000)])
    labels = test.labels[:2000].numpy()
    names = getattr(model, "class_names", None) or list(test.classes)
    res = study(
        model,
        clf,
        images,
        labels,
        PAIRS,
        per_pair=a.per_pair,
        strengths=a.strengths,
        tgt_cfgs=a.tgt_cfgs,
        src_cfg=a.src_cfg,
        steps=a.steps,
        log=print,
    )
    table = table_markdown(res, names)
    ch = res["chosen"]
    p = PAIRS[0]
    k = min(6, a.per_pair)
    src, edited = res["sources"][p][:k], res["edits"][(ch["strength"], ch["tgt_cfg"], p.src, p.tgt)][:k]
    write_grid(
        torch.stack([src, edited], 1).flatten(0, 1),
        out / "strip.png",
        nrow=2,
        column_labels=[f"real {names[p.src]}", f"-> {names[p.tgt]}"],
    )
    settings = {
        "ckpt": a.ckpt,
        "classifier": a.classifier,
        "classifier_test_accuracy": meta["test_accuracy"],
        "per_pair": a.per_pair,
        "steps": a.steps,
        "src_cfg": a.src_cfg,
        "n_avg": 1,
        "seed": 0,
        "pairs": [{"src": q.src, "tgt": q.tgt, "box": q.box} for q in PAIRS],
    }
    write_json(
        out / "edit_study.json",
        {"settings": settings, "baseline": res["baseline"], "chosen": ch, "sweep": res["settings"]},
    )
    write_text(out / "edit_table.md", table)
    print(table)
    print(
        f"chosen: strength {ch['strength']:g}, target CFG {ch['tgt_cfg']:g}; strip: {out / 'strip.png'} "
        f"(each row: a real test image and its edit)"
    )


if __name__ == "__main__":
    main()
