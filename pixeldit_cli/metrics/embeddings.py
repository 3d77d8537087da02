"""The feature networks beside Inception: DINOv2 for FD_DINOv2 and CLIP for the CLIP score (transformers,
local weights only; docs/evaluation.md#more-metrics).

  FD_DINOv2 (EDM2's protocol, Karras et al. 2024): uint8 -> float / 255, resized to 224² (bicubic,
    antialiased), ImageNet mean / std, the CLS embedding after DINOv2's final norm (ViT-L/14: 1024-d;
    transformers' `pooler_output`, the torch.hub model's `x_norm_clstoken`); Fréchet distance of the two
    Gaussians with the same sqrtm code as FID.
  CLIP score (Hessel et al. 2021, as torchmetrics computes it): 100 · max(cos(image, text), 0) averaged over
    the images, each against its own prompt, with the CLIP model's own image and text preprocessing.
"""

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PixelDiTError
from ..text import load_pretrained

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DINOV2_SIZE = 224
DINOV2_VERSION = "dinov2/bicubic-aa224/imagenet-norm/cls-after-norm/v1"


def weights_hash(model) -> str:
    """SHA-256 over a model's state dict (names, shapes and bytes): the cache key for its features."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(k.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Dinov2Features:
    """uint8 NHWC batches -> (B, D) float32 CLS embeddings of a local DINOv2 (transformers Dinov2Model)."""

    def __init__(self, path, device="cpu"):
        from transformers import Dinov2Model  # noqa: PLC0415 (optional, heavy)

        self.model = load_pretrained(
            "DINOv2 model", path, "pass --dinov2 DIR (a saved facebook/dinov2-large)",
            lambda p, local: Dinov2Model.from_pretrained(p, local_files_only=local),
        )  # fmt: skip
        self.model = self.model.to(device).eval().float()
        self.device, self.dim = device, self.model.config.hidden_size
        self.sha256 = weights_hash(self.model)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def info(self) -> dict:
        return {"sha256": self.sha256, "dim": self.dim, "protocol": DINOV2_VERSION}

    @torch.inference_mode()
    def __call__(self, batch) -> np.ndarray:
        x = torch.from_numpy(np.array(batch)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(DINOV2_SIZE, DINOV2_SIZE), mode="bicubic", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return self.model(pixel_values=x).pooler_output.float().cpu().numpy()


class ClipScorer:
    """CLIP score of images against prompts with a local CLIP (transformers CLIPModel and its processor)."""

    def __init__(self, path, device="cpu"):
        from transformers import CLIPModel, CLIPProcessor  # noqa: PLC0415 (optional, heavy)

        def load(p, local):
            return CLIPModel.from_pretrained(p, local_files_only=local), CLIPProcessor.from_pretrained(
                p, local_files_only=local
            )

        self.model, self.processor = load_pretrained(
            "CLIP model", path, "pass --clip DIR (a saved openai/clip-vit-large-patch14)", load
        )
        self.model = self.model.to(device).eval().float()
        self.device, self.sha256 = device, weights_hash(self.model)

    def info(self) -> dict:
        return {"sha256": self.sha256, "protocol": "100 * max(cos(image, prompt), 0), CLIPProcessor preprocessing"}

    @torch.inference_mode()
    def __call__(self, batch, prompts: list[str]) -> np.ndarray:
        """Per image: 100 · max(cos, 0) against its prompt."""
        images = [np.ascontiguousarray(im) for im in batch]
        inputs = self.processor(text=list(prompts), images=images, return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img, txt = _embedding(img), _embedding(txt)
        cos = F.cosine_similarity(img.float(), txt.float(), dim=-1)
        return (100 * cos.clamp(min=0)).cpu().numpy()


def _embedding(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output object with the pooled embedding (5)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise PixelDiTError("this CLIP model returned no embedding", "pass a transformers CLIPModel folder")
