"""Networks: official fixtures, an independent float64 reference, the released key layout, parameter counts."""

import pytest
import reference_impl as ref
import torch
from conftest import randomize
from safetensors.torch import load_file

from pixeldit_cli import build_model, load_model, model_config
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.models import count_params

# ---- the official classes' outputs on official-format checkpoints -----------------------------------


def test_c2i_matches_official_fixture(fixtures):
    io = load_file(fixtures / "official_c2i_small_io.safetensors")
    with torch.no_grad():
        ema = load_model(fixtures / "official_c2i_small.ckpt")
        assert (ema(io["x"], io["t"], io["y"]) - io["out_ema"]).abs().max() <= 1e-5
        assert (ema(io["x_rect"], io["t_rect"], io["y_rect"]) - io["out_ema_rect"]).abs().max() <= 1e-5
        raw = load_model(fixtures / "official_c2i_small.ckpt", weights="raw")
        assert (raw(io["x"], io["t"], io["y"]) - io["out_raw"]).abs().max() <= 1e-5
        assert (ema(io["x"], io["t"], io["y"]) - io["out_raw"]).abs().max() > 1e-3  # EMA really differs


def test_t2i_matches_official_fixture(fixtures):
    io = load_file(fixtures / "official_t2i_small_io.safetensors")
    m = load_model(fixtures / "official_t2i_small.pth")
    assert io["y"].shape[1] > m.config.text_len  # the network keeps the first text_len tokens
    with torch.no_grad():
        assert (m(io["x"], io["t"], io["y"]) - io["out"]).abs().max() <= 1e-5


# ---- an independent implementation (tests/reference_impl.py) -----------------------------------------


@pytest.mark.parametrize("H,W", [(8, 8), (8, 12), (12, 4)])
def test_c2i_matches_independent_reference(H, W):
    m = randomize(
        build_model(
            "PixelDiT-S/4",
            hidden_size=32,
            num_heads=2,
            patch_depth=2,
            pixel_depth=2,
            pixel_hidden=8,
            num_classes=7,
            patch_size=2,
        ),
        seed=H * W,
    )
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(2, 3, H, W, generator=g), torch.tensor([0.3, 0.85]), torch.tensor([4, 7])  # 7 = null
    with torch.no_grad():
        got = m(x, t, y).double()
    want = ref.forward_c2i(m.state_dict(), ref.ref_cfg(m.config), x, t, y)
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("H,W,Lt", [(8, 8, 5), (4, 12, 9)])
def test_t2i_matches_independent_reference(H, W, Lt):
    m = randomize(
        build_model(
            "PixelDiT-T2I-S/2",
            hidden_size=32,
            num_heads=2,
            patch_depth=2,
            pixel_depth=2,
            pixel_hidden=4,
            pixel_attn_hidden=24,
            pixel_heads=3,
            text_dim=12,
            text_len=6,
        ),
        seed=Lt,
    )
    g = torch.Generator().manual_seed(2)
    x, t, y = torch.randn(2, 3, H, W, generator=g), torch.tensor([250.0, 990.0]), torch.randn(2, Lt, 12, generator=g)
    with torch.no_grad():
        got = m(x, t, y).double()
    want = ref.forward_t2i(m.state_dict(), ref.ref_cfg(m.config), x, t, y)
    assert (got - want).abs().max() <= 1e-5


def test_size_not_multiple_of_patch_is_refused():
    m = build_model("PixelDiT-S/4")
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        m(torch.randn(1, 3, 8, 10), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_fresh_init_outputs_zero_and_keeps_official_zeros():
    m = build_model("PixelDiT-S/4")
    assert torch.count_nonzero(m.patch_blocks[0].adaLN_modulation[0].weight) == 0
    out = m(torch.randn(1, 3, 8, 8), torch.rand(1), torch.zeros(1, dtype=torch.long))
    assert torch.equal(out, torch.zeros_like(out))  # zero final layer
    t2i = build_model("PixelDiT-T2I-S/4")
    assert torch.count_nonzero(t2i.patch_blocks[0].adaLN_modulation_img[0].weight) > 0  # not zeroed in T2I


# ---- the released key layout and the paper's parameter counts ------------------------------------------


def _keys(path, prefix):
    out = []
    for line in path.read_text().splitlines():
        name, shape = line.split(" ", 1)
        if name.startswith(prefix):
            out.append((name[len(prefix) :], tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return out


def test_state_dict_equals_released_c2i_layout(fixtures):
    with torch.device("meta"):
        m = build_model("PixelDiT-XL/16", init=False)
    ours = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    assert ours == _keys(fixtures / "keys_c2i_xl256.txt", "ema_denoiser.")  # names, shapes and order


def test_state_dict_equals_released_t2i_layout(fixtures):
    with torch.device("meta"):
        m = build_model("PixelDiT-T2I", init=False)
    ours = sorted((k, tuple(v.shape)) for k, v in m.state_dict().items())
    assert ours == sorted(_keys(fixtures / "keys_t2i_1024.txt", "core."))


@pytest.mark.parametrize(
    "name,params",
    [
        ("PixelDiT-B/16", 184_749_155),
        ("PixelDiT-L/16", 569_648_963),
        ("PixelDiT-XL/16", 797_383_203),
        ("PixelDiT-T2I", 1_302_470_787),
    ],
)
def test_parameter_counts_match_paper(name, params):
    with torch.device("meta"):
        assert count_params(build_model(name, init=False)) == params


@pytest.mark.parametrize("name,millions", [("PixelDiT-XL/8", 683.4), ("PixelDiT-XL/32", 1253.4)])
def test_parameter_counts_other_patch_sizes(name, millions):
    with torch.device("meta"):
        assert round(count_params(build_model(name, init=False)) / 1e6, 1) == millions


def test_t2i_total_with_repa_projector_is_1311m():
    # projector 1536 -> 2048 -> 2048 -> 768 with biases (docs/checkpoints.md#t2i)
    proj = 1536 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 768 + 768
    assert proj == 8_917_760
    with torch.device("meta"):
        assert count_params(build_model("PixelDiT-T2I", init=False)) + proj == 1_311_388_547


def test_registry_names():
    assert model_config("PixelDiT-XL/8").patch_size == 8
    assert model_config("PixelDiT-T2I").kind == "t2i"
    with pytest.raises(PixelDiTError, match="unknown model 'PixelDiT-XXL/16'"):
        model_config("PixelDiT-XXL/16")
