"""Inference on CPU with oneDNN-packed Linear weights: the same network, its GEMMs faster where the CPU allows.

PyTorch's CPU `F.linear` hands fp32 GEMMs to MKL. oneDNN with the weight reordered once into its blocked
layout (`mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing pass emits) ran PixelDiT's
patch-level products 1.2–1.3× faster on one AMD EPYC, and tied or lost on an Intel Xeon of the same
machine type; the per-pixel layers (width ≤ 64, H·W rows) gained on both. So the per-pixel layers are
always packed and the patch-level ones where a short probe, kept per machine, says it pays
(`patch_packing`). `packed_linears(model)` swaps each chosen Linear's forward for the packed call for the
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
import functools
import json
import os
import platform
import time
import weakref
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Below ~50M multiply-adds per call the packed kernel's fixed cost wins over its faster inner loop (the
# tiny CPU models' layers measured 0.6–0.95×): those calls keep F.linear.
MIN_MACS = 50_000_000
# oneDNN picks its blocking from a typical row count; 256 (one 256² image's patch tokens) measured as good
# as the true count or better at every shape tried, and it is one primitive per layer shape.
ROWS_HINT = 256


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _PackedForward:
    """The packed call for one Linear; falls back to F.linear whenever the packed kernel does not apply.

    The weight is packed on the first call that is big enough to gain (`MIN_MACS`), with `ROWS_HINT` as
    oneDNN's blocking hint: layers that only ever see a few rows (the AdaLN modulations and the
    timestep MLP get one row per image) are never packed, which saves their reorder (on XL/16 a third of
    all packing time) for no loss."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        self.weight = None
        self.bias = None if linear.bias is None else linear.bias.detach()

    def __call__(self, x):
        lin = self.linear
        rows = x.numel() // max(1, x.shape[-1])
        if (
            rows * lin.in_features * lin.out_features < MIN_MACS
            or x.dtype != torch.float32
            or x.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")
            or (torch.is_grad_enabled() and (x.requires_grad or lin.weight.requires_grad))
        ):
            return F.linear(x, lin.weight, lin.bias)
        if self.weight is None:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), ROWS_HINT)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def usable(model: nn.Module) -> bool:
    """CPU fp32 weights and a oneDNN build."""
    p = next(model.parameters(), None)
    return available() and p is not None and p.device.type == "cpu" and p.dtype == torch.float32


PACK_GAIN = 1.1  # the patch-level Linears are packed where the probe measures at least this speed-up
PROBE_SHAPE = (512, 1152, 3072)  # rows, in, out: an XL/16 MLP at a CFG pair of 256² images


def _probe_ratio(rows: int, k: int, n: int) -> float:
    """plain / packed time of one Linear shape on this CPU (best of 5, interleaved)."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    pw = torch.ops.mkldnn._reorder_linear_weight(w, ROWS_HINT)
    calls = (lambda: F.linear(x, w, b), lambda: torch.ops.mkldnn._linear_pointwise(x, pw, b, "none", [], ""))
    best = [float("inf")] * 2
    with torch.inference_mode():
        for f in calls:
            f()
        for _ in range(5):
            for i, f in enumerate(calls):
                t0 = time.perf_counter()
                f()
                best[i] = min(best[i], time.perf_counter() - t0)
    return best[0] / best[1]


def _cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixeldit" / "packing.json"


def _machine_key() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")), "")
    return f"{model or platform.processor()}|{platform.machine()}|torch {torch.__version__}|{torch.get_num_threads()}t"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return []


@functools.lru_cache(maxsize=1)
def patch_packing() -> tuple[bool, str]:
    """Whether packing the patch-level Linears (K ≥ 256) pays on this machine, and why.

    CPUs of one machine type differ here: on one AMD EPYC the packed GEMM ran 1.2–1.3× the plain one, on
    an Intel Xeon it tied or lost at a CFG pair's row count. So it is measured — a ~0.3 s probe of one
    such GEMM — and the answer is kept per machine (CPU model, torch version, threads) in
    ~/.cache/pixeldit/packing.json, so that every later process on this machine makes the same choice
    and runs the same summation order (a resumed job's images match an uninterrupted run's).
    PIXELDIT_PACK=1 or 0 overrides."""
    forced = os.environ.get("PIXELDIT_PACK", "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"PIXELDIT_PACK={forced} says so"
    key, path = _machine_key(), _cache_file()
    try:
        cached = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        cached = None
    if isinstance(cached, dict) and isinstance(cached.get("ratio"), (int, float)):
        ratio = float(cached["ratio"])
    else:
        ratio = _probe_ratio(*PROBE_SHAPE)
        try:
            table = json.loads(path.read_text()) if path.exists() else {}
            table = table if isinstance(table, dict) else {}
            table[key] = {"ratio": round(ratio, 3)}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1))
            os.replace(tmp, path)
        except (OSError, ValueError):
            pass  # a read-only home: measured again by the next process
    return ratio >= PACK_GAIN, f"packed/plain GEMM {ratio:.2f}x on this CPU (probe)"


def worth_packing(linear: nn.Linear) -> bool:
    """Where oneDNN's packed GEMM wins on the project's CPUs (measured on AMD EPYC and Intel Xeon, M =
    256–131072 rows): K ≥ 256 (the patch-level Linears: 1.05–1.25×) and the per-pixel layers of width ≤ 64,
    which see H·W rows (1.1–2.3×). At K = 128 with a few hundred rows (the tiny CPU models' patch level) it
    loses 10–15%; past N = 16384 outputs (XL/16's patch-to-pixel expansion, N = 24576) it only ties, and its
    reorder costs more than a forward of that layer. Whether the patch-level ones gain at all depends on the
    CPU: patch_packing() measures it."""
    if max(linear.in_features, linear.out_features) <= 64:
        return True
    return linear.in_features >= 256 and linear.out_features <= 16384 and patch_packing()[0]


@contextlib.contextmanager
def packed_linears(model: nn.Module, enabled: bool = True):
    """Within the block, every nn.Linear of `model` runs with oneDNN-packed weights (when usable).

    Weights must not change inside the block: each is packed on its first qualifying call."""
    if not (enabled and usable(model)):
        yield model
        return
    patched = []
    try:
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and "forward" not in mod.__dict__ and worth_packing(mod):
                mod.forward = _PackedForward(mod)
                patched.append(mod)
        yield model
    finally:
        for mod in patched:
            del mod.forward


class _Bf16Forward:
    """One Linear under bf16 autocast with its weight cast to bf16 once: autocast would cast the fp32 weight
    on every call (a copy of every weight per network evaluation); the product is the same, bit for bit.
    Holds the Linear weakly: the copies are kept per Linear (_BF16) and must not keep the network alive."""

    def __init__(self, linear: nn.Linear):
        self.linear = weakref.ref(linear)
        self.key = weights_key([linear.weight, linear.bias])
        self.weight = linear.weight.detach().to(torch.bfloat16)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def __call__(self, x):
        lin = self.linear()
        if not torch.is_autocast_enabled(x.device.type) or torch.get_autocast_dtype(x.device.type) != torch.bfloat16:
            return F.linear(x, lin.weight, lin.bias)
        if torch.is_grad_enabled() and (x.requires_grad or lin.weight.requires_grad):
            return F.linear(x, lin.weight, lin.bias)
        return F.linear(x, self.weight, self.bias)


def weights_key(tensors) -> tuple:
    """Which tensors, at which versions: anything made from them (a copy, a frozen graph) is current while
    this is unchanged — an in-place change moves the version, a move or reload the storage."""
    return tuple((t.data_ptr(), t._version, t.device) for t in tensors if t is not None)


# Linear -> its bf16 copy, kept across `with bf16_linears(...)` blocks while the weights are unchanged: the
# library's `sample()` enters the block per call, and making 1.6 GB of copies (XL/16) per call cost more than
# the two network evaluations of a short call. The price: the copies (half the fp32 weights) stay in memory
# while the network lives; `fast=False` never makes them.
_BF16 = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def bf16_linears(model: nn.Module, enabled: bool = True):
    """Within the block, every fp32 nn.Linear of `model` keeps a bf16 copy of its weights for bf16 autocast."""
    patched = []
    try:
        if enabled:
            for mod in model.modules():
                if isinstance(mod, nn.Linear) and "forward" not in mod.__dict__ and mod.weight.dtype == torch.float32:
                    fwd = _BF16.get(mod)
                    if fwd is None or fwd.key != weights_key([mod.weight, mod.bias]):
                        fwd = _BF16[mod] = _Bf16Forward(mod)
                    mod.forward = fwd
                    patched.append(mod)
        yield model
    finally:
        for mod in patched:
            del mod.forward


def fast_linears(model: nn.Module, precision: str = "fp32", enabled: bool = True):
    """The inference fast path for a resolved precision: oneDNN-packed weights in fp32 (the last bits move,
    ~1e-6), bf16 weight copies in bf16 (bit-identical to plain autocast). Elsewhere the plain Linear runs."""
    return bf16_linears(model, enabled) if precision == "bf16" else packed_linears(model, enabled)
