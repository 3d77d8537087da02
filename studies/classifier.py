"""A small, independent image classifier that judges edits and samples on small datasets (docs/editing.md#measured).

FlowEdit's paper scores an edit with CLIP: does the result match the target text? On a class-labelled
dataset a classifier trained on the *real* training images plays that role without any download: the
edit succeeds when the classifier assigns the edited image to the target class. It shares nothing with
the diffusion model (its own architecture, its own training, the real labels only), so it cannot be
fooled by the model agreeing with itself.

The network is LeNet-shaped (two 5×5 conv + pool stages, BatchNorm, one linear head): about 3.7 M
multiply-adds per 28×28 image, three epochs of Fashion-MNIST in about a minute on two CPU cores, ≈ 90%
test accuracy — the accuracy is measured and stored with the weights, never assumed.
"""

import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixeldit_cli.io import atomic_file


class SmallClassifier(nn.Module):
    """Gray images in [-1, 1] of one size; RGB inputs are averaged over channels and larger inputs centre-
    cropped to it (Fashion-MNIST's 28×28 inside the 32×32 the diffusion model makes)."""

    def __init__(self, num_classes: int, width: int = 16, size: int = 32):
        super().__init__()
        self.num_classes, self.width, self.size = num_classes, width, size
        self.conv1 = nn.Conv2d(1, width, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * (size // 4) ** 2, num_classes)

    def forward(self, x):
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-1] > self.size or x.shape[-2] > self.size:
            top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
            x = x[..., top : top + self.size, left : left + self.size]
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


def to_input(images) -> torch.Tensor:
    """uint8 (N, H, W, C) or (N, C, H, W) / float in [-1, 1] -> float (N, C, H, W) in [-1, 1]."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)
        x = x.float() / 127.5 - 1
    return x.float()


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 2,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    width: int = 16,
    log=None,
):
    """Adam with a cosine schedule on (N, C, H, W) images in [-1, 1]; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallClassifier(num_classes, width, images.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(labels)
    total = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model.train()
    step, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if log:
            log(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    return model.eval()


@torch.inference_mode()
def predict(model: nn.Module, images, batch_size: int = 500) -> np.ndarray:
    """Class ids (N,) for images in any form `to_input` accepts."""
    x = to_input(images)
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]).numpy()


def accuracy(model: nn.Module, images, labels) -> float:
    return float((predict(model, images) == np.asarray(labels)).mean())


def save_classifier(model: SmallClassifier, path, **meta) -> None:
    """State dict plus the architecture and the measured figures, loadable with weights_only=True."""

    blob = {
        "state_dict": model.state_dict(),
        "num_classes": model.num_classes,
        "width": model.width,
        "size": model.size,
        "meta": meta,
    }
    with atomic_file(path) as f:
        torch.save(blob, f)


def load_classifier(path) -> tuple[SmallClassifier, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = SmallClassifier(blob["num_classes"], blob["width"], blob["size"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob["meta"]
