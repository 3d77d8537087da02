"""Export held-out Fashion-MNIST test images for the demo: an ADM npz (reference for FID) and single PNGs.

    python scripts/fashion_export.py OUT_DIR [--n 500]

Writes OUT_DIR/fashion_test.npz (the first N test images, 32×32 RGB, as the training pipeline pads them)
and OUT_DIR/sneaker.png, OUT_DIR/shirt.png (the first test image of each class, for the edit demo).
"""

import argparse
from pathlib import Path

import numpy as np
from torchvision.io import write_png

from pixeldit_cli.npz import write_npz
from pixeldit_cli.train.data import FashionMNIST


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=500)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = FashionMNIST("test", 32)
    imgs = np.stack([ds[i][0].permute(1, 2, 0).numpy() for i in range(a.n)])
    write_npz(out / "fashion_test.npz", imgs, arr_1=ds.labels[: a.n].numpy())
    for name, cls in (("sneaker", 7), ("shirt", 6)):
        i = int((ds.labels == cls).nonzero()[0])
        write_png(ds[i][0], str(out / f"{name}.png"))
    print(f"wrote {out}/fashion_test.npz ({a.n} images), sneaker.png, shirt.png")


if __name__ == "__main__":
    main()
