"""The interface every model family implements (docs/conventions.md#families).

Four groups of questions, one method each:

* the network   — which class builds it, how many text tokens its attention sees;
* the convention — the time the network is fed and how its output becomes the velocity x − ε of the
  c2i convention (t = 1 data), in which the solvers integrate;
* the commands  — a sampling job's or an edit's conditions as tensors, and what results.json says;
* training      — the dataset, the per-sample draws and loss, the REPA target, the sample grid.
"""

import torch


class Family:
    kind: str = ""                 # ModelConfig.kind, stored in every checkpoint
    title: str = ""                # for messages: "class-conditional"
    release_preset: str = ""       # sampling defaults when neither --preset nor a stored training config
    condition_flag: str = ""       # the command-line flag that conditions this family
    streams: int = 1               # Linear stacks per patch block (MM-DiT: image and text)
    architecture: str = ""         # the network's class name (HF-style folders' config.json)

    # ---- the network ----------------------------------------------------------------------------------
    def network(self, config) -> torch.nn.Module:
        raise NotImplementedError

    def text_tokens(self, config, text_len: int | None = None) -> int:
        """Condition tokens that join the patch-level attention (0 for a class embedding)."""
        return 0

    def example_inputs(self, config, x, batch: int, text_len: int | None, generator):
        """(t, condition) for the FLOP counter: mid-way in time, a fixed condition."""
        raise NotImplementedError

    def config_overrides(self, model_section) -> dict:
        """ModelConfig fields a preset's `model` section sets beyond the registry name."""
        return {}

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

    def sample_conditions(self, model, job, device):
        """The Conditions of a sampling job: labels by index, tensors by batch, grid labels, report."""
        raise NotImplementedError

    def edit_conditions(self, model, src: str, tgt: str, text_encoder: str, negative_prompt: str, device):
        """(cond_src, cond_tgt, uncond, source record, target record) for FlowEdit."""
        raise NotImplementedError

    # ---- training ---------------------------------------------------------------------------------------
    def training_data(self, cfg, mcfg):
        """The training dataset of `data.path`."""
        raise NotImplementedError

    def step_sampler(self, ds, tc, rank: int, world: int, start_step: int):
        raise NotImplementedError

    def collate(self, batch):
        raise NotImplementedError

    def condition_encoder(self, cfg, mcfg, device):
        """What turns raw conditions into network inputs during training (None: they already are)."""
        return None

    def repa_encoder(self, path: str) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, net, x, y, draw_at, encoder, tc, mcfg, device, repa):
        """(total, flow, repa) for one micro-batch; draw_at = (seed, step, global slots)."""
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


class Conditions:
    """The conditions of one sampling job, by global sample index (like the noise)."""

    columns: int = 0               # distinct conditions cycled over indices (a labelled grid when ≤ 16)
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
