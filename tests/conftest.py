import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(Path(__file__).parent))  # reference_impl


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
