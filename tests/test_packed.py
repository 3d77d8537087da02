"""oneDNN-packed Linear weights (models/packed.py): the same network within the parity contract.

The packed path must stay within 1e-5 of the official outputs on the official-format fixtures (the
contract the plain path meets), be deterministic run to run, leave the model exactly as it was after
the block, fall back to the plain Linear where gradients are needed, and sample within 1e-5 of the
plain solver (images in [-1, 1]).
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from pixeldit_cli import load_model
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
def test_packed_forward_meets_the_official_fixture_tolerance(fixtures, monkeypatch, name, io_name, keys):
    monkeypatch.setattr(packed, "MIN_MACS", 0)  # the fixtures' layers are small: pack them all the same
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


def _fresh_probe(monkeypatch, tmp_path, ratio):
    """patch_packing() on a simulated CPU whose packed/plain ratio is `ratio`, with an empty cache."""
    monkeypatch.delenv("PIXELDIT_PACK", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(packed, "_probe_ratio", lambda *shape: calls.append(shape) or ratio)
    packed.patch_packing.cache_clear()
    return calls


@pytest.mark.parametrize("ratio,wins", [(1.3, True), (1.0, False)])
def test_patch_level_packing_follows_the_probe_and_is_kept_per_machine(monkeypatch, tmp_path, ratio, wins):
    calls = _fresh_probe(monkeypatch, tmp_path, ratio)
    try:
        patch_level, pixel_level = torch.nn.Linear(1152, 3072), torch.nn.Linear(16, 64)
        assert packed.worth_packing(patch_level) is wins
        assert packed.worth_packing(pixel_level)  # per-pixel layers gain on every CPU measured
        assert not packed.worth_packing(torch.nn.Linear(1152, 24576))  # ties at best, costly reorder
        assert calls == [packed.PROBE_SHAPE]
        table = json.loads((tmp_path / "pixeldit" / "packing.json").read_text())
        assert list(table.values()) == [{"ratio": ratio}]
        # a later process on this machine reads the answer instead of timing again (same choice, same sums)
        packed.patch_packing.cache_clear()
        assert packed.patch_packing()[0] is wins and len(calls) == 1
    finally:
        packed.patch_packing.cache_clear()


def test_pack_override_and_an_unwritable_cache(monkeypatch, tmp_path):
    calls = _fresh_probe(monkeypatch, tmp_path / "file", 1.5)
    (tmp_path / "file").write_text("not a folder")  # the cache cannot be written: measured, not fatal
    try:
        assert packed.patch_packing() == (True, "packed/plain GEMM 1.50x on this CPU (probe)")
        monkeypatch.setenv("PIXELDIT_PACK", "0")
        packed.patch_packing.cache_clear()
        assert packed.patch_packing() == (False, "PIXELDIT_PACK=0 says so") and len(calls) == 1
    finally:
        packed.patch_packing.cache_clear()


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
