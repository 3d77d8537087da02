"""What training needs to know about each family: its dataset, batches, loss and sample grid.

The family objects (families/) hold the conventions every layer shares (the time the network is fed,
its output as a velocity, the null condition); this module holds the training side only, so sampling
never imports the dataset or loss code. One recipe per family kind, looked up with `recipe_for`.
"""

import torch

from ..text import text_encoder
from .data import BucketStepSampler, CaptionDataset, StepSampler, collate, collate_captions, open_dataset
from .objective import DinoEncoder, DinoEncoder224, draw, flow_loss, t2i_draw, t2i_flow_loss

# The training grid of a 1000-class model: 16 fixed ImageNet classes (macaw, golden retriever, ...).
IMAGENET_GRID = [88, 207, 279, 291, 360, 387, 388, 417, 812, 974, 980, 33, 1, 130, 250, 949]


def grid_labels(num_classes: int, per_class: int = 4) -> list[int]:
    """Up to 16 classes: one column each, per_class rows; more: the 16 fixed ImageNet ones."""
    if num_classes <= 16:
        return [c for _ in range(per_class) for c in range(num_classes)]
    return IMAGENET_GRID[: min(16, num_classes)]


class Recipe:
    """The training hooks of one family (train/loop.py calls them; `cfg` is the resolved Config)."""

    def training_data(self, cfg, mcfg):
        """The training dataset of `data.path`."""
        raise NotImplementedError

    def step_sampler(self, ds, tc, rank: int, world: int, start_step: int):
        """Which dataset items each process reads at each step (a function of the seed and the step)."""
        raise NotImplementedError

    def collate(self, batch):
        raise NotImplementedError

    def condition_encoder(self, cfg, mcfg, device):
        """What turns raw conditions into network inputs (None: they already are)."""
        return None

    def repa_encoder(self, path: str) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, net, x, y, *, draw_at, encoder, train, mcfg, device, repa: dict):
        """(total, flow, repa) for one micro-batch; draw_at = (seed, step, global sample slots)."""
        raise NotImplementedError

    def grid_conditions(self, ds, mcfg) -> list:
        """The fixed conditions of the training sample grid."""
        raise NotImplementedError

    def grid_tensors(self, fixed: list, encoder, cfg, device):
        """(cond, uncond) for the grid's conditions."""
        raise NotImplementedError

    def grid_layout(self, mcfg, class_names) -> tuple[int, list | None]:
        """(images per row, column labels or None) of the training grid."""
        raise NotImplementedError


class ClassConditionalRecipe(Recipe):
    """Class-labelled image folders; x − ε at t, the null class dropped in with probability cond_drop."""

    def training_data(self, cfg, mcfg):
        return open_dataset(cfg.data.path, cfg.data.resolution, mcfg.num_classes, channels=mcfg.in_channels)

    def step_sampler(self, ds, tc, rank, world, start_step):
        return StepSampler(len(ds), tc.global_batch, tc.micro_batch, rank, world, tc.seed, start_step, tc.steps)

    def collate(self, batch):
        return collate(batch)

    def repa_encoder(self, path):
        return DinoEncoder(path)

    def loss(self, net, x, y, *, draw_at, encoder, train, mcfg, device, repa):
        noise, t, drop = (a.to(device) for a in draw(*draw_at, tuple(x.shape[1:]), train.cond_drop, train.time_shift))
        return flow_loss(net, x, y.to(device, non_blocking=True), t, noise, drop, mcfg.num_classes, **repa)

    def grid_conditions(self, ds, mcfg):
        return grid_labels(mcfg.num_classes)

    def grid_tensors(self, fixed, encoder, cfg, device):
        return torch.tensor(fixed, device=device), None

    def grid_layout(self, mcfg, class_names):
        K = mcfg.num_classes
        if K > 16:
            return 4, None
        return K, [class_names[c] if c < len(class_names) else str(c) for c in range(K)]


class TextToImageRecipe(Recipe):
    """Captioned images in aspect buckets; Gemma-2 states, σ from the release's discrete shifted grid."""

    def training_data(self, cfg, mcfg):
        return CaptionDataset(
            cfg.data.path, cfg.data.resolution, cfg.data.multi_aspect, mcfg.patch_size, channels=mcfg.in_channels
        )

    def step_sampler(self, ds, tc, rank, world, start_step):
        return BucketStepSampler(
            ds.bucket_of, tc.global_batch, tc.micro_batch, rank, world, tc.seed, start_step, tc.steps
        )

    def collate(self, batch):
        return collate_captions(batch)

    def condition_encoder(self, cfg, mcfg, device):
        return text_encoder(cfg.text.encoder, mcfg, device, "text-to-image training")

    def repa_encoder(self, path):
        return DinoEncoder224(path)

    def loss(self, net, x, y, *, draw_at, encoder, train, mcfg, device, repa):
        emb, null_emb = encoder.encode(list(y), cache=False).to(device), encoder.null("").to(device)
        noise, sig, ts, drop = (
            a.to(device) for a in t2i_draw(*draw_at, tuple(x.shape[1:]), train.cond_drop, train.time_shift)
        )
        return t2i_flow_loss(net, x, emb, null_emb, sig, ts, noise, drop, **repa)

    def grid_conditions(self, ds, mcfg):
        return [caption for _, caption in ds.items[:8]]

    def grid_tensors(self, fixed, encoder, cfg, device):
        return encoder.encode(fixed).to(device), encoder.null(cfg.text.negative_prompt).to(device)

    def grid_layout(self, mcfg, class_names):
        return 4, None


RECIPES: dict[str, Recipe] = {"c2i": ClassConditionalRecipe(), "t2i": TextToImageRecipe()}


def recipe_for(mcfg) -> Recipe:
    return RECIPES[mcfg.kind]
