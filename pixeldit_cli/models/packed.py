"""Inference on CPU with oneDNN-packed Linear weights: the same network, its GEMMs ~1.3× faster.

PyTorch's CPU `F.linear` hands fp32 GEMMs to MKL, which at PixelDiT's shapes (M = 256 patch tokens, K =
1152, N = 3072–24576) runs at ~75% of its 2048³ rate. oneDNN with the weight reordered once into its
blocked layout (`mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing pass emits) runs the
same products at ~95%. `packed_linears(model)` swaps every Linear's forward for the packed call for the
duration of a `with` block and restores it after; nothing in the state dict changes.

The sums are accumulated in another order, so outputs move in the last bits (max |Δ| ~1e-6 on the
XL/16 forward, well inside the 1e-5 parity contract; tests/test_packed.py). It is deterministic run to
run. It applies only where it can: CPU, fp32, no autograd, no autocast, oneDNN present; elsewhere (and
for any call that needs gradients) the ordinary Linear runs. Under bf16 autocast the fast path is a bf16
copy of each Linear weight made once (`bf16_linears`), the same numbers autocast makes on every call.
`fast_linears` picks one per precision; the jobs, `pixeldit.sample` and `flowedit` use it by default
(`fast=False` for the plain path); the network's own forward (`model(x, t, y)`) is always plain.
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


class _Bf16Forward:
    """One Linear under bf16 autocast with its weight cast to bf16 once: autocast would cast the fp32 weight
    on every call (a copy of every weight per network evaluation); the product is the same, bit for bit."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        self.weight = linear.weight.detach().to(torch.bfloat16)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def __call__(self, x):
        lin = self.linear
        if not torch.is_autocast_enabled(x.device.type) or torch.get_autocast_dtype(x.device.type) != torch.bfloat16:
            return F.linear(x, lin.weight, lin.bias)
        if torch.is_grad_enabled() and (x.requires_grad or lin.weight.requires_grad):
            return F.linear(x, lin.weight, lin.bias)
        return F.linear(x, self.weight, self.bias)


@contextlib.contextmanager
def bf16_linears(model: nn.Module, enabled: bool = True):
    """Within the block, every fp32 nn.Linear of `model` keeps a bf16 copy of its weights for bf16 autocast."""
    patched = []
    try:
        if enabled:
            for mod in model.modules():
                if isinstance(mod, nn.Linear) and "forward" not in mod.__dict__ and mod.weight.dtype == torch.float32:
                    mod.forward = _Bf16Forward(mod)
                    patched.append(mod)
        yield model
    finally:
        for mod in patched:
            del mod.forward


def fast_linears(model: nn.Module, precision: str = "fp32", enabled: bool = True):
    """The inference fast path for a resolved precision: oneDNN-packed weights in fp32 (the last bits move,
    ~1e-6), bf16 weight copies in bf16 (bit-identical to plain autocast). Elsewhere the plain Linear runs."""
    return bf16_linears(model, enabled) if precision == "bf16" else packed_linears(model, enabled)
