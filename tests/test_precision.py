"""Precision chosen from the hardware, and the fast inference paths.

The hardware's answer is simulated (CPU flags, the timed probe), so the choice is tested for CPUs with and
without native bf16 on any machine. The fast paths are checked against the plain ones: bf16 weight copies
bit-identical to plain autocast where nothing is packed, the packed bf16 path within the bf16 bound of
tests/test_bf16.py (its error against fp32 no larger than that of plain autocast, to within a bf16 rounding
budget), oneDNN-packed fp32 within 1e-5, each deterministic run to run.
"""

import pytest
import torch
from conftest import randomize
from test_bf16 import U, longest_matmul_path, rel

import pixeldit_cli.precision as precision
from pixeldit_cli import build_model, sample
from pixeldit_cli.edit import flowedit
from pixeldit_cli.models import packed
from pixeldit_cli.models.packed import bf16_linears
from pixeldit_cli.precision import CpuBf16, choose

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_detection(monkeypatch):
    monkeypatch.delenv("PIXELDIT_CPU_BF16", raising=False)
    precision.cpu_bf16.cache_clear()
    precision._warn_once.cache_clear()
    yield
    precision.cpu_bf16.cache_clear()


def simulate(monkeypatch, flags: set, ratio: float | None):
    """A CPU with these flags whose probe measures `ratio` (None: the probe must not run)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags | {"fpu", "sse2"})

    def probe(*a, **k):
        assert ratio is not None, "the probe ran although the flags already answered"
        return ratio

    monkeypatch.setattr(precision, "gemm_ratio", probe)


def test_auto_picks_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    simulate(monkeypatch, {"avx512_bf16", "amx_bf16"}, 8.9)
    c = choose("auto", CPU)
    assert c.precision == "bf16" and "avx512_bf16, amx_bf16" in c.reason and "8.9x" in c.reason
    assert choose("fp32", CPU).precision == "fp32"  # asked for: always honoured


def test_auto_picks_fp32_where_bf16_is_emulated_without_timing_it(monkeypatch):
    simulate(monkeypatch, set(), None)  # no flag: no probe (it would take seconds on such a CPU)
    c = choose("auto", CPU)
    assert c.precision == "fp32" and "no native bf16" in c.reason


def test_flags_without_speed_are_not_native(monkeypatch):
    simulate(monkeypatch, {"avx512_bf16"}, 0.9)  # the instructions exist but the GEMM is not faster
    assert choose("auto", CPU).precision == "fp32"
    precision.cpu_bf16.cache_clear()
    simulate(monkeypatch, {"avx512_bf16"}, precision.NATIVE_RATIO)
    assert choose("auto", CPU).precision == "bf16"


def test_explicit_bf16_on_an_emulating_cpu_warns_once_with_the_ratio(monkeypatch, capfd):
    simulate(monkeypatch, set(), None)
    monkeypatch.setattr(precision, "gemm_ratio", lambda *a, **k: 0.0031)  # measured only for the warning
    c = choose("bf16", CPU)
    choose("bf16", CPU)
    err = capfd.readouterr().err
    assert c.precision == "bf16" and err.count("warning: bf16 on this CPU is emulated") == 1 and "0.0x" in err


def test_cuda_keeps_the_release_autocast_and_the_override_wins(monkeypatch):
    assert choose("auto", CUDA).precision == "bf16" and choose("fp32", CUDA).precision == "fp32"
    monkeypatch.setenv("PIXELDIT_CPU_BF16", "0")
    simulate(monkeypatch, {"amx_bf16"}, None)
    assert choose("auto", CPU).precision == "fp32" and "PIXELDIT_CPU_BF16" in choose("auto", CPU).reason
    with pytest.raises(Exception, match="unknown precision 'fp16'"):
        choose("fp16", CPU)


def test_the_detection_is_cached_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setattr(precision, "gemm_ratio", lambda *a, **k: calls.append(1) or 5.0)
    assert precision.cpu_bf16() is precision.cpu_bf16() and calls == [1]
    assert precision.cpu_bf16() == CpuBf16(True, 5.0, ("amx_bf16",), "flags and probe")


# ---- the fast paths ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide():
    """Wide enough that oneDNN packing applies (≥ 50M multiply-adds per Linear call)."""
    return randomize(
        build_model("PixelDiT-S/4", hidden_size=256, num_heads=4, patch_depth=2, pixel_depth=1, num_classes=10), 3
    )


def _inputs():
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, 3, 64, 64, generator=g), torch.tensor([1, 7])


def test_bf16_weight_copies_equal_plain_autocast_bit_for_bit(c2i, t2i):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([0.3, 0.8])
    cases = [(c2i, torch.tensor([1, 2])), (t2i, torch.randn(2, 8, t2i.config.text_dim, generator=g))]
    for net, y in cases:
        tt = t if net.config.kind == "c2i" else 1000 * t
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            plain = net(x, tt, y)
            with bf16_linears(net):
                fast = net(x, tt, y)
        assert fast.dtype == plain.dtype == torch.bfloat16 and torch.equal(fast, plain)
    assert all("forward" not in m.__dict__ for m in c2i.modules())  # restored after the block


def test_the_library_sample_is_the_fast_path_within_1e_5_and_deterministic(wide):
    noise, y = _inputs()
    kw = dict(solver="flowdpm", steps=4, cfg=2.0, interval=(0.1, 0.9))
    plain = sample(wide, noise, y, fast=False, **kw)
    fast = sample(wide, noise, y, **kw)
    assert not torch.equal(fast, plain)  # the packed GEMMs did run (another summation order)
    assert (fast - plain).abs().max().item() <= 1e-5
    assert torch.equal(fast, sample(wide, noise, y, **kw))  # run to run
    b_plain = sample(wide, noise, y, fast=False, autocast=torch.bfloat16, **kw)
    b_fast = sample(wide, noise, y, precision="bf16", **kw)
    assert packed.report(wide)["linears"].get("bf16 onednn", 0) > 0  # the packed bf16 GEMMs did run
    assert torch.equal(b_fast, sample(wide, noise, y, precision="bf16", **kw))  # run to run
    _within_the_bf16_bound(b_fast, b_plain, plain, wide.config, steps=4)


def _within_the_bf16_bound(fast, plain_bf16, fp32, cfg, steps: int):
    """The packed bf16 path is bf16 arithmetic as plain autocast is: its error against fp32 obeys the derived
    bound (tests/test_bf16.py: 2·u·L per evaluation, compounding over the steps) and is not above plain
    autocast's by more than one more such rounding per matmul (u·L); it is not plain autocast bit for bit
    (another summation order: the packed GEMMs ran) nor fp32 (bf16 really ran)."""
    L = longest_matmul_path(cfg)
    err, err_plain = rel(fast, fp32), rel(plain_bf16, fp32)
    assert U / 64 < err < 2 * U * L * steps, err
    assert err <= err_plain + U * L, (err, err_plain)
    assert not torch.equal(fast, plain_bf16)


def test_the_library_flowedit_is_the_fast_path_too(wide):
    x, _ = _inputs()
    src, tgt = torch.tensor([1, 1]), torch.tensor([7, 7])
    kw = dict(steps=6, src_cfg=1.5, tgt_cfg=3.0, seed=2)
    plain, _ = flowedit(wide, x.clamp(-1, 1), src, tgt, fast=False, **kw)
    fast, _ = flowedit(wide, x.clamp(-1, 1), src, tgt, **kw)
    assert (fast - plain).abs().max().item() <= 1e-5 and not torch.equal(fast, plain)
    b_plain, _ = flowedit(wide, x.clamp(-1, 1), src, tgt, fast=False, autocast=torch.bfloat16, **kw)
    b_fast, _ = flowedit(wide, x.clamp(-1, 1), src, tgt, autocast=torch.bfloat16, **kw)
    assert torch.equal(b_fast, flowedit(wide, x.clamp(-1, 1), src, tgt, autocast=torch.bfloat16, **kw)[0])
    # the edit's output is its input plus the integrated velocity differences: bound those, not the image
    x0 = x.clamp(-1, 1)
    _within_the_bf16_bound(b_fast - x0, b_plain - x0, plain - x0, wide.config, steps=6)
