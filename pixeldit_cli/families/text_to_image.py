"""Text-to-image PixelDiT (the 1024² release): Gemma-2 states in, ε − x out, fed 1000·σ.

Convention (docs/conventions.md#t2i): σ = 1 − t is the noise level of x_σ = (1 − σ)·x + σ·ε; the
network is fed the timestep 1000·σ and predicts ε − x. The unconditional input is the negative
prompt's embedding (the empty prompt during training's caption dropout). Under bf16 the release runs
the network in pure bf16, so the time it sees is rounded to bf16 first.
"""

import torch

from ..errors import PixelDiTError
from .base import Conditions, Family


def text_encoder(path: str, mcfg, device, why: str):
    """The Gemma-2 encoder a T2I checkpoint needs, with one line when none was given."""
    if not path:
        raise PixelDiTError(f"{why} needs the Gemma-2 text encoder", "pass --text-encoder DIR (gemma-2-2b-it)")
    from ..text import TextEncoder

    return TextEncoder(path, device=device, max_length=mcfg.text_len, expected_dim=mcfg.text_dim)


class Prompts(Conditions):
    """Prompts cycled over indices; each batch's states from the encoder (cached per prompt)."""

    def __init__(self, job, encoder):
        self.job, self.encoder = job, encoder
        self.columns, self.column_labels = len(job.prompts), list(job.prompts)

    def label(self, i):
        return i % len(self.job.prompts)

    def text(self, i):
        return self.job.prompts[self.label(i)]

    def batch(self, indices, device):
        cond = self.encoder.encode([self.text(i) for i in indices]).to(device)
        return cond, self.encoder.null(self.job.negative_prompt).to(device)

    def report(self):
        return {"class_names": None, "prompts": list(self.job.prompts), "negative_prompt": self.job.negative_prompt,
                "truncated_prompts": self.encoder.truncated}


class TextToImage(Family):
    kind, title, release_preset, condition_flag = "t2i", "text-to-image", "t2i1024", "--prompt"
    streams, architecture = 2, "PixelDiTT2I"

    def network(self, config):
        from ..models.pixeldit_t2i import PixelDiTT2I

        return PixelDiTT2I(config)

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

    def sample_conditions(self, model, job, device):
        self.check_request(job.classes, job.prompts)
        if not job.prompts:
            raise PixelDiTError("this is a text-to-image checkpoint: give --prompt or --prompts FILE")
        return Prompts(job, text_encoder(job.text_encoder, model.config, device, "text-to-image sampling"))

    def edit_conditions(self, model, src, tgt, text_encoder_path, negative_prompt, device):
        """Prompt to prompt: --src and --tgt are prompts."""
        if not text_encoder_path:
            raise PixelDiTError("a text-to-image checkpoint edits prompt to prompt", "pass --text-encoder DIR (gemma-2-2b-it)")
        enc = text_encoder(text_encoder_path, model.config, device, "editing")
        cond_src, cond_tgt, uncond = (t.to(device) for t in (enc.encode([src]), enc.encode([tgt]), enc.null(negative_prompt)))
        return cond_src, cond_tgt, uncond, {"prompt": src}, {"prompt": tgt}

    # ---- training -------------------------------------------------------------------------------------
    def training_data(self, cfg, mcfg):
        from ..train.data import CaptionDataset

        return CaptionDataset(cfg.data.path, cfg.data.resolution, cfg.data.multi_aspect, mcfg.patch_size)

    def step_sampler(self, ds, tc, rank, world, start_step):
        from ..train.data import BucketStepSampler

        return BucketStepSampler(ds.bucket_of, tc.global_batch, tc.micro_batch, rank, world, tc.seed, start_step, tc.steps)

    def collate(self, batch):
        from ..train.data import collate_captions

        return collate_captions(batch)

    def condition_encoder(self, cfg, mcfg, device):
        return text_encoder(cfg.text.encoder, mcfg, device, "text-to-image training")

    def repa_encoder(self, path):
        from ..train.objective import DinoEncoder224

        return DinoEncoder224(path)

    def loss(self, net, x, y, draw_at, encoder, tc, mcfg, device, repa):
        """Captions -> Gemma states; σ from the release's discrete shifted grid."""
        from ..train.objective import t2i_draw, t2i_flow_loss

        emb, null_emb = encoder.encode(list(y), cache=False).to(device), encoder.null("").to(device)
        noise, sig, ts, drop = (a.to(device) for a in t2i_draw(*draw_at, tuple(x.shape[1:]), tc.cond_drop, tc.time_shift))
        return t2i_flow_loss(net, x, emb, null_emb, sig, ts, noise, drop, **repa)

    def grid_conditions(self, ds, mcfg):
        return [caption for _, caption in ds.items[:8]]

    def grid_tensors(self, fixed, encoder, cfg, device):
        return encoder.encode(fixed).to(device), encoder.null(cfg.text.negative_prompt).to(device)

    def grid_layout(self, mcfg, class_names):
        return 4, None
