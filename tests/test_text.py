"""The T2I text pipeline on a tiny random Gemma-2 (real transformers loading code), and prompt sampling end to end."""

import json

import pytest
import torch
from conftest import randomize
from safetensors.torch import save_file
from typer.testing import CliRunner

from pixeldit_cli import build_model
from pixeldit_cli.cli import app
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.text import CHI_PROMPT, TextEncoder, clean_prompt

runner = CliRunner()


def direct(enc, texts, max_len):
    tok = enc.tokenizer(texts, max_length=max_len, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        return enc.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state


def test_window_rules(gemma):
    enc = TextEncoder(gemma, max_length=6)
    assert enc.n_chi == len(enc.tokenizer.encode("\n".join(CHI_PROMPT))) and enc.n_chi > 100
    e = enc.encode(["a red fox"])
    assert e.shape == (1, 6, 12)
    L = enc.n_chi + 6 - 2  # the padded length: n_chi + max_length − 2
    full = direct(enc, ["\n".join(CHI_PROMPT) + "a red fox"], L)[0]
    assert torch.equal(e[0, 0], full[0])  # BOS ...
    assert torch.equal(e[0, 1:], full[L - 5 :])  # ... plus the last max_length − 1 positions
    null = enc.null("")
    want = direct(enc, [""], 6)  # no system prompt, no selection: BOS + 5 pads
    assert torch.equal(null, want) and null.shape == (1, 6, 12)
    assert not torch.allclose(null[0], enc.encode([""])[0])  # the system prompt stays out of the null embedding
    assert enc.null("") is null  # computed once


def test_truncation_is_recorded_and_prompts_cleaned(gemma):
    enc = TextEncoder(gemma, max_length=6)
    enc.encode(["a red fox in snow over sea blue bird"])  # longer than the 5 kept prompt positions
    assert enc.truncated == ["a red fox in snow over sea blue bird"]
    assert clean_prompt("  a red fox --ar 16:9") == "a red fox"


def test_bad_encoders(gemma, tmp_path):
    with pytest.raises(PixelDiTError, match="12-wide states but the checkpoint expects 2304"):
        TextEncoder(gemma, expected_dim=2304)
    with pytest.raises(PixelDiTError, match="neither a local folder nor in the Hugging Face cache"):
        TextEncoder(tmp_path / "missing")


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    d = tmp_path_factory.mktemp("t2i")
    m = randomize(
        build_model(
            "PixelDiT-T2I-S/4",
            hidden_size=32,
            num_heads=2,
            pixel_attn_hidden=24,
            pixel_heads=3,
            text_dim=12,
            text_len=6,
        ),
        0,
    )
    save_file(m.state_dict(), str(d / "t2i.safetensors"), metadata={"pixeldit_config": json.dumps(m.config.to_dict())})
    return d / "t2i.safetensors"


def test_prompt_sampling_end_to_end(gemma, t2i, tmp_path):
    (tmp_path / "p.txt").write_text("a red fox\n\nblue bird over sea\n")
    r = runner.invoke(
        app,
        [
            "sample",
            "--ckpt",
            str(t2i),
            "--text-encoder",
            str(gemma),
            "--prompts",
            str(tmp_path / "p.txt"),
            "--n",
            "3",
            "--steps",
            "3",
            "--height",
            "8",
            "--width",
            "16",
            "--out",
            str(tmp_path / "o"),
            "--npz",
        ],
    )
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "o").glob("0*.png"))
    assert names == ["000000-a-red-fox.png", "000001-blue-bird-over-sea.png", "000002-a-red-fox.png"]
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["prompts"] == ["a red fox", "blue bird over sea"] and res["settings"]["solver"] == "dpm++2m"
    assert res["nfe_per_sample"] == 6  # 3 DPM-Solver++ steps, CFG 4.5 on each: doubled evaluations
    # the same command resumes instead of regenerating
    again = runner.invoke(
        app,
        [
            "sample",
            "--ckpt",
            str(t2i),
            "--text-encoder",
            str(gemma),
            "--prompts",
            str(tmp_path / "p.txt"),
            "--n",
            "3",
            "--steps",
            "3",
            "--height",
            "8",
            "--width",
            "16",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert again.exit_code == 0 and "0 generated, 3 already on disk" in again.output


@pytest.mark.parametrize(
    "args,msg",
    [
        ([], "give --prompt or --prompts"),
        (["--prompt", "a red fox", "--height", "10"], "not a multiple of the patch size 4"),
        (["--prompts", "EMPTY"], "holds no prompts"),
        (["--prompt", "a red fox", "--text-encoder", "NOPE"], "neither a local folder nor in the Hugging Face cache"),
        (["--class", "3"], "text-to-image checkpoint"),
    ],
)
def test_prompt_sampling_bad_input(gemma, t2i, tmp_path, args, msg):
    (tmp_path / "empty.txt").write_text("\n \n")
    args = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "nope") if a == "NOPE" else a for a in args]
    base = [
        "sample",
        "--ckpt",
        str(t2i),
        "--n",
        "1",
        "--steps",
        "2",
        "--height",
        "8",
        "--width",
        "8",
        "--out",
        str(tmp_path / "x"),
    ]
    if "--text-encoder" not in args:
        base += ["--text-encoder", str(gemma)]
    r = runner.invoke(app, base + args)
    assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output


def test_prompt_to_prompt_edit(gemma, t2i, tmp_path):
    from torchvision.io import read_image, write_png

    write_png(
        torch.randint(0, 256, (3, 8, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
        str(tmp_path / "in.png"),
    )
    base = [
        "edit",
        str(tmp_path / "in.png"),
        "--ckpt",
        str(t2i),
        "--text-encoder",
        str(gemma),
        "--steps",
        "4",
        "--n-max",
        "3",
    ]
    r = runner.invoke(
        app,
        base
        + [
            "--src",
            "a red fox",
            "--tgt",
            "a red fox",
            "--src-cfg",
            "2",
            "--tgt-cfg",
            "2",
            "--out",
            str(tmp_path / "same"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert torch.equal(
        read_image(str(tmp_path / "same" / "edited.png")), read_image(str(tmp_path / "in.png"))
    )  # identity, exact
    r = runner.invoke(
        app, base + ["--src", "a red fox", "--tgt", "blue bird over sea", "--out", str(tmp_path / "e"), "--json"]
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["target"] == {"prompt": "blue bird over sea", "cfg": 4.0} and res["network_evaluations_per_image"] == 12
    r = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "in.png"),
            "--ckpt",
            str(t2i),
            "--src",
            "a",
            "--tgt",
            "b",
            "--out",
            str(tmp_path / "n"),
        ],
    )
    assert r.exit_code == 1 and "--text-encoder" in r.output


def test_release_aspect_ratio_buckets():
    from pixeldit_cli.labels import aspect_bucket

    assert aspect_bucket("1:1") == (1024, 1024) and aspect_bucket("16:9") == (768, 1344)
    assert aspect_bucket("9:16") == (1344, 768) and aspect_bucket("4:1") == (512, 2048)
    assert aspect_bucket("16:9", 512) == (384, 672)  # the 512 table is the 1024 one halved
    with pytest.raises(PixelDiTError, match="is not W:H"):
        aspect_bucket("wide")


def test_model_ids_resolve_from_the_local_hf_cache_only(tmp_path, monkeypatch):
    """An id already in the local Hugging Face cache loads with local_files_only; an absent one is one line
    naming the cache. Nothing is downloaded."""
    from huggingface_hub import constants
    from transformers import Dinov2Config, Dinov2Model

    from pixeldit_cli.errors import PixelDiTError
    from pixeldit_cli.train.objective import DinoEncoder

    cache = tmp_path / "hub"
    snap = cache / "models--tiny-org--tiny-dino" / "snapshots" / "0123456789abcdef"
    torch.manual_seed(0)
    Dinov2Model(
        Dinov2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            patch_size=7,
            image_size=14,
        )
    ).save_pretrained(snap)
    (cache / "models--tiny-org--tiny-dino" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-dino" / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = DinoEncoder("tiny-org/tiny-dino")
    assert enc.dim == 16
    with pytest.raises(PixelDiTError, match=rf"neither a local folder nor in the Hugging Face cache \({cache}\)"):
        DinoEncoder("tiny-org/not-there")
