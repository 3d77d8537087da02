"""Inference on CPU with packed Linear weights: the same network, its GEMMs faster where the CPU allows.

PyTorch's CPU `F.linear` hands fp32 GEMMs to MKL, which re-packs the weight into its panel layout on every
call. Two ways to pack it once, both what torch.compile's CPU freezing pass emits:
  mkl     `mkl._mkl_reorder_linear_weight` + `mkl._mkl_linear`: MKL's own packed sgemm, the same kernel
          minus the per-call packing; one packing for every row count (checked), the copy ~2× the
          weight's memory (measured). 1.1–1.3× on an Intel Xeon with AMX (more at fewer rows).
  onednn  `mkldnn._reorder_linear_weight` + `mkldnn._linear_pointwise`: oneDNN's blocked layout, one
          packing for every row count, with fused post-ops (the pixel MLP's exact GELU). 1.2–1.3× on an
          AMD EPYC; ties MKL on the Xeon.
The per-pixel layers (width ≤ 64, H·W rows) gain with oneDNN on every CPU measured and always use it; the
patch-level ones use whichever kernel a short probe, kept per machine, finds faster (`patch_kernel`), or
stay plain. `packed_linears(model)` swaps each chosen Linear's forward for the packed call for the duration
of a `with` block and restores it after; nothing in the state dict changes.

The sums are accumulated in another order, so outputs move in the last bits (max |Δ| ~1e-6 on the
XL/16 forward, well inside the 1e-5 parity contract; tests/test_packed.py). It is deterministic run to
run. It applies only where it can: CPU, fp32, no autograd, no autocast, oneDNN present; elsewhere (and
for any call that needs gradients) the ordinary Linear runs. Under bf16 autocast the fast path is a bf16
copy of each Linear weight made once (`bf16_linears`) instead of autocast's cast on every call — packed
for oneDNN's bf16 GEMM on a CPU where the layer is big enough — with the same fused pixel MLP and blocks:
the same bf16 operands and fp32 accumulation, the last bf16 bits move (tests/test_precision.py bounds it
against fp32 as plain autocast is bounded). `fast_linears` picks one per precision and has the process keep freed memory in its heap (heap.py); the
jobs, `pixeldit.sample` and `flowedit` use it by default (`fast=False` for the plain path); the network's
own forward (`model(x, t, y)`) is always plain.
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

from ..errors import PixelDiTError
from ..heap import keep_freed_memory, kept, mem_available
from .layers import PiTBlock, PixelMLP
from .pixeldit import DiTBlock

# Below ~50M multiply-adds per call the packed kernel's fixed cost wins over its faster inner loop (the
# tiny CPU models' layers measured 0.6–0.95×): those calls keep F.linear.
MIN_MACS = 50_000_000
# oneDNN picks its blocking from a typical row count; 256 (one 256² image's patch tokens) measured as good
# as the true count or better at every shape tried, and it is one primitive per layer shape.
ROWS_HINT = 256
MKL_COPY = 2.0  # an MKL-packed weight is allocated at ~1.95× the weight's bytes (XL/16 touches ~1.25×)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _mkl_available() -> bool:
    return torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear")


def _mkl_linear(x, packed, weight, bias, rows: int):
    return torch.ops.mkl._mkl_linear(x, packed, weight, bias, rows)


class _PackedForward:
    """The packed call for one Linear; falls back to F.linear whenever the packed kernel does not apply.

    The weight is packed on the first call that is big enough to gain (`MIN_MACS`): layers that only ever
    see a few rows (the AdaLN modulations and the timestep MLP get one row per image) are never packed,
    which saves their reorder (on XL/16 a third of all packing time) for no loss. MKL's packing API takes
    the row count, but its packed B serves every row count (measured: the same size and bit-identical
    results whatever count it was made for; a row's result independent of the rows beside it) — so one packing serves the unguided
    (B rows) and guided (2B rows) steps alike, and an image's sums do not depend on its batch. That is
    MKL's behaviour, not its promise: each new row count is checked once against F.linear, and one that
    disagrees runs plain from then on. It is skipped (plain call) when the machine has no room for the
    copy."""

    def __init__(self, linear: nn.Linear, kernel: str = "onednn"):
        self.ref, self.kernel = weakref.ref(linear), kernel  # weakly: kept per Linear (_PACKED)
        self.key = weights_key([linear.weight, linear.bias])
        self.weight, self.rows, self.plain_rows = None, set(), set()
        self.bias = None if linear.bias is None else linear.bias.detach()

    @property
    def linear(self) -> nn.Linear:
        return self.ref()

    def applies(self, x) -> bool:
        lin = self.linear
        rows = x.numel() // max(1, x.shape[-1])
        return not (
            rows * lin.in_features * lin.out_features < MIN_MACS
            or x.dtype != torch.float32
            or x.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")
            or (torch.is_grad_enabled() and (x.requires_grad or lin.weight.requires_grad))
        )

    def fuses_gelu(self, x) -> bool:
        return self.kernel == "onednn" and self.applies(x)

    def __call__(self, x):
        return self.packed(x) if self.applies(x) else F.linear(x, self.linear.weight, self.linear.bias)

    def packed(self, x, post: str = "none"):
        """The packed product (call only where `applies`); post "gelu" fuses exact GELU (oneDNN only)."""
        lin = self.linear
        if self.kernel == "mkl":
            rows = x.numel() // x.shape[-1]
            if rows in self.plain_rows:
                return F.linear(x, lin.weight, lin.bias)
            if self.weight is None:
                room = mem_available()
                if room is not None and room < 1.5 * MKL_COPY * lin.weight.numel() * 4:
                    return F.linear(x, lin.weight, lin.bias)
                self.weight, self.rows = torch.ops.mkl._mkl_reorder_linear_weight(lin.weight.detach(), rows), {rows}
            out = _mkl_linear(x, self.weight, lin.weight, self.bias, rows)
            if rows not in self.rows:  # packed for another row count: checked once against F.linear
                ref = F.linear(x, lin.weight, lin.bias)
                if not torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * (1 + float(ref.abs().max()))):
                    self.plain_rows.add(rows)
                    return ref
                self.rows.add(rows)
            return out
        if self.weight is None:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), ROWS_HINT)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, post, [], "none" if post == "gelu" else "")


class _FusedPixelMLP:
    """The pixel MLP with its exact GELU fused into fc1's oneDNN call: one pass over the H·W × 4d hidden
    units instead of three (write, read for erf, write) — the GELU was 5% of an XL/16 forward."""

    def __init__(self, mlp: PixelMLP):
        self.mlp = mlp

    def __call__(self, x):
        fc1 = self.mlp.fc1.__dict__.get("forward")
        if getattr(fc1, "fuses_gelu", None) and fc1.fuses_gelu(x):  # a packed oneDNN call, fp32 or bf16
            return self.mlp.fc2(fc1.packed(x, post="gelu"))
        return self.mlp.fc2(F.gelu(self.mlp.fc1(x)))


def usable(model: nn.Module) -> bool:
    """CPU fp32 weights and a oneDNN build."""
    p = next(model.parameters(), None)
    return available() and p is not None and p.device.type == "cpu" and p.dtype == torch.float32


PACK_GAIN = 1.05  # the patch-level Linears are packed where the probe measures at least this speed-up
PROBE_SHAPE = (512, 1152, 3072)  # rows, in, out: an XL/16 MLP at a CFG pair of 256² images
PROBE_WEIGHTS = 4  # cycled, as a forward streams each weight from memory once


def _probe_ratios(rows: int, k: int, n: int) -> dict[str, float]:
    """plain / packed time of one Linear shape on this CPU, per packed kernel (best of 5, interleaved)."""
    g = torch.Generator().manual_seed(0)
    x, b = torch.randn(rows, k, generator=g), torch.randn(n, generator=g)
    ws = [torch.randn(n, k, generator=g) for _ in range(PROBE_WEIGHTS)]
    calls = {"plain": [functools.partial(F.linear, x, w, b) for w in ws]}
    if available():
        pw = [torch.ops.mkldnn._reorder_linear_weight(w, ROWS_HINT) for w in ws]
        calls["onednn"] = [functools.partial(torch.ops.mkldnn._linear_pointwise, x, p, b, "none", [], "") for p in pw]
    if _mkl_available():
        pm = [torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in ws]
        calls["mkl"] = [functools.partial(torch.ops.mkl._mkl_linear, x, p, w, b, rows) for p, w in zip(pm, ws)]
    best = dict.fromkeys(calls, float("inf"))
    with torch.inference_mode():
        for fs in calls.values():
            fs[0]()
        for _ in range(5):
            for name, fs in calls.items():
                t0 = time.perf_counter()
                for f in fs:
                    f()
                best[name] = min(best[name], time.perf_counter() - t0)
    return {name: best["plain"] / t for name, t in best.items() if name != "plain"}


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


def _measured_ratios() -> dict[str, float]:
    """This machine's probe answer: read from the cache, or measured once and written there."""
    key, path = _machine_key(), _cache_file()
    try:
        cached = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        cached = None
    if isinstance(cached, dict) and cached and all(isinstance(v, (int, float)) for v in cached.values()):
        if set(cached) <= {"mkl", "onednn"}:  # an older cache held one oneDNN "ratio": measured again
            return {k: float(v) for k, v in cached.items()}
    ratios = _probe_ratios(*PROBE_SHAPE)
    try:
        table = json.loads(path.read_text()) if path.exists() else {}
        table = table if isinstance(table, dict) else {}
        table[key] = {k: round(v, 3) for k, v in ratios.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass  # a read-only home: measured again by the next process
    return ratios


@functools.lru_cache(maxsize=1)
def patch_kernel() -> tuple[str | None, str]:
    """Which packed kernel the patch-level Linears (K ≥ 256) use on this machine — "mkl", "onednn" or None
    (plain F.linear) — and why.

    CPUs of one machine type differ here: on one AMD EPYC oneDNN's packed GEMM ran 1.2–1.3× the plain one;
    on an Intel Xeon with AMX oneDNN tied and MKL's packed sgemm ran 1.08–1.15×. So it is measured — a
    ~0.5 s probe of one such GEMM shape, both kernels against plain — and the answer is kept per machine
    (CPU model, torch version, threads) in ~/.cache/pixeldit/packing.json, so that every later process on
    this machine makes the same choice and runs the same summation order (a resumed job's images match an
    uninterrupted run's). PIXELDIT_PACK=mkl|onednn|0 overrides (1 means onednn)."""
    forced = os.environ.get("PIXELDIT_PACK", "").strip().lower()
    if forced in ("0", "1", "mkl", "onednn"):
        kernel = {"0": None, "1": "onednn"}.get(forced, forced)
        return kernel, f"PIXELDIT_PACK={forced} says so"
    if forced:
        raise PixelDiTError(
            f"PIXELDIT_PACK must be mkl, onednn, 0 or 1, got {forced!r}", "unset it to let the probe choose"
        )
    ratios = _measured_ratios()
    said = ", ".join(f"{k} {v:.2f}x" for k, v in sorted(ratios.items()))
    best = max(ratios, key=ratios.get, default=None)
    if best is None or ratios[best] < PACK_GAIN:
        return None, f"packed/plain GEMM on this CPU (probe): {said or 'no packed kernel'}; below {PACK_GAIN}x"
    return best, f"packed/plain GEMM on this CPU (probe): {said}"


def kernel_for(linear: nn.Linear) -> str | None:
    """The packed kernel for one Linear, or None to keep F.linear. Measured on AMD EPYC and Intel Xeon, M =
    256–131072 rows: the per-pixel layers of width ≤ 64, which see H·W rows, gain with oneDNN everywhere
    (1.1–2.3×); K ≥ 256 (the patch level) gains with the kernel patch_kernel() finds, if any. At K = 128 with
    a few hundred rows (the tiny CPU models' patch level) packing loses 10–15%. The widest layer, XL/16's
    pixel-wise AdaLN (N = 24576 outputs), gains with either kernel where the probe chose it: oneDNN 1.23× at
    512 rows and 1.53× at 256 on an AMD EPYC, MKL 1.15× on the Xeon; its reorder costs about one call of
    that layer, once per network (the packing is kept across calls)."""
    if max(linear.in_features, linear.out_features) <= 64:
        return "onednn" if available() else None
    if linear.in_features < 256:
        return None
    kernel = patch_kernel()[0]
    if kernel == "mkl" and not _mkl_available():
        return None
    return kernel


class _FusedPiTBlock:
    """PiTBlock.forward with its per-pixel elementwise chain in fewer passes over the H·W·d values: the
    two `1 + scale` in one in-place add on the fresh AdaLN table, each modulate one addcmul (was a mul, an
    add and a temporary), each gated residual one addcmul (was a mul and an add). Same operations, last
    bits only (an addcmul may fuse its multiply-add); ~3% of an XL/16 forward. Autograd calls run the
    block's own forward (the in-place add would be an error there)."""

    def __init__(self, block: PiTBlock):
        self.block = block

    def __call__(self, X, s_cond, B: int, freqs_cis):
        blk = self.block
        if torch.is_grad_enabled() or X.device.type != "cpu":
            return PiTBlock.forward(blk, X, s_cond, B, freqs_cis)
        BL, P, d = X.shape
        mod = blk.adaLN_modulation(s_cond).view(BL, P, 6, d)  # [pixel][shift1 scale1 gate1 shift2 scale2 gate2][d]
        mod[:, :, 1].add_(1)
        mod[:, :, 4].add_(1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)
        h = torch.addcmul(shift1, blk.norm1(X), scale1).reshape(B, BL // B, P * d)
        h = blk.attn(blk.compress_to_attn(h), freqs_cis)
        X = torch.addcmul(X, gate1, blk.expand_from_attn(h).view(BL, P, d))
        return torch.addcmul(X, gate2, blk.mlp(torch.addcmul(shift2, blk.norm2(X), scale2)))


class _FusedDiTBlock:
    """DiTBlock.forward with each modulate and each gated residual one addcmul, and the SwiGLU's SiLU and
    product in place on the fresh w1 output: fewer passes and temporaries, same operations (~1% of an
    XL/16 forward: the patch level's tensors are small, its GEMMs dominate). Autograd: the block's own."""

    def __init__(self, block: DiTBlock):
        self.block = block

    def __call__(self, s, c, freqs_cis):
        blk = self.block
        if torch.is_grad_enabled() or s.device.type != "cpu":
            return DiTBlock.forward(blk, s, c, freqs_cis)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = blk.adaLN_modulation(c).chunk(6, dim=-1)
        s = torch.addcmul(s, gate_msa, blk.attn(torch.addcmul(shift_msa, blk.norm1(s), 1 + scale_msa), freqs_cis))
        h = torch.addcmul(shift_mlp, blk.norm2(s), 1 + scale_mlp)
        mlp = blk.mlp
        return torch.addcmul(s, gate_mlp, mlp.w2(F.silu(mlp.w1(h), inplace=True).mul_(mlp.w3(h))))


# Linear -> its packed forward, kept across `with packed_linears(...)` blocks while the weights are unchanged
# (as the bf16 copies below): the library enters a block per `sample()` call, and re-packing XL/16 costs
# about a forward. The price: the packed copies stay in memory while the network lives; `fast=False` never
# makes them.
_PACKED = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def packed_linears(model: nn.Module, enabled: bool = True):
    """Within the block, the nn.Linear layers of `model` run with packed weights where that gains
    (`kernel_for`), each pixel MLP fuses its GELU into the packed fc1, and each PiT and DiT block runs
    its elementwise chain in fewer passes.

    Weights must not change inside the block: each is packed on its first qualifying call."""
    if not (enabled and usable(model)):
        yield model
        return
    patched = []
    try:
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and "forward" not in mod.__dict__ and (kernel := kernel_for(mod)):
                mod.forward = _kept_forward(_PACKED, mod, lambda m, k=kernel: _PackedForward(m, k), kernel)
                patched.append(mod)
        patched += _fuse_blocks(model)
        yield model
    finally:
        for mod in patched:
            del mod.forward


def _fuse_blocks(model: nn.Module) -> list[nn.Module]:
    """Each pixel MLP, PiT and DiT block runs its fused forward (restored by deleting `forward`); returns them.
    The fused forwards fall back to the block's own off the CPU and under autograd."""
    patched = []
    for mod in model.modules():
        fused = {PixelMLP: _FusedPixelMLP, PiTBlock: _FusedPiTBlock, DiTBlock: _FusedDiTBlock}.get(type(mod))
        if fused is not None and "forward" not in mod.__dict__:
            mod.forward = fused(mod)
            patched.append(mod)
    return patched


class _Bf16Forward:
    """One Linear under bf16 autocast with its weight cast to bf16 once: autocast would cast the fp32 weight
    on every call (a copy of every weight per network evaluation). On a CPU with oneDNN, calls big enough to
    gain (`MIN_MACS`) run oneDNN's packed bf16 GEMM, packed from that copy on the first such call; the packed
    weight then replaces the copy (it serves every row count, so the memory stays one bf16 copy). Measured on
    an AMD EPYC with avx512_bf16, XL/16 shapes: 1.05–1.15× the plain bf16 GEMM. The products are the same bf16
    operands with fp32 accumulation as autocast's, summed in another order (the last bf16 bits move).
    Holds the Linear weakly: the copies are kept per Linear (_BF16) and must not keep the network alive."""

    def __init__(self, linear: nn.Linear):
        self.linear = weakref.ref(linear)
        self.key = weights_key([linear.weight, linear.bias])
        self.weight = linear.weight.detach().to(torch.bfloat16)  # None once packed
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.packed_weight = None

    def _inference_bf16(self, x, lin) -> bool:
        dev = x.device.type
        if not torch.is_autocast_enabled(dev) or torch.get_autocast_dtype(dev) != torch.bfloat16:
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or lin.weight.requires_grad))

    def packs(self, x) -> bool:
        """Whether this call runs the packed bf16 GEMM: bf16 autocast inference on a CPU with oneDNN, once
        packed or when big enough to gain."""
        lin = self.linear()
        if x.device.type != "cpu" or not available() or not self._inference_bf16(x, lin):
            return False
        rows = x.numel() // max(1, x.shape[-1])
        return self.packed_weight is not None or rows * lin.in_features * lin.out_features >= MIN_MACS

    fuses_gelu = packs

    def __call__(self, x):
        lin = self.linear()
        if self.packs(x):
            return self.packed(x)
        if not self._inference_bf16(x, lin):
            return F.linear(x, lin.weight, lin.bias)
        return F.linear(x, self.weight, self.bias)

    def packed(self, x, post: str = "none"):
        """The packed bf16 product (call only where `packs`); post "gelu" fuses exact GELU on the fp32 sums."""
        if self.packed_weight is None:
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, ROWS_HINT)
            self.weight = None
        algo = "none" if post == "gelu" else ""
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed_weight, self.bias, post, [], algo)


def weights_key(tensors) -> tuple:
    """Which tensors, at which versions: anything made from them (a copy, a frozen graph) is current while
    this is unchanged — an in-place change moves the version, a move or reload the storage."""
    return tuple((t.data_ptr(), t._version, t.device) for t in tensors if t is not None)


def _kept_forward(cache, linear: nn.Linear, make, kernel=None):
    """The forward `cache` keeps for `linear`, made again (`make(linear)`) when its weights changed or it was
    made for another kernel."""
    fwd = cache.get(linear)
    if fwd is None or getattr(fwd, "kernel", None) != kernel or fwd.key != weights_key([linear.weight, linear.bias]):
        fwd = cache[linear] = make(linear)
    return fwd


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
                    mod.forward = _kept_forward(_BF16, mod, _Bf16Forward)
                    patched.append(mod)
        yield model
    finally:
        for mod in patched:
            del mod.forward


@contextlib.contextmanager
def fast_linears(model: nn.Module, precision: str = "fp32", enabled: bool = True):
    """The inference fast path for a resolved precision: packed weights in fp32 (the last bits move, ~1e-6),
    bf16 weight copies in bf16 (packed for oneDNN on a CPU; the last bf16 bits move); on a CPU the fused
    pixel MLP and blocks in both, and the process keeps freed memory in its heap from then on (heap.py: no
    page faults after the first evaluation). Elsewhere the plain Linear runs."""
    p = next(model.parameters(), None)
    if enabled and p is not None and p.device.type == "cpu":
        keep_freed_memory()
    if precision != "bf16":
        with packed_linears(model, enabled):
            yield model
        return
    patched = _fuse_blocks(model) if enabled and p is not None and p.device.type == "cpu" else []
    try:
        with bf16_linears(model, enabled):
            yield model
    finally:
        for mod in patched:
            del mod.forward


def report(model: nn.Module, enabled: bool = True) -> dict | None:
    """What the CPU fast path has done for `model` (a results.json field; None where it did not run): how many
    Linears run packed, per kernel, or with a bf16 copy; why the patch level got its kernel (when the probe
    was asked); and whether the process keeps freed memory."""
    p = next(model.parameters(), None)
    if not enabled or p is None or p.device.type != "cpu":
        return None
    counts = {}
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            fwd = _PACKED.get(mod)
            if fwd is not None and fwd.weight is not None:
                counts[fwd.kernel] = counts.get(fwd.kernel, 0) + 1
            if (b := _BF16.get(mod)) is not None:
                what = "bf16 onednn" if b.packed_weight is not None else "bf16 copy"
                counts[what] = counts.get(what, 0) + 1
    rep = {"linears": counts, "heap_kept": kept()}
    info = getattr(patch_kernel, "cache_info", None)
    if info is None or info().currsize:  # never probes just to report
        rep["patch_kernel"], rep["why"] = patch_kernel()
    return rep
