"""Inference on CPU with oneDNN-packed Linear weights: the same network, its GEMMs ~1.3× faster.

PyTorch's CPU `F.linear` hands fp32 GEMMs to MKL, which at PixelDiT's shapes (M = 256 patch tokens, K =
1152, N = 3072–24576) runs at ~75% of its 2048³ rate. oneDNN with the weight reordered once into its
blocked layout (`mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing pass emits) runs the
same products at ~95%. `packed_linears(model)` swaps every Linear's forward for the packed call for the
duration of a `with` block and restores it after; nothing in the state dict changes.

The sums are accumulated in another order, so outputs move in the last bits (max |Δ| ~1e-6 on the
XL/16 forward, well inside the 1e-5 parity contract; tests/test_packed.py). It is deterministic run to
run. It applies only where it can: CPU, fp32, no autograd, no autocast, oneDNN present; elsewhere (and
for any call that needs gradients) the ordinary Linear runs. `sample` and `edit` jobs use it; the
library's forward (`model(x, t, y)`, `solve`, `flowedit`) stays the plain PyTorch path.
"""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

# Below ~50M multiply-adds per call the packed kernel's fixed cost wins over its faster inner loop (the
# tiny CPU models' layers measured 0.6–0.95×): those calls keep F.linear.
MIN_MACS = 50_000_000


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _PackedForward:
    """The packed call for one Linear; falls back to F.linear whenever the packed kernel does not apply."""

    def __init__(self, linear: nn.Linear, rows_hint: int):
        self.linear = linear
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def __call__(self, x):
        lin = self.linear
        small = (x.numel() // max(1, x.shape[-1])) * lin.in_features * lin.out_features < MIN_MACS
        if (
            small
            or x.dtype != torch.float32
            or x.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")
            or (torch.is_grad_enabled() and (x.requires_grad or lin.weight.requires_grad))
        ):
            return F.linear(x, lin.weight, lin.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def usable(model: nn.Module) -> bool:
    """CPU fp32 weights and a oneDNN build."""
    p = next(model.parameters(), None)
    return available() and p is not None and p.device.type == "cpu" and p.dtype == torch.float32


def worth_packing(linear: nn.Linear) -> bool:
    """Where oneDNN's packed GEMM wins on this kind of CPU (measured, M = 256–65536 rows): K ≥ 256 (the
    patch-level Linears: 1.2–1.3×) and the per-pixel layers of width ≤ 64, which see H·W rows (1.4–2×).
    At K = 128 with a few hundred rows (the tiny CPU models' patch level) it loses 10–15%."""
    return linear.in_features >= 256 or max(linear.in_features, linear.out_features) <= 64


@contextlib.contextmanager
def packed_linears(model: nn.Module, enabled: bool = True, rows_hint: int = 256):
    """Within the block, every nn.Linear of `model` runs with oneDNN-packed weights (when usable).

    `rows_hint` is the typical number of rows per call (oneDNN picks its blocking from it; any count
    works). Weights must not change inside the block: they are packed on entry."""
    if not (enabled and usable(model)):
        yield model
        return
    patched = []
    try:
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and "forward" not in mod.__dict__ and worth_packing(mod):
                mod.forward = _PackedForward(mod, rows_hint)
                patched.append(mod)
        yield model
    finally:
        for mod in patched:
            del mod.forward
