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
