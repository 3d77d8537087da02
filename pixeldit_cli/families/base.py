"""The interface every model family implements (docs/conventions.md#families).

Two groups of questions, each answered from explicit arguments (never a job object):

* the convention — which network class it is, the time the network is fed and how its output becomes the
  velocity x − ε of the c2i convention (t = 1 data), in which the solvers integrate; the null condition;
* the commands  — the conditions of a sampling job or an edit as tensors, and what results.json says.

The training side (dataset, loss, sample grid) is `train/recipes.py`. This layer imports no other part of
the package but `errors` (and, inside the command hooks, `labels` and `text`), so the models can ask it.
"""

import torch

# The network class of each family, by name: registered by models/registry.py (the model layer owns the
# classes; this layer must not import it, since ModelConfig checks its kind against FAMILIES).
NETWORK_CLASSES: dict[str, type] = {}


class Family:
    kind: str = ""  # ModelConfig.kind, stored in every checkpoint
    title: str = ""  # for messages: "class-conditional"
    release_preset: str = ""  # sampling defaults when neither --preset nor a stored training config
    condition_flag: str = ""  # the command-line flag that conditions this family
    streams: int = 1  # Linear stacks per patch block (MM-DiT: image and text)
    architecture: str = ""  # the network's class name (HF-style folders' config.json)
    prompted: bool = False  # conditioned on text (prompts -> encoder states) rather than class ids
    pipeline: str = ""  # its diffusers pipeline class (pipelines.py)

    # ---- the network ----------------------------------------------------------------------------------
    def network(self, config) -> torch.nn.Module:
        return NETWORK_CLASSES[self.architecture](config)

    def text_tokens(self, config, text_len: int | None = None) -> int:
        """Condition tokens that join the patch-level attention (0 for a class embedding)."""
        return 0

    def example_inputs(self, config, x, batch: int, text_len: int | None, generator):
        """(t, condition) for the FLOP counter: mid-way in time, a fixed condition."""
        raise NotImplementedError

    def config_overrides(self, config) -> dict:
        """ModelConfig fields a resolved Config's `model` section sets beyond the registry name: the channels,
        and the named size's shape where a field is not 0."""
        ms = config.model
        shape = dict(
            hidden_size=ms.hidden_size,
            num_heads=ms.num_heads,
            patch_depth=ms.patch_depth,
            pixel_depth=ms.pixel_depth,
            pixel_hidden=ms.pixel_hidden,
        )
        return {"in_channels": ms.in_channels, **{k: v for k, v in shape.items() if v}}

    # ---- the convention -------------------------------------------------------------------------------
    def network_time(self, t: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """What the network is fed at c2i time t (0-dim); a σ-space solver passes σ = 1 − t exactly."""
        raise NotImplementedError

    def velocity(self, out: torch.Tensor) -> torch.Tensor:
        """Network output -> the c2i velocity x − ε."""
        raise NotImplementedError

    def autocast_time(self, t_in: torch.Tensor, dtype) -> torch.Tensor:
        """The time as the network sees it under autocast `dtype` (unchanged unless a release rounds it)."""
        return t_in

    def null_condition(self, model, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional input for guidance when the caller gave none."""
        raise NotImplementedError

    # ---- the commands ---------------------------------------------------------------------------------
    def check_request(self, classes, prompts) -> None:
        """One line for a condition of the other family (--prompt for a class model and vice versa)."""

    def class_ids(self, classes, model) -> tuple:
        """--class values (ids or names) as ids; a family without a class table keeps them for check_request."""
        return tuple(classes)

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
        """The Conditions of a sampling job: labels by global index, tensors by batch, grid labels, report.
        (Checked already: `check_request` ran when the job was checked against the model.)"""
        raise NotImplementedError

    def edit_conditions(self, model, src: str, tgt: str, text_encoder: str, negative_prompt: str, device):
        """(cond_src, cond_tgt, uncond, source record, target record) for FlowEdit."""
        raise NotImplementedError


class Conditions:
    """The conditions of one sampling job, by global sample index (like the noise)."""

    columns: int = 0  # distinct conditions cycled over indices (a labelled grid when ≤ 16)
    column_labels: list = []

    def label(self, i: int) -> int:
        """arr_1 of samples.npz: the class id, or the prompt's index."""
        raise NotImplementedError

    def text(self, i: int) -> str | None:
        """The prompt of sample i (names its PNG), None for classes."""
        return None

    def batch(self, indices, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, uncond) for these samples."""
        raise NotImplementedError

    def report(self) -> dict:
        """The condition keys of results.json."""
        raise NotImplementedError
