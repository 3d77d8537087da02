import re
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(Path(__file__).parent))  # reference_impl

# `--precision auto` answers from the hardware (bf16 on CPUs with native bf16). The suite runs the same on
# every machine: auto means fp32 on the CPU here (subprocesses inherit it); tests of the choice itself
# (test_precision.py) clear this and simulate the hardware's answer.
import os  # noqa: E402

os.environ["PIXELDIT_CPU_BF16"] = "0"
os.environ["PIXELDIT_PACK"] = "1"  # the packed path runs wherever it applies (test_packed.py tests the probe)


def randomize(model, seed=0):
    """Weights like the official fixtures: N(0, 0.05²), norm weights 1 + N(0, 0.1²), final linear ×5,
    so every AdaLN shift/scale/gate is active (a fresh init zeroes them and would hide layout bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        model.final_layer.linear.weight.mul_(5)
    return model.eval()


@pytest.fixture
def fixtures():
    return FIXTURES


# Two small randomized networks, one per family, shared by the bf16 and semantic-reuse tests (a test
# module that needs another `t2i` defines its own fixture, which takes precedence).
@pytest.fixture(scope="module")
def c2i():
    from pixeldit_cli import build_model

    return randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), 0)


@pytest.fixture(scope="module")
def t2i():
    from pixeldit_cli import build_model

    return randomize(build_model("PixelDiT-T2I-S/16"), 1)


# A tiny Gemma-2 saved like a real one (real transformers loading code), shared by the T2I tests.
@pytest.fixture(scope="session")
def gemma(tmp_path_factory):
    """A word-level tokenizer that adds BOS (as Gemma's does) and a 1-layer Gemma-2, saved like a real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

    from pixeldit_cli.text import CHI_PROMPT

    d = tmp_path_factory.mktemp("gemma")
    words = sorted(set(re.findall(r"\w+|[^\w\s]", " ".join(CHI_PROMPT) + " a red fox in snow blue bird over sea")))
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(d)
    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=len(vocab),
        hidden_size=12,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    Gemma2Model(cfg).save_pretrained(d)
    return d


def write_fashion_idx(root, prefix: str, images, labels) -> None:
    """Fashion-MNIST's IDX files (gzip, big-endian dims) for uint8 (N, 28, 28) `images` and their labels."""
    import gzip  # noqa: PLC0415

    n = len(images)
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.tobytes())
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(labels))
