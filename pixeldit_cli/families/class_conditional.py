"""Class-conditional PixelDiT (the ImageNet models): class ids in, x − ε out, t = 1 at the data.

Convention (docs/conventions.md#c2i): the network is fed t itself and predicts the velocity x − ε of
x_t = t·x + (1 − t)·ε; the unconditional input is the extra class id K = num_classes (a learned
embedding, dropped in with probability 0.1 during training).
"""

import torch

from ..errors import PixelDiTError
from .base import Conditions, Family

# The training grid of a 1000-class model: 16 fixed ImageNet classes (macaw, golden retriever, ...).
IMAGENET_GRID = [88, 207, 279, 291, 360, 387, 388, 417, 812, 974, 980, 33, 1, 130, 250, 949]


def grid_labels(num_classes: int, per_class: int = 4) -> list[int]:
    """Up to 16 classes: one column each, per_class rows; more: the 16 fixed ImageNet ones."""
    if num_classes <= 16:
        return [c for _ in range(per_class) for c in range(num_classes)]
    return IMAGENET_GRID[: min(16, num_classes)]


class ClassLabels(Conditions):
    """Explicit class ids cycled over indices, else `mode` (uniform draws or balanced blocks)."""

    def __init__(self, job, num_classes: int, names):
        self.job, self.num_classes, self.names = job, num_classes, names
        self.columns = len(job.classes)
        self.column_labels = [names[c] if names else str(c) for c in job.classes]

    def label(self, i):
        from ..labels import labels_for

        j = self.job
        return labels_for([i], classes=list(j.classes), mode=j.mode, n=j.n, num_classes=self.num_classes, seed=j.seed)[0]

    def batch(self, indices, device):
        return torch.tensor([self.label(i) for i in indices], device=device), None

    def report(self):
        # in the order of `classes` (the --class order, cycled over indices), so the two lists line up
        shown = list(self.job.classes) or list(range(self.num_classes))
        return {"class_names": [self.names[c] for c in shown][:20] if self.names else None,
                "prompts": None, "negative_prompt": None, "truncated_prompts": None}


class ClassConditional(Family):
    kind, title, release_preset, condition_flag = "c2i", "class-conditional", "xl256", "--class"
    architecture = "PixelDiT"

    def network(self, config):
        from ..models.pixeldit import PixelDiT

        return PixelDiT(config)

    def example_inputs(self, config, x, batch, text_len, generator):
        return torch.full((batch,), 0.5), torch.zeros(batch, dtype=torch.long)

    def config_overrides(self, model_section):
        return {"num_classes": model_section.num_classes}

    # ---- the convention ---------------------------------------------------------------------------
    def network_time(self, t, sigma=None):
        return t

    def velocity(self, out):
        return out

    def null_condition(self, model, cond):
        return torch.full_like(cond, model.config.num_classes)

    # ---- the commands -------------------------------------------------------------------------------
    def check_request(self, classes, prompts):
        if prompts:
            raise PixelDiTError("--prompt was given but this is a class-conditional checkpoint", "use --class")

    def sample_conditions(self, model, job, device):
        from ..labels import class_names_of

        self.check_request(job.classes, job.prompts)
        return ClassLabels(job, model.config.num_classes, class_names_of(model))

    def edit_conditions(self, model, src, tgt, text_encoder, negative_prompt, device):
        from ..labels import class_names_of, parse_class

        names, K = class_names_of(model), model.config.num_classes
        ids = [parse_class(c, K, names) for c in (src, tgt)]
        conds = [torch.tensor([c], device=device) for c in ids]
        records = [{"class": c, "name": names[c] if names else None} for c in ids]
        return conds[0], conds[1], None, records[0], records[1]

    # ---- training -------------------------------------------------------------------------------------
    def training_data(self, cfg, mcfg):
        from ..train.data import open_dataset

        return open_dataset(cfg.data.path, cfg.data.resolution, mcfg.num_classes)

    def step_sampler(self, ds, tc, rank, world, start_step):
        from ..train.data import StepSampler

        return StepSampler(len(ds), tc.global_batch, tc.micro_batch, rank, world, tc.seed, start_step, tc.steps)

    def collate(self, batch):
        from ..train.data import collate

        return collate(batch)

    def repa_encoder(self, path):
        from ..train.objective import DinoEncoder

        return DinoEncoder(path)

    def loss(self, net, x, y, draw_at, encoder, tc, mcfg, device, repa):
        from ..train.objective import draw, flow_loss

        noise, t, drop = (a.to(device) for a in draw(*draw_at, tuple(x.shape[1:]), tc.cond_drop, tc.time_shift))
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
