"""The demo's measured edits: FlowEdit over real test images, scored by the independent classifier.

    python scripts/edit_study.py --ckpt MODEL --classifier CLF.pt --out DIR [--per-pair 12] [--steps 25]

Writes DIR/edit_study.json (every row), DIR/edit_table.md (the sweep), DIR/strip.png (the chosen
setting on the first pair: each row a real source and its edit, labelled) and prints the table.
"""

import argparse
from pathlib import Path

import torch

from pixeldit_cli.convert import load_model
from pixeldit_cli.edit_study import Pair, study, table_markdown
from pixeldit_cli.io import write_grid, write_json, write_text
from pixeldit_cli.metrics.classifier import load_classifier
from pixeldit_cli.train.data import FashionMNIST

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
    test = FashionMNIST("test", 32)
    images = torch.stack([test[i][0] for i in range(2000)])
    labels = test.labels[:2000].numpy()
    names = getattr(model, "class_names", None) or list(test.classes)
    res = study(model, clf, images, labels, PAIRS, per_pair=a.per_pair, strengths=a.strengths, tgt_cfgs=a.tgt_cfgs,
                src_cfg=a.src_cfg, steps=a.steps, log=print)
    table = table_markdown(res, names)
    ch = res["chosen"]
    p = PAIRS[0]
    k = min(6, a.per_pair)
    src, edited = res["sources"][p][:k], res["edits"][(ch["strength"], ch["tgt_cfg"], p.src, p.tgt)][:k]
    write_grid(torch.stack([src, edited], 1).flatten(0, 1), out / "strip.png", nrow=2,
               column_labels=[f"real {names[p.src]}", f"-> {names[p.tgt]}"])
    settings = {"ckpt": a.ckpt, "classifier": a.classifier, "classifier_test_accuracy": meta["test_accuracy"],
                "per_pair": a.per_pair, "steps": a.steps, "src_cfg": a.src_cfg, "n_avg": 1, "seed": 0,
                "pairs": [{"src": q.src, "tgt": q.tgt, "box": q.box} for q in PAIRS]}
    write_json(out / "edit_study.json", {"settings": settings, "baseline": res["baseline"], "chosen": ch,
                                         "sweep": res["settings"]})
    write_text(out / "edit_table.md", table)
    print(table)
    print(f"chosen: strength {ch['strength']:g}, target CFG {ch['tgt_cfg']:g}; strip: {out / 'strip.png'} "
          f"(each row: a real test image and its edit)")


if __name__ == "__main__":
    main()
