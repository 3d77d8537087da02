"""oneDNN-packed Linear weights (models/packed.py): the same network within the parity contract.

The packed path must stay within 1e-5 of the official outputs on the official-format fixtures (the
contract the plain path meets), be deterministic run to run, leave the model exactly as it was after
the block, fall back to the plain Linear where gradients are needed, and sample within 1e-5 of the
plain solver (images in [-1, 1]).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pixeldit_cli import heap, load_model
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.models import packed
from pixeldit_cli.models.packed import available, packed_linears
from pixeldit_cli.solvers import solve

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize(
    "name,io_name,keys",
    [
        ("official_c2i_small.ckpt", "official_c2i_small_io.safetensors", ("x", "t", "y", "out_ema")),
        ("official_t2i_small.pth", "official_t2i_small_io.safetensors", ("x", "t", "y", "out")),
    ],
)
@pytest.mark.parametrize("kernel", ["mkl", "onednn"])
def test_packed_forward_meets_the_official_fixture_tolerance(fixtures, monkeypatch, name, io_name, keys, kernel):
    if kernel == "mkl" and not packed._mkl_available():
        pytest.skip("this torch build has no MKL")
    monkeypatch.setattr(packed, "MIN_MACS", 0)  # the fixtures' layers are small: pack them all the same
    monkeypatch.setattr(packed, "patch_kernel", lambda: (kernel, "the test says so"))
    io = load_file(fixtures / io_name)
    m = load_model(fixtures / name)
    x, t, y, want = (io[k] for k in keys)
    with torch.inference_mode():
        plain = m(x, t, y)
        with packed_linears(m):
            a, b = m(x, t, y), m(x, t, y)
        after = m(x, t, y)
    assert (a - want).abs().max() <= 1e-5 and 0 < (a - plain).abs().max() <= 1e-5  # really another kernel
    assert torch.equal(a, b)  # deterministic
    assert torch.equal(after, plain)  # the model is restored
    assert not any("forward" in mod.__dict__ for mod in m.modules())


def test_gradients_use_the_plain_linear(c2i):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([0.3, 0.6]), torch.tensor([1, 2])
    with packed_linears(c2i):
        out = c2i(x, t, y)
    assert out.requires_grad  # autograd saw the ordinary Linear
    with torch.no_grad():
        assert torch.equal(out.detach(), c2i(x, t, y))


def test_packed_sampling_stays_within_the_parity_tolerance(c2i, monkeypatch):
    monkeypatch.setattr(packed, "MIN_MACS", 0)
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 3, 5, 9])
    plain, _ = solve(c2i, noise, y, solver="flowdpm", steps=8, cfg=3.0, interval=(0.1, 0.9))
    with packed_linears(c2i):
        fast, _ = solve(c2i, noise, y, solver="flowdpm", steps=8, cfg=3.0, interval=(0.1, 0.9))
    assert 0 < (fast - plain).abs().max() <= 1e-5


def _fresh_probe(monkeypatch, tmp_path, ratios):
    """patch_kernel() on a simulated CPU whose packed/plain ratios are `ratios`, with an empty cache."""
    monkeypatch.delenv("PIXELDIT_PACK", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(packed, "_probe_ratios", lambda *shape: calls.append(shape) or dict(ratios))
    packed.patch_kernel.cache_clear()
    return calls


@pytest.mark.parametrize(
    "ratios,kernel",
    [
        ({"mkl": 1.12, "onednn": 0.99}, "mkl"),  # the Intel Xeon with AMX of this project
        ({"mkl": 1.02, "onednn": 1.25}, "onednn"),  # the AMD EPYC
        ({"mkl": 1.03, "onednn": 1.01}, None),  # neither pays for its copy
    ],
)
def test_patch_level_kernel_follows_the_probe_and_is_kept_per_machine(monkeypatch, tmp_path, ratios, kernel):
    calls = _fresh_probe(monkeypatch, tmp_path, ratios)
    try:
        patch_level, pixel_level = torch.nn.Linear(1152, 3072), torch.nn.Linear(16, 64)
        pixel_adaln, tiny_patch = torch.nn.Linear(1152, 24576), torch.nn.Linear(128, 384)
        assert packed.kernel_for(patch_level) == kernel
        assert packed.kernel_for(pixel_level) == "onednn"  # per-pixel layers gain with oneDNN on every CPU
        assert packed.kernel_for(pixel_adaln) == kernel  # the 24,576-wide pixel AdaLN gains with either kernel
        assert packed.kernel_for(tiny_patch) is None  # K = 128: packing loses
        assert calls == [packed.PROBE_SHAPE]
        table = json.loads((tmp_path / "pixeldit" / "packing.json").read_text())
        assert list(table.values()) == [ratios]
        # a later process on this machine reads the answer instead of timing again (same choice, same sums)
        packed.patch_kernel.cache_clear()
        assert packed.patch_kernel()[0] == kernel and len(calls) == 1
    finally:
        packed.patch_kernel.cache_clear()


def test_an_older_cache_entry_is_measured_again(monkeypatch, tmp_path):
    """Before MKL's packed sgemm was a candidate the cache held one oneDNN ratio: that answer is incomplete."""
    calls = _fresh_probe(monkeypatch, tmp_path, {"mkl": 1.1, "onednn": 1.0})
    (tmp_path / "pixeldit").mkdir()
    (tmp_path / "pixeldit" / "packing.json").write_text(json.dumps({packed._machine_key(): {"ratio": 1.06}}))
    try:
        assert packed.patch_kernel()[0] == "mkl" and len(calls) == 1
        assert json.loads((tmp_path / "pixeldit" / "packing.json").read_text()) == {
            packed._machine_key(): {"mkl": 1.1, "onednn": 1.0}
        }
    finally:
        packed.patch_kernel.cache_clear()


def test_pack_override_and_an_unwritable_cache(monkeypatch, tmp_path):
    calls = _fresh_probe(monkeypatch, tmp_path / "file", {"mkl": 1.5, "onednn": 1.2})
    (tmp_path / "file").write_text("not a folder")  # the cache cannot be written: measured, not fatal
    try:
        assert packed.patch_kernel() == ("mkl", "packed/plain GEMM on this CPU (probe): mkl 1.50x, onednn 1.20x")
        for value, kernel in (("0", None), ("1", "onednn"), ("onednn", "onednn"), ("MKL", "mkl")):
            monkeypatch.setenv("PIXELDIT_PACK", value)
            packed.patch_kernel.cache_clear()
            assert packed.patch_kernel() == (kernel, f"PIXELDIT_PACK={value.lower()} says so")
        assert len(calls) == 1
        monkeypatch.setenv("PIXELDIT_PACK", "yes")
        packed.patch_kernel.cache_clear()
        with pytest.raises(PixelDiTError, match="PIXELDIT_PACK must be mkl, onednn, 0 or 1, got 'yes'"):
            packed.patch_kernel()
    finally:
        packed.patch_kernel.cache_clear()


@pytest.mark.skipif(not packed._mkl_available(), reason="this torch build has no MKL")
def test_one_mkl_packing_serves_every_row_count_and_a_disagreeing_count_runs_plain(monkeypatch):
    """An unguided step evaluates B rows, a guided one 2B: one packing serves both, and a row's result does
    not depend on the rows beside it (an image's sums do not depend on its batch). Each new count is checked
    once against F.linear; where MKL disagreed, that count would run plain."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(1152, 1536).eval()
    fwd = packed._PackedForward(lin, "mkl")
    big = torch.randn(4, 32, 1152)
    small = big[:2].clone()
    with torch.inference_mode():
        first = fwd(small)
        kept = fwd.weight
        assert fwd.rows == {64} and (first - F.linear(small, lin.weight, lin.bias)).abs().max() <= 1e-5
        out = fwd(big)
        assert fwd.weight is kept and fwd.rows == {64, 128}  # not packed again
        assert (out - F.linear(big, lin.weight, lin.bias)).abs().max() <= 1e-5
        assert torch.equal(out[:2], first)  # the first two images: the same sums in a batch of four
        assert torch.equal(fwd(big), out) and torch.equal(fwd(small), first)  # deterministic
        real = packed._mkl_linear
        monkeypatch.setattr(packed, "_mkl_linear", lambda x, *a: real(x, *a) if x.shape[0] != 3 else x.new_zeros(1))
        odd = torch.randn(3, 32, 1152)
        assert torch.equal(fwd(odd), F.linear(odd, lin.weight, lin.bias)) and fwd.plain_rows == {96}
        assert torch.equal(fwd(odd), F.linear(odd, lin.weight, lin.bias))  # plain from then on


@pytest.mark.parametrize("kernel", ["mkl", "onednn"])
def test_the_fast_path_forward_equals_the_plain_one(monkeypatch, kernel):
    """With either patch-level kernel, the PiT block's fewer-pass chain and the MLP's fused GELU, the whole
    forward is the plain one within fp32 rounding; the model is left as it was; autograd gets the plain path."""
    from pixeldit_cli import build_model

    if kernel == "mkl" and not packed._mkl_available():
        pytest.skip("this torch build has no MKL")
    monkeypatch.setattr(packed, "MIN_MACS", 0)
    monkeypatch.setattr(packed, "patch_kernel", lambda: (kernel, "the test says so"))
    torch.manual_seed(0)
    net = build_model("PixelDiT-XS/4", num_classes=4, hidden_size=256, num_heads=4, pixel_attn_hidden=256,
                      pixel_heads=4).eval()  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the official init zeroes the AdaLN: make it matter
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.7]), torch.tensor([1, 2])
    with torch.inference_mode():
        plain = net(x, t, y)
        with packed_linears(net):
            assert isinstance(net.pixel_blocks[0].__dict__["forward"], packed._FusedPiTBlock)
            assert isinstance(net.pixel_blocks[0].mlp.__dict__["forward"], packed._FusedPixelMLP)
            assert isinstance(net.patch_blocks[0].__dict__["forward"], packed._FusedDiTBlock)
            qkv = net.patch_blocks[0].attn.qkv.__dict__["forward"]
            fast = net(x, t, y)
            assert qkv.kernel == kernel and qkv.weight is not None  # the patch level really ran packed
    assert 0 < (fast - plain).abs().max() <= 1e-5
    assert not any("forward" in m.__dict__ for m in net.modules())
    with packed_linears(net):
        out = net(x, t, y)  # autograd: the block's own forward, the plain Linear
    assert out.requires_grad and torch.equal(out.detach(), plain)


def test_layers_seeing_few_rows_are_never_packed():
    """The AdaLN modulation sees one row per image: it stays on F.linear and its weight is never reordered;
    a call with enough rows packs it, once."""
    lin = torch.nn.Linear(1152, 6912).eval()
    fwd = packed._PackedForward(lin)
    x = torch.randn(2, 1152)
    with torch.inference_mode():
        assert torch.equal(fwd(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
        assert fwd.weight is None
        big = torch.randn(64, 1152)
        out = fwd(big)
        packed_weight = fwd.weight
        assert packed_weight is not None
        torch.testing.assert_close(out, torch.nn.functional.linear(big, lin.weight, lin.bias), rtol=0, atol=1e-4)
        fwd(big)
        assert fwd.weight is packed_weight


def test_bf16_copies_are_kept_across_calls_renewed_after_a_change_and_do_not_keep_the_network():
    """bf16_linears keeps each Linear's bf16 copy between blocks (the library enters one per call) while the
    weights are unchanged; a change in place makes a new copy (outputs = plain autocast's, bit for bit); the
    copies never keep a network alive."""
    import gc
    import weakref

    from pixeldit_cli import build_model
    from pixeldit_cli.models.packed import bf16_linears

    torch.manual_seed(0)
    net = build_model("PixelDiT-XS/4", num_classes=4).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.7]), torch.tensor([1, 2])

    def run(m, fast):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16), bf16_linears(m, fast):
            return m(x, t, y)

    lin = net.final_layer.linear
    first = run(net, True)
    copy_id = id(packed._BF16[lin].weight)
    assert torch.equal(run(net, True), first) and id(packed._BF16[lin].weight) == copy_id  # kept, not remade
    assert torch.equal(first, run(net, False))  # = plain autocast
    with torch.no_grad():
        lin.weight.mul_(2.0)
    assert id(packed._BF16.get(lin).weight) == copy_id  # still the old copy until the next block...
    assert torch.equal(run(net, True), run(net, False)) and id(packed._BF16[lin].weight) != copy_id  # ...renewed
    ref = weakref.ref(net)
    del net, lin
    gc.collect()
    assert ref() is None


def test_results_json_says_what_the_fast_path_did(tmp_path, monkeypatch):
    """A sample job's results.json names the packed Linears per kernel, the patch level's kernel and why,
    and whether the heap is kept; with --no-packed it says nothing ran."""
    from safetensors.torch import save_file

    from pixeldit_cli import build_model
    from pixeldit_cli.sampling import SampleJob, run

    monkeypatch.setattr(packed, "MIN_MACS", 0)
    monkeypatch.setattr(packed, "patch_kernel", lambda: ("mkl", "the test says so"))
    net = build_model("PixelDiT-XS/4", num_classes=4, hidden_size=256, num_heads=4, pixel_attn_hidden=256,
                      pixel_heads=4)  # fmt: skip
    path = tmp_path / "net.safetensors"
    save_file(net.state_dict(), str(path), metadata={"pixeldit_config": json.dumps(net.config.to_dict())})
    base = dict(ckpt=str(path), n=2, solver="euler", steps=2, cfg=2.0, height=16, width=16, format="npz",
                precision="fp32")  # fmt: skip
    fast = run(SampleJob(**base, out=str(tmp_path / "fast")), progress=False)["fast_path"]
    mkl = sum(isinstance(m, torch.nn.Linear) and m.in_features >= 256 for m in net.modules())
    pixel = sum(isinstance(m, torch.nn.Linear) and max(m.in_features, m.out_features) <= 64 for m in net.modules())
    assert fast["linears"] == {"mkl": mkl, "onednn": pixel}  # MIN_MACS 0: every layer packs, by its kind
    assert fast["patch_kernel"] == "mkl" and fast["why"] == "the test says so"
    assert fast["heap_kept"] is heap.kept()
    assert run(SampleJob(**base, out=str(tmp_path / "plain"), packed=False), progress=False)["fast_path"] is None
    from PIL import Image

    from pixeldit_cli.edit import run_edit
    from pixeldit_cli.settings import EditSettings

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    es = EditSettings(steps=2, n_max=2, src_cfg=1.0, tgt_cfg=2.0, seed=0)
    edit = run_edit(tmp_path / "in.png", str(path), "0", "1", tmp_path / "e", es, precision="fp32")["fast_path"]
    assert edit["linears"] == {"mkl": mkl, "onednn": pixel} and edit["patch_kernel"] == "mkl"


def test_bf16_linears_pack_big_calls_for_onednn_and_keep_one_copy():
    """Under bf16 autocast a call big enough to gain runs oneDNN's packed bf16 GEMM: the same bf16 operands
    with fp32 sums as autocast's F.linear, so within one bf16 rounding of the exact product of those operands
    (rounded itself: |Δ| ≤ 2 units of 2^-8, relative); the packed weight replaces the plain copy (one copy in
    memory) and serves small calls from then on; GELU fuses onto the fp32 sums; small calls before packing,
    calls outside autocast and autograd calls take the copy, fp32 and plain autocast paths unchanged."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 1536).eval()
    fwd = packed._Bf16Forward(lin)
    bf = torch.bfloat16
    small, big = torch.randn(4, 384), torch.randn(3, 40, 384)  # 2.4M and 71M multiply-adds

    def exact(x):  # the product of the bf16 operands, in float64, rounded once to bf16
        w, b = lin.weight.to(bf).double(), lin.bias.to(bf).double()
        return (x.to(bf).double() @ w.T + b).float()

    with torch.inference_mode():
        assert torch.equal(fwd(small), F.linear(small, lin.weight, lin.bias))  # no autocast: fp32, untouched
        with torch.autocast("cpu", bf):
            assert torch.equal(fwd(small), F.linear(small, lin.weight, lin.bias))  # = plain autocast, bit for bit
            assert fwd.packed_weight is None and fwd.weight is not None
            out = fwd(big)
            assert out.dtype == bf and fwd.packed_weight is not None and fwd.weight is None  # packed: one copy
            ref = exact(big)
            torch.testing.assert_close(out.float(), ref.to(bf).float(), rtol=2 * 2**-8, atol=1e-6)
            assert torch.equal(fwd(big), out)  # deterministic
            torch.testing.assert_close(fwd(small).float(), exact(small), rtol=2 * 2**-8, atol=1e-6)  # packed now
            gelu = fwd.packed(big, post="gelu")
            torch.testing.assert_close(gelu.float(), F.gelu(ref), rtol=2 * 2**-8, atol=2 * 2**-8 * 0.2)
    x = big.clone().requires_grad_(True)
    with torch.autocast("cpu", bf):
        y = fwd(x)  # autograd: autocast's own F.linear on the fp32 weight
    y.float().sum().backward()
    assert y.dtype == bf and x.grad is not None and lin.weight.grad is not None


def test_the_bf16_fast_path_fuses_the_blocks_and_restores_them(c2i):
    from pixeldit_cli.models.layers import PiTBlock
    from pixeldit_cli.models.packed import fast_linears
    from pixeldit_cli.models.pixeldit import DiTBlock

    with fast_linears(c2i, "bf16"):
        assert all(isinstance(m.__dict__.get("forward"), packed._FusedPiTBlock) for m in c2i.modules()
                   if isinstance(m, PiTBlock))  # fmt: skip
        assert all(isinstance(m.__dict__.get("forward"), packed._FusedDiTBlock) for m in c2i.modules()
                   if isinstance(m, DiTBlock))  # fmt: skip
        assert all(isinstance(m.__dict__.get("forward"), packed._Bf16Forward) for m in c2i.modules()
                   if isinstance(m, torch.nn.Linear))  # fmt: skip
    assert not any("forward" in m.__dict__ for m in c2i.modules())
