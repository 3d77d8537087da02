"""Text-to-image PixelDiT (the 1024² release): Gemma-2 states in, ε − x out, fed 1000·σ.

Convention (docs/conventions.md#t2i): σ = 1 − t is the noise level of x_σ = (1 − σ)·x + σ·ε; the
network is fed the timestep 1000·σ and predicts ε − x. The unconditional input is the negative
prompt's embedding (the empty prompt during training's caption dropout). Under bf16 the release runs
the network in pure bf16, so the time it sees is rounded to bf16 first.
"""

import torch

from ..errors import PixelDiTError
from ..text import text_encoder
from .base import Conditions, Family


class Prompts(Conditions):
    """Prompts cycled over indices; each batch's states from the encoder (cached per prompt)."""

    def __init__(self, prompts: tuple, negative_prompt: str, encoder):
        self.prompts, self.negative_prompt, self.encoder = tuple(prompts), negative_prompt, encoder
        self.columns, self.column_labels = len(self.prompts), list(self.prompts)

    def label(self, i):
        return i % len(self.prompts)

    def text(self, i):
        return self.prompts[self.label(i)]

    def batch(self, indices, device):
        cond = self.encoder.encode([self.text(i) for i in indices]).to(device)
        return cond, self.encoder.null(self.negative_prompt).to(device)

    def report(self):
        return {
            "class_names": None,
            "prompts": list(self.prompts),
            "negative_prompt": self.negative_prompt,
            "truncated_prompts": self.encoder.truncated,
        }


class TextToImage(Family):
    kind, title, release_preset, condition_flag = "t2i", "text-to-image", "t2i1024", "--prompt"
    streams, architecture, prompted, pipeline = 2, "PixelDiTT2I", True, "PixelDiTT2IPipeline"

    def text_tokens(self, config, text_len=None):
        return config.text_len if text_len is None else min(text_len, config.text_len)

    def example_inputs(self, config, x, batch, text_len, generator):
        Ly = config.text_len if text_len is None else text_len
        return torch.full((batch,), 500.0), torch.randn(batch, Ly, config.text_dim, generator=generator)

    # ---- the convention ---------------------------------------------------------------------------
    def network_time(self, t, sigma=None):
        return 1000.0 * (sigma if sigma is not None else 1.0 - t)

    def velocity(self, out):
        return -out  # ε − x -> x − ε (exact: a sign flip)

    def autocast_time(self, t_in, dtype):
        return t_in.to(torch.bfloat16).float() if dtype == torch.bfloat16 else t_in

    def null_condition(self, model, cond):
        raise ValueError("text-to-image guidance needs an unconditional (negative prompt) embedding")

    # ---- the commands -------------------------------------------------------------------------------
    def check_request(self, classes, prompts):
        if classes:
            raise PixelDiTError("--class was given but this is a text-to-image checkpoint", "use --prompt")

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
        if not prompts:
            raise PixelDiTError("this is a text-to-image checkpoint: give --prompt or --prompts FILE")
        return Prompts(
            prompts, negative_prompt, text_encoder(text_encoder_path, model.config, device, "text-to-image sampling")
        )

    def edit_conditions(self, model, src, tgt, text_encoder_path, negative_prompt, device):
        """Prompt to prompt: --src and --tgt are prompts."""
        if not text_encoder_path:
            raise PixelDiTError(
                "a text-to-image checkpoint edits prompt to prompt", "pass --text-encoder DIR (gemma-2-2b-it)"
            )
        enc = text_encoder(text_encoder_path, model.config, device, "editing")
        cond_src, cond_tgt, uncond = (
            t.to(device) for t in (enc.encode([src]), enc.encode([tgt]), enc.null(negative_prompt))
        )
        return cond_src, cond_tgt, uncond, {"prompt": src}, {"prompt": tgt}
