"""PixelDiT in diffusers: a transformer model, a scheduler and two pipelines over the project's own network and
solvers (nothing here re-implements a forward or a step).

    import pixeldit
    from pixeldit_cli.pipelines import PixelDiTPipeline
    pipe = PixelDiTPipeline.from_pretrained("xl256-diffusers")       # written by `pixeldit convert --format diffusers`
    images = pipe(class_labels=[207, 360], generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images

or, without importing anything of ours, `diffusers.DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`:
the folder carries thin module files that import these classes from the installed package.

  PixelDiTTransformer2DModel  ModelMixin + ConfigMixin around the network: its config is the ModelConfig's
                              fields, its state dict the network's under `model.` (no copy, no renaming).
                              forward(hidden_states, timestep, class_labels | encoder_hidden_states) takes
                              the time as the network is fed it (c2i: t, 1 = data; T2I: 1000·σ).
  PixelDiTScheduler           SchedulerMixin + ConfigMixin: the release's sampler (solver, shift) and its
                              sampling defaults. `timesteps` are the grid's network times; the integration
                              is `solvers.solve`, so a pipeline's step is the CLI's step.
  PixelDiTPipeline            class ids (or names) -> images;   PixelDiTT2IPipeline: prompts -> images.

The same images as `pixeldit sample`: with generators seeded seed + i (one per image, diffusers' convention),
sample i gets the noise the CLI gives it with --seed seed (solvers.noise_for), the same solve runs on the
same fast path, and the same rounding makes the uint8 pixels; in fp32 on a CPU they are identical.
docs/diffusers.md: the scheduler mapping, the folder layout and the community port's layout.
"""

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import PeftAdapterMixin, SanaLoraLoaderMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .errors import PixelDiTError
from .families import family_of
from .labels import class_names_of, parse_class
from .models.config import ModelConfig
from .models.registry import build_model
from .sampling import sample
from .settings import SolveSettings
from .solvers import SOLVERS, c2i_grid, flow_sigma_grid, to_uint8
from .text import TextEncoder

PREFIX = "model."  # the network's state dict under the transformer's


#################################################################################
#                     The network as a diffusers model                          #
#################################################################################


class PixelDiTTransformer2DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """The PixelDiT network (either family) as a diffusers model; `.model` is the network itself.
    PeftAdapterMixin: diffusers' adapter API (load_lora_adapter, set_adapters, fuse_lora) on it."""

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        kind: str = "c2i",
        in_channels: int = 3,
        patch_size: int = 16,
        hidden_size: int = 1152,
        num_heads: int = 16,
        patch_depth: int = 26,
        pixel_depth: int = 4,
        pixel_hidden: int = 16,
        pixel_attn_hidden: int = 0,
        pixel_heads: int = 0,
        mlp_hidden: int = 0,
        num_classes: int = 1000,
        text_dim: int = 2304,
        text_len: int = 300,
        class_names: list | None = None,
        sample_size: int = 256,
        train_config: dict | None = None,
        weights: str = "ema",
    ):
        """The ModelConfig's fields, then what travels with the weights: class names, the default image
        size, the training config the checkpoint was made with (its sampling defaults) and ema | raw."""
        super().__init__()
        fields = {k: v for k, v in locals().items() if k in ModelConfig.__dataclass_fields__}
        try:
            cfg = ModelConfig(**fields)
        except (TypeError, ValueError) as e:
            raise PixelDiTError(f"invalid PixelDiT transformer config ({e})", "is the config.json complete?") from None
        self.model = build_model(cfg)  # the official init; from_pretrained then loads the weights
        self.model.class_names, self.model.train_config = class_names or None, train_config or None

    @classmethod
    def from_network(cls, network, sample_size: int = 256, weights: str = "ema"):
        """Wrap an existing network (no copy: its parameters are this model's), with its class names and
        training config (load_model's attributes) as the config records them."""
        names, train = getattr(network, "class_names", None), getattr(network, "train_config", None)
        wrapper = cls.__new__(cls)
        ModelMixin.__init__(wrapper)
        wrapper.register_to_config(**network.config.to_dict(), class_names=names or None, sample_size=sample_size,
                                   train_config=train or None, weights=weights)  # fmt: skip
        wrapper.model = network
        return wrapper

    @property
    def pixeldit_config(self) -> ModelConfig:
        return self.model.config

    def _set_gradient_checkpointing(self, enable=True, gradient_checkpointing_func=None):
        self.model.grad_checkpointing = enable

    def forward(self, hidden_states, timestep, class_labels=None, encoder_hidden_states=None, return_dict=True):
        """The network's own forward: (B, C, H, W) images, the network time (B,), the condition."""
        family = family_of(self.model.config)
        cond = encoder_hidden_states if family.prompted else class_labels
        if cond is None:
            what = "encoder_hidden_states" if family.prompted else "class_labels"
            raise ValueError(f"this {family.title} transformer needs {what}")
        out = self.model(hidden_states, timestep, cond)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


#################################################################################
#                    The release's sampler as a scheduler                       #
#################################################################################


class PixelDiTScheduler(SchedulerMixin, ConfigMixin):
    """The sampler a checkpoint was released with, and its sampling defaults.

    solver: flowdpm | euler | heun (t upward, the c2i release) or dpm++2m (σ downward, the T2I release);
    shift: the time shift (c2i convention). The other fields are what `pipe(...)` uses when not given."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        solver: str = "flowdpm",
        shift: float = 1.0,
        num_inference_steps: int = 100,
        guidance_scale: float = 1.0,
        guidance_interval: tuple = (0.0, 1.0),
        num_train_timesteps: int = 1000,
    ):
        if solver not in SOLVERS:
            raise PixelDiTError(
                f"unknown solver {solver!r} in the scheduler config", f"use one of {', '.join(SOLVERS)}"
            )
        self.timesteps = None
        self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int, device=None):
        """The grid's times as the network is fed them (c2i: t from 0 to 1; T2I: 1000·σ from 1000 down)."""
        n, s = int(num_inference_steps), float(self.config.shift)
        if self.config.solver == "dpm++2m":
            grid = 1000.0 * flow_sigma_grid(n, s)
        else:
            grid = c2i_grid(n, s)
        self.timesteps, self.num_inference_steps = grid[:-1].to(device), n

    def settings(self, steps=None, cfg=None, interval=None, shift=None) -> SolveSettings:
        """The solve a pipeline call runs: the given values over this scheduler's defaults (checked)."""
        c = self.config
        return SolveSettings(
            solver=c.solver,
            steps=c.num_inference_steps if steps is None else steps,
            cfg=c.guidance_scale if cfg is None else cfg,
            interval=tuple(c.guidance_interval if interval is None else interval),
            shift=c.shift if shift is None else shift,
        )


#################################################################################
#                                 Pipelines                                     #
#################################################################################


class _Counted(torch.nn.Module):
    """The network with a progress bar advanced on every call (the solver calls it once per step)."""

    def __init__(self, network, bar):
        super().__init__()
        self.network, self.bar = network, bar
        self.config = network.config

    def forward(self, x, t, y):
        out = self.network(x, t, y)
        self.bar.update(1)
        return out


class PixelDiTLoraLoaderMixin(SanaLoraLoaderMixin):
    """diffusers' LoRA API on the pipelines — load_lora_weights, set_adapters, fuse_lora, unload_lora_weights —
    for the adapters `pixeldit train --train.lora.rank r` writes (peft's folder: adapter_config.json +
    adapter_model.safetensors, module names the network's). diffusers' generic transformer loader does the
    work (diffusers keeps one transformer-only loader per pipeline family; Sana's is the generic one); what is
    ours is reading that folder: its keys under the transformer's, its rank and alpha as the LoRA config."""

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        folder = pretrained_model_name_or_path_or_dict
        if isinstance(folder, dict) or not (Path(folder) / "adapter_config.json").is_file():
            return super().lora_state_dict(folder, **kwargs)  # a diffusers-format LoRA file or state dict
        from .models.lora import read_adapters  # noqa: PLC0415 (peft: only when adapters are used)

        conf, pairs = read_adapters(folder)
        state = {f"{cls.transformer_name}.{PREFIX}{m}.lora_{ab}.weight": t
                 for m, (a, b) in pairs.items() for ab, t in (("A", a), ("B", b))}  # fmt: skip
        lora = {"r": conf["r"], "lora_alpha": conf.get("lora_alpha") or conf["r"],
                "lora_dropout": conf.get("lora_dropout") or 0.0, "target_modules": sorted(PREFIX + m for m in pairs)}  # fmt: skip
        metadata = {f"{cls.transformer_name}.{k}": v for k, v in lora.items()}  # diffusers' LoRA metadata layout
        return (state, metadata) if kwargs.get("return_lora_metadata") else state

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None, **kwargs):
        """Adapters onto the transformer (unmerged, peft layers; `fuse_lora()` merges them). A folder of
        adapters trained on another architecture is one line, before anything is changed."""
        folder = pretrained_model_name_or_path_or_dict
        if not isinstance(folder, dict) and (Path(folder) / "adapter_config.json").is_file():
            from .models.lora import check_pairs, read_adapters  # noqa: PLC0415

            conf, pairs = read_adapters(folder)
            check_pairs(self.transformer.model, pairs, f"LoRA folder {folder}")
        return super().load_lora_weights(folder, adapter_name=adapter_name, **kwargs)


class _PixelDiTBase(DiffusionPipeline, PixelDiTLoraLoaderMixin):
    model_cpu_offload_seq = "transformer"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a folder written by `pixeldit convert --format diffusers` with this class's components (no
        dynamic modules, so no trust_remote_code needed); anything else as diffusers loads it."""
        folder = Path(pretrained_model_name_or_path)
        if not (folder / "model_index.json").is_file():
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        index = _model_index(folder)
        dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
        parts = {k: kwargs.pop(k) for k in list(kwargs) if k in cls._component_names()}
        if "transformer" not in parts:
            parts["transformer"] = PixelDiTTransformer2DModel.from_pretrained(folder / "transformer")
        if "scheduler" not in parts:
            parts["scheduler"] = PixelDiTScheduler.from_pretrained(folder / "scheduler")
        parts.update(cls._load_extra(folder, index, parts))
        pipe = cls(**parts)
        return pipe.to(dtype=dtype) if dtype is not None else pipe

    @classmethod
    def _component_names(cls):
        return ("transformer", "scheduler")

    @classmethod
    def _load_extra(cls, folder, index, parts):
        return {}

    def _noise(self, n, height, width, generator, device):
        cfg = self.transformer.pixeldit_config
        if isinstance(generator, list) and len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} images: pass one per image (or a single one)")
        noise = randn_tensor((n, cfg.in_channels, height, width), generator=generator, dtype=torch.float32)
        return noise.to(device)

    def _size(self, height, width):
        cfg = self.transformer.pixeldit_config
        size = self.transformer.config.sample_size
        height, width = height or size, width or size
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(f"height and width must be multiples of the patch size {cfg.patch_size}")
        return height, width

    def _solve(self, noise, cond, uncond, settings: SolveSettings):
        network = self.transformer.model
        precision = "bf16" if self.transformer.dtype == torch.bfloat16 else "fp32"
        with self.progress_bar(total=settings.steps) as bar:
            return sample(_Counted(network, bar), noise, cond, uncond, precision=precision, **settings.kwargs())

    @staticmethod
    def _output(images, output_type, return_dict):
        """The CLI's uint8 (the release's rounding) as PIL, or as float in [0, 1] (np: NHWC, pt: NCHW)."""
        u8 = to_uint8(images.float()).cpu()
        if output_type == "pil":
            from PIL import Image  # noqa: PLC0415 (diffusers depends on Pillow)

            out = [
                Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in u8.permute(0, 2, 3, 1).numpy()
            ]  # gray: "L"
        elif output_type == "np":
            out = u8.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
        elif output_type == "pt":
            out = u8.float() / 255.0
        else:
            raise ValueError(f"unknown output_type {output_type!r}: use pil, np or pt")
        return ImagePipelineOutput(images=out) if return_dict else (out,)


class PixelDiTPipeline(_PixelDiTBase):
    """Class-conditional PixelDiT: class ids (or class names, where the checkpoint has them) -> images."""

    def __init__(self, transformer: PixelDiTTransformer2DModel, scheduler: PixelDiTScheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @property
    def labels(self) -> dict:
        """Class name -> id, where the checkpoint carries names (Fashion-MNIST's, ImageNet's)."""
        names = class_names_of(self.transformer.model) or []
        return {n: i for i, n in enumerate(names)}

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple | None = None,
        shift: float | None = None,
        height: int | None = None,
        width: int | None = None,
        generator=None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        net = self.transformer.model
        if family_of(net.config).prompted:
            raise ValueError("this is a text-to-image checkpoint: use PixelDiTT2IPipeline(prompt=...)")
        labels = [class_labels] if isinstance(class_labels, (int, str)) else list(class_labels)
        ids = [parse_class(c, net.config.num_classes, class_names_of(net)) for c in labels]
        settings = self.scheduler.settings(num_inference_steps, guidance_scale, guidance_interval, shift)
        height, width = self._size(height, width)
        device = self._execution_device
        noise = self._noise(len(ids), height, width, generator, device)
        images = self._solve(noise, torch.tensor(ids, device=device), None, settings)
        self.maybe_free_model_hooks()
        return self._output(images, output_type, return_dict)


class PixelDiTT2IPipeline(_PixelDiTBase):
    """Text-to-image PixelDiT: prompts -> images, with the release's Gemma-2 prompt handling (text.py)."""

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, transformer: PixelDiTTransformer2DModel, scheduler: PixelDiTScheduler, text_encoder, tokenizer):
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self._encoder = None

    @classmethod
    def _component_names(cls):
        return ("transformer", "scheduler", "text_encoder", "tokenizer")

    @classmethod
    def _load_extra(cls, folder, index, parts):
        """The text encoder and tokenizer: passed in, or the folders the export linked (nothing downloaded)."""
        missing = [k for k in ("text_encoder", "tokenizer") if k not in parts]
        if not missing:
            return {}
        if not all((folder / k).exists() for k in missing):
            raise PixelDiTError(
                f"{folder} has no text encoder",
                "pass text_encoder= and tokenizer= (Gemma-2-2b-it), or export with --text-encoder DIR",
            )
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415 (optional, heavy)

        out = {}
        if "tokenizer" in missing:
            out["tokenizer"] = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        if "text_encoder" in missing:
            out["text_encoder"] = AutoModel.from_pretrained(folder / "text_encoder", local_files_only=True)
        return out

    def encoder(self) -> TextEncoder:
        """The release's prompt pipeline over this pipeline's tokenizer and text encoder (made once)."""
        cfg = self.transformer.pixeldit_config
        if self._encoder is None or self._encoder.model is not _decoder(self.text_encoder):
            self._encoder = TextEncoder(
                None,
                device=self._execution_device,
                max_length=cfg.text_len,
                expected_dim=cfg.text_dim,
                tokenizer=self.tokenizer,
                model=self.text_encoder,
            )
        return self._encoder

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        negative_prompt: str = "",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple | None = None,
        shift: float | None = None,
        height: int | None = None,
        width: int | None = None,
        generator=None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        if not family_of(self.transformer.pixeldit_config).prompted:
            raise ValueError("this is a class-conditional checkpoint: use PixelDiTPipeline(class_labels=...)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        settings = self.scheduler.settings(num_inference_steps, guidance_scale, guidance_interval, shift)
        height, width = self._size(height, width)
        device = self._execution_device
        enc = self.encoder()
        cond, uncond = enc.encode(prompts).to(device), enc.null(negative_prompt).to(device)
        noise = self._noise(len(prompts), height, width, generator, device)
        images = self._solve(noise, cond, uncond, settings)
        self.maybe_free_model_hooks()
        return self._output(images, output_type, return_dict)


def _decoder(model):
    return model.get_decoder() if hasattr(model, "get_decoder") and model.get_decoder() is not None else model


def _model_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise PixelDiTError(f"{folder}/model_index.json is not readable JSON ({e})") from None
    if not isinstance(index, dict):
        raise PixelDiTError(f"{folder}/model_index.json holds no object", "is this a diffusers pipeline folder?")
    return index
