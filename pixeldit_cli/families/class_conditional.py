"""Class-conditional PixelDiT (the ImageNet models): class ids in, x − ε out, t = 1 at the data.

Convention (docs/conventions.md#c2i): the network is fed t itself and predicts the velocity x − ε of
x_t = t·x + (1 − t)·ε; the unconditional input is the extra class id K = num_classes (a learned
embedding, dropped in with probability 0.1 during training).
"""

import torch

from ..errors import PixelDiTError
from ..labels import class_names_of, labels_for, parse_class
from .base import Conditions, Family


class ClassLabels(Conditions):
    """Explicit class ids cycled over indices, else `mode` (uniform draws or balanced blocks)."""

    def __init__(self, classes: tuple, mode: str, n: int, seed: int, num_classes: int, names):
        self.classes, self.mode, self.n, self.seed = tuple(classes), mode, n, seed
        self.num_classes, self.names = num_classes, names
        self.columns = len(self.classes)
        self.column_labels = [names[c] if names else str(c) for c in self.classes]

    def label(self, i):
        return labels_for(
            [i], classes=list(self.classes), mode=self.mode, n=self.n, num_classes=self.num_classes, seed=self.seed
        )[0]

    def batch(self, indices, device):
        return torch.tensor([self.label(i) for i in indices], device=device), None

    def report(self):
        # in the order of `classes` (the --class order, cycled over indices), so the two lists line up
        shown = list(self.classes) or list(range(self.num_classes))
        return {
            "class_names": [self.names[c] for c in shown][:20] if self.names else None,
            "prompts": None,
            "negative_prompt": None,
            "truncated_prompts": None,
        }


class ClassConditional(Family):
    kind, title, release_preset, condition_flag = "c2i", "class-conditional", "xl256", "--class"
    architecture, pipeline = "PixelDiT", "PixelDiTPipeline"

    def example_inputs(self, config, x, batch, text_len, generator):
        return torch.full((batch,), 0.5), torch.zeros(batch, dtype=torch.long)

    def config_overrides(self, config):
        return {**super().config_overrides(config), "num_classes": config.model.num_classes}

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

    def class_ids(self, classes, model):
        return tuple(parse_class(c, model.config.num_classes, class_names_of(model)) for c in classes)

    def sample_conditions(
        self,
        model,
        device,
        *,
        classes=(),
        mode="uniform",
        n=0,
        seed=0,
        prompts=(),
        negative_prompt="",
        text_encoder_path="",
    ):
        return ClassLabels(classes, mode, n, seed, model.config.num_classes, class_names_of(model))

    def edit_conditions(self, model, src, tgt, text_encoder, negative_prompt, device):
        names, K = class_names_of(model), model.config.num_classes
        ids = [parse_class(c, K, names) for c in (src, tgt)]
        conds = [torch.tensor([c], device=device) for c in ids]
        records = [{"class": c, "name": names[c] if names else None} for c in ids]
        return conds[0], conds[1], None, records[0], records[1]
