"""Train the demo's independent Fashion-MNIST classifier (studies/classifier.py) and print its accuracy.

    python -m studies.fashion_classifier OUT.pt [--epochs 3] [--judge samples.npz [--json verdict.json]]

Trains on the 60k real training images (28×28; the 32×32 images the diffusion model makes are centre-
cropped back to them), measures accuracy on the 10k test images, stores both with the weights. Re-running with OUT.pt present only re-reads and prints it.
--judge scores class-conditional samples (an ADM npz: arr_0 images, arr_1 the classes asked for): the
share the classifier assigns to the class they were sampled for, read against its own test accuracy;
--json also writes it (with its binomial standard error and the share per class) for make demo's summary.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pixeldit_cli.io import write_json
from pixeldit_cli.train.data import FashionMNIST
from studies.classifier import accuracy, load_classifier, predict, save_classifier, train_classifier


def gray(ds) -> torch.Tensor:
    """(N, 1, 28, 28) in [-1, 1]."""
    return ds.images.unsqueeze(1).float() / 127.5 - 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--judge", help="samples.npz to score (arr_1: the classes the samples were drawn for)")
    ap.add_argument("--json", help="with --judge: write the verdict here as JSON")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists():
        model, meta = load_classifier(out)
        print(f"classifier {out}: test accuracy {meta['test_accuracy']:.4f} (trained earlier)")
    else:
        model, meta = fit(out, a.epochs)
    if a.judge:
        with np.load(a.judge) as f:
            imgs, asked = f["arr_0"], f["arr_1"]
        hit = predict(model, imgs) == asked
        acc, se = float(hit.mean()), float(hit.std(ddof=1) / np.sqrt(len(hit)))
        print(
            f"samples: {acc:.1%} (SE {se:.1%}) of {len(asked)} assigned to the class they were drawn for "
            f"(the classifier gets {meta['test_accuracy']:.1%} of real test images right)"
        )
        if a.json:
            per = {meta["classes"][c]: float(hit[asked == c].mean()) for c in np.unique(asked)}
            write_json(Path(a.json), {"agreement": acc, "se": se, "n": int(len(asked)), "per_class": per,
                                      "classifier_test_accuracy": meta["test_accuracy"]})  # fmt: skip


def fit(out: Path, epochs: int):
    t0 = time.perf_counter()
    train, test = FashionMNIST("train", 28), FashionMNIST("test", 28)
    model = train_classifier(gray(train), train.labels, 10, epochs=epochs, log=print)
    acc = accuracy(model, gray(test), test.labels.numpy())
    secs = time.perf_counter() - t0
    meta = dict(test_accuracy=acc, epochs=epochs, seconds=secs, classes=list(train.classes))
    save_classifier(model, out, **meta)
    print(f"classifier: test accuracy {acc:.4f} on 10,000 real test images ({secs:.0f} s) -> {out}")
    return model, meta


if __name__ == "__main__":
    main()
