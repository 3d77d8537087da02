"""Training data: datasets that yield (uint8 CHW image, label) and a sampler indexed by optimizer step.

Sources:
  fashion-mnist          Debian's dataset-fashion-mnist (IDX files), 28×28 gray padded to 32 (made RGB for
                         a 3-channel model, kept gray for a 1-channel one)
  a folder of folders    ImageFolder layout: one subfolder per class (sorted names -> class ids)
  EDM2 dataset (zip/dir) images + dataset.json {"labels": [[relative path, class], ...]} (the 512 pipeline)
Images are decoded to uint8 with torchvision; those not at the training resolution get ADM's centre crop
(repeated 2× box downsampling, bicubic resize, centre crop — PIL, as guided-diffusion). No flip unless
asked: the release uses no augmentation. A 1-channel model (model.in_channels 1) gets gray images: colour
files are converted with ITU-R 601 luma (io.to_channels), exact for gray files stored as RGB.
"""

import gzip
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import PixelDiTError
from ..io import to_channels

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


#################################################################################
#                                 Decoding                                      #
#################################################################################


def decode(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 (3, H, W) RGB (gray and RGBA converted)."""
    from torchvision.io import ImageReadMode, decode_image  # noqa: PLC0415 (heavy: only when used)

    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def adm_center_crop(img: torch.Tensor, res: int) -> torch.Tensor:
    """guided-diffusion's center_crop_arr on a uint8 (3, H, W) tensor; identity at the right size."""
    if img.shape[1] == res and img.shape[2] == res:
        return img

    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    while min(*pil.size) >= 2 * res:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
    scale = res / min(*pil.size)
    pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=Image.BICUBIC)
    arr = np.asarray(pil)
    top, left = (arr.shape[0] - res) // 2, (arr.shape[1] - res) // 2
    return torch.from_numpy(arr[top : top + res, left : left + res].copy()).permute(2, 0, 1)


#################################################################################
#                                 Datasets                                      #
#################################################################################


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class FashionMNIST(torch.utils.data.Dataset):
    """Debian's Fashion-MNIST: 60k train / 10k test, 28×28 gray -> zero-padded to 32×32, RGB or gray."""

    def __init__(self, split: str = "train", resolution: int = 32, root: Path = FASHION_DIR, channels: int = 3):
        prefix = "train" if split == "train" else "t10k"
        img, lab = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
        if not img.exists():
            raise PixelDiTError(
                f"Fashion-MNIST is not installed ({img} is missing)",
                "apt-get install dataset-fashion-mnist (make demo does this)",
            )
        self.images = torch.from_numpy(_read_idx(img).copy())  # (N, 28, 28) uint8
        self.labels = torch.from_numpy(_read_idx(lab).astype(np.int64))
        if resolution < 28:
            raise PixelDiTError(
                f"Fashion-MNIST images are 28×28; resolution {resolution} is smaller", "use --data.resolution 32"
            )
        self.pad = resolution - 28
        self.classes = FASHION_CLASSES
        self.channels = channels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        if self.pad:
            a = self.pad // 2
            x = torch.nn.functional.pad(x, (a, self.pad - a, a, self.pad - a))
        return x.unsqueeze(0).expand(self.channels, -1, -1).contiguous(), int(self.labels[i])


class ImageFolder(torch.utils.data.Dataset):
    """root/<class>/<image>: sorted class folder names are the class ids (the map is saved in checkpoints)."""

    def __init__(self, root, resolution: int, num_classes: int | None = None, channels: int = 3):
        root = Path(root)
        self.channels = channels
        if not root.is_dir():
            raise PixelDiTError(f"dataset directory {root} does not exist", "check --data.path")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.classes:
            raise PixelDiTError(
                f"dataset directory {root} has no class subfolders", "lay it out as ROOT/<class>/<image>.png"
            )
        if num_classes is not None and len(self.classes) != num_classes:
            raise PixelDiTError(
                f"{root} has {len(self.classes)} class folders but the model has {num_classes} classes",
                f"set --model.num_classes {len(self.classes)} or fix the folder",
            )
        self.items = [
            (p, k)
            for k, c in enumerate(self.classes)
            for p in sorted((root / c).rglob("*"))
            if p.suffix.lower() in IMAGE_EXT
        ]
        if not self.items:
            raise PixelDiTError(f"dataset directory {root} holds no images ({', '.join(sorted(IMAGE_EXT))})")
        self.resolution = resolution
        empty = [p for p, _ in self.items if p.stat().st_size == 0]  # one stat each: cheap even for ImageNet
        if empty:
            raise PixelDiTError(
                f"{len(empty)} empty image file(s) in {root}, e.g. {empty[0]}", "remove them, or re-copy the data set"
            )
        _check_sizes([p for p, _ in self.items[:: max(1, len(self.items) // 64)]], resolution)

    @property
    def class_to_idx(self):
        return {c: i for i, c in enumerate(self.classes)}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        try:
            img = decode(path.read_bytes())
        except (RuntimeError, OSError) as e:
            raise PixelDiTError(
                f"image {path} cannot be decoded ({str(e).splitlines()[0][:80]})", "remove or replace it"
            ) from None
        img = adm_center_crop(_checked(img, path, self.resolution), self.resolution)
        return to_channels(img, self.channels)[0], label


class EDM2Dataset(torch.utils.data.Dataset):
    """A zip or folder with dataset.json labels, as EDM2's dataset_tool writes (the release's 512 data)."""

    def __init__(self, path, resolution: int, num_classes: int | None = None, channels: int = 3):
        self.path, self.resolution, self._zip, self.channels = Path(path), resolution, None, channels
        names = self._names()
        meta = json.loads(self._read("dataset.json")) if "dataset.json" in names else {}
        labels = dict(meta.get("labels") or [])
        self.items = sorted(n for n in names if Path(n).suffix.lower() in IMAGE_EXT)
        if not self.items:
            raise PixelDiTError(f"{self.path} holds no images")
        missing = [n for n in self.items if n not in labels]
        if missing:
            raise PixelDiTError(
                f"{self.path}: {len(missing)} images have no label in dataset.json (first: {missing[0]})"
            )
        self.labels = [int(labels[n]) for n in self.items]
        n_cls = max(self.labels) + 1
        if num_classes is not None and max(self.labels) >= num_classes:
            raise PixelDiTError(
                f"{self.path} has labels up to {max(self.labels)} but the model has {num_classes} classes"
            )
        self.classes = [str(i) for i in range(num_classes or n_cls)]
        for n in self.items[:: max(1, len(self.items) // 64)]:
            _checked(decode(self._read(n)), f"{self.path}:{n}", resolution)

    def _names(self):
        if self.path.is_dir():
            return [str(p.relative_to(self.path)).replace(os.sep, "/") for p in self.path.rglob("*") if p.is_file()]
        if zipfile.is_zipfile(self.path):
            with zipfile.ZipFile(self.path) as z:
                return z.namelist()
        raise PixelDiTError(f"dataset {self.path} is neither a directory nor a zip file", "check --data.path")

    def _read(self, name):
        if self.path.is_dir():
            return (self.path / name).read_bytes()
        if self._zip is None:  # opened lazily, once per DataLoader worker
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.read(name)

    def __getstate__(self):
        return {**self.__dict__, "_zip": None}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img = _checked(decode(self._read(self.items[i])), self.items[i], self.resolution)
        return to_channels(adm_center_crop(img, self.resolution), self.channels)[0], self.labels[i]


def _checked(img, where, res):
    if min(img.shape[1:]) < res:
        raise PixelDiTError(
            f"image {where} is {img.shape[2]}×{img.shape[1]}, smaller than the resolution {res}",
            "remove it or train at a lower --data.resolution",
        )
    return img


def _check_sizes(paths, res):
    for p in paths:
        try:
            with Image.open(p) as im:
                size = im.size
        except (OSError, SyntaxError, ValueError) as e:
            raise PixelDiTError(
                f"image {p} is not readable ({str(e).splitlines()[0][:80]})", "remove or replace it"
            ) from None
        if min(size) < res:
            raise PixelDiTError(
                f"image {p} is {size[0]}×{size[1]}, smaller than the resolution {res}",
                "remove it or train at a lower --data.resolution",
            )


def open_dataset(path: str, resolution: int, num_classes: int | None = None, split: str = "train", channels: int = 3):
    """The dataset at `path` (fashion-mnist, an EDM2 zip/folder or an ImageFolder), `channels` per image."""
    if path == "fashion-mnist":
        return FashionMNIST(split, resolution, channels=channels)
    if not path:
        raise PixelDiTError(
            "no dataset given", "pass --data.path DIR (ImageFolder or EDM2 zip/folder), or fashion-mnist"
        )
    p = Path(path)
    if not p.exists():
        raise PixelDiTError(f"dataset {p} does not exist", "check --data.path")
    if p.is_file() or (p / "dataset.json").exists():
        return EDM2Dataset(p, resolution, num_classes, channels)
    return ImageFolder(p, resolution, num_classes, channels)


#################################################################################
#                     Which samples each step sees, on each rank                #
#################################################################################


class StepSampler(torch.utils.data.Sampler):
    """Yields this rank's index lists (one per micro-batch) from a given optimizer step on.

    Epoch e is a permutation drawn from seed + e (DistributedSampler's set_epoch, made explicit); step s
    takes global slots [s·G, (s + 1)·G) of the endless sequence of epochs (drop_last); rank r owns slots
    r·G/W … (r + 1)·G/W − 1 of each step, cut into micro-batches. The data position is the step alone.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        micro_batch: int,
        rank: int,
        world: int,
        seed: int,
        start_step: int,
        total_steps: int,
    ):
        self.n, self.G, self.mb, self.rank, self.world = n, global_batch, micro_batch, rank, world
        self.seed, self.start, self.total = seed, start_step, total_steps
        self.per_epoch = n // global_batch
        if self.per_epoch == 0:
            raise PixelDiTError(
                f"the dataset has {n} images, fewer than one global batch of {global_batch}",
                "lower --train.global_batch",
            )
        self._perm_epoch, self._perm = None, None

    def perm(self, epoch: int):
        if self._perm_epoch != epoch:
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            self._perm_epoch = epoch
        return self._perm

    def slots(self, step: int):
        """(global slot ids, dataset indices) of this rank's share of `step`."""
        per_rank = self.G // self.world
        epoch, pos = divmod(step, self.per_epoch)
        base = pos * self.G + self.rank * per_rank
        perm = self.perm(epoch)
        return list(range(self.rank * per_rank, (self.rank + 1) * per_rank)), perm[base : base + per_rank]

    def __iter__(self):
        for step in range(self.start, self.total):
            _, idx = self.slots(step)
            for k in range(0, len(idx), self.mb):
                yield idx[k : k + self.mb]

    def __len__(self):
        return (self.total - self.start) * math.ceil(self.G // self.world / self.mb)


def collate(batch):
    imgs = torch.stack([b[0] for b in batch])
    return imgs, torch.tensor([b[1] for b in batch], dtype=torch.long)


#################################################################################
#                   Text-to-image: captions and aspect-ratio buckets            #
#################################################################################


def aspect_buckets(res: int, p: int = 16, ratios=(0.5, 0.5625, 0.6667, 0.75, 0.8, 1.0, 1.25, 1.3333, 1.5, 1.7778, 2.0)):
    """(h, w) buckets of about res² pixels, multiples of p, for height/width ratios `ratios`."""
    out = []
    for r in ratios:
        h = max(p, round(res * math.sqrt(r) / p) * p)
        w = max(p, round(res / math.sqrt(r) / p) * p)
        out.append((h, w))
    return sorted(set(out))


def resize_center_crop(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The T2I pipeline: bilinear resize so the image covers (h, w), then a centre crop."""
    from torchvision.transforms.v2.functional import center_crop, resize  # noqa: PLC0415 (heavy: only when used)

    H, W = img.shape[1:]
    scale = max(h / H, w / W)
    img = resize(img, [max(h, round(H * scale)), max(w, round(W * scale))], antialias=True)
    return center_crop(img, [h, w])


class CaptionDataset(torch.utils.data.Dataset):
    """Images with captions: a folder of image + same-stem .txt files, or a .jsonl of {"image", "caption"}."""

    def __init__(self, path, resolution: int, multi_aspect: bool = False, patch: int = 16, channels: int = 3):
        path = Path(path)
        self.channels = channels
        if not path.exists():
            raise PixelDiTError(f"caption dataset {path} does not exist", "check --data.path")
        if path.is_file() and path.suffix == ".jsonl":
            rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
            self.items = [(path.parent / r["image"], str(r["caption"])) for r in rows]
        elif path.is_dir():
            imgs = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXT)
            self.items = [
                (p, p.with_suffix(".txt").read_text().strip()) for p in imgs if p.with_suffix(".txt").exists()
            ]
        else:
            raise PixelDiTError(f"{path} is neither a folder of images with .txt captions nor a .jsonl manifest")
        if not self.items:
            raise PixelDiTError(f"{path} holds no captioned images", "each image needs a same-name .txt file")
        self.resolution = resolution
        self.buckets = aspect_buckets(resolution, patch) if multi_aspect else [(resolution, resolution)]
        self.bucket_of = []

        for p, _ in self.items:  # assign every image to the bucket nearest its aspect ratio (log scale)
            with Image.open(p) as im:
                w, h = im.size
            self.bucket_of.append(
                min(
                    range(len(self.buckets)),
                    key=lambda b: abs(math.log(h / w) - math.log(self.buckets[b][0] / self.buckets[b][1])),
                )
            )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, caption = self.items[i]
        h, w = self.buckets[self.bucket_of[i]]
        return to_channels(resize_center_crop(decode(path.read_bytes()), h, w), self.channels)[0], caption


class BucketStepSampler(StepSampler):
    """Like StepSampler, but every global batch comes from one aspect-ratio bucket.

    Epoch e: a permutation from seed + e is split by bucket (order kept), each bucket is cut into full
    global batches, and the batches are shuffled with seed + e. Step s is batch s of that sequence."""

    def __init__(self, bucket_of, global_batch, micro_batch, rank, world, seed, start_step, total_steps):
        self.bucket_of = list(bucket_of)
        super().__init__(len(self.bucket_of), global_batch, micro_batch, rank, world, seed, start_step, total_steps)
        self.per_epoch = int(sum(int(c) // global_batch for c in np.bincount(self.bucket_of)))
        if self.per_epoch == 0:
            raise PixelDiTError(
                f"no aspect-ratio bucket holds a full global batch of {global_batch} images",
                "lower --train.global_batch or add images",
            )
        self._batches_epoch, self._batches = None, None

    def batches(self, epoch: int):
        if self._batches_epoch != epoch:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            out = []
            for b in sorted(set(self.bucket_of)):
                members = [i for i in perm if self.bucket_of[i] == b]
                out += [members[k : k + self.G] for k in range(0, len(members) - self.G + 1, self.G)]
            order = torch.randperm(len(out), generator=torch.Generator().manual_seed(self.seed + epoch + 7919)).tolist()
            self._batches, self._batches_epoch = [out[k] for k in order], epoch
        return self._batches

    def slots(self, step: int):
        per_rank = self.G // self.world
        epoch, pos = divmod(step, self.per_epoch)
        batch = self.batches(epoch)[pos]
        return list(range(self.rank * per_rank, (self.rank + 1) * per_rank)), batch[
            self.rank * per_rank : (self.rank + 1) * per_rank
        ]


def collate_captions(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
