"""Fine-tuning: --init-from, class-table re-init, LoRA adapters with peft (training, checkpoints, resume, peft
format, merging, sampling with --lora), and the bad inputs — on the small-run settings of test_train."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from test_train import cfg_for, make_folder, states_equal
from typer.testing import CliRunner

from pixeldit_cli import build_model, load_model
from pixeldit_cli.cli import app
from pixeldit_cli.config import apply_overrides
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.models.lora import merge_adapters
from pixeldit_cli.train import train

peft = pytest.importorskip("peft")
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "imgs")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The 'released weights' the tests fine-tune: the small run's network with every gate active."""
    from conftest import randomize
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("base")
    net = randomize(build_model("PixelDiT-XS/4", num_classes=4), 5)
    with torch.no_grad():  # classes that differ visibly, so that class-to-class edits change pixels
        net.y_embedder.embedding_table.weight.mul_(40)
    save_file(
        net.state_dict(), str(d / "base.safetensors"), metadata={"pixeldit_config": json.dumps(net.config.to_dict())}
    )
    return d / "base.safetensors"


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    """A full (non-LoRA) run of the same settings: what a LoRA checkpoint's size is compared with."""
    out = tmp_path_factory.mktemp("full") / "run"
    train(cfg_for(data), out, progress=False)
    return out / "checkpoints" / "last.pt"


def inputs(cfg, batch=2, size=16):
    g = torch.Generator().manual_seed(3)
    return torch.randn(batch, 3, size, size, generator=g), torch.tensor([0.3, 0.8]), torch.tensor([1, 2])


def test_init_from_equals_loading_the_weights_by_hand(data, base, tmp_path):
    cfg = cfg_for(data, **{"train.init_from": str(base), "train.steps": 1, "train.lr": 1e-12, "train.ckpt_every": 1})
    train(cfg, tmp_path / "ft", progress=False)
    state = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)
    assert state["init"]["sha256"] and state["init"]["class_table"] == "loaded"
    by_hand = load_model(base)
    # step 1 at LR 1e-12 moved nothing visible: the run started from exactly these weights
    for k, v in by_hand.state_dict().items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=1e-9)
    assert not torch.equal(
        state["model"]["final_layer.linear.weight"],
        build_model(by_hand.config).state_dict()["final_layer.linear.weight"],
    )


def test_another_class_count_reinitialises_only_the_class_table(data, base, tmp_path):
    six = make_folder(tmp_path / "six", classes=6)
    cfg = cfg_for(six, **{"model.num_classes": 6, "train.init_from": str(base), "train.steps": 1, "train.lr": 1e-12,
                          "train.ckpt_every": 1})  # fmt: skip
    train(cfg, tmp_path / "ft6", progress=False)
    state = torch.load(tmp_path / "ft6" / "checkpoints" / "last.pt", weights_only=True)
    assert state["init"]["class_table"] == "re-initialised"
    b = load_model(base).state_dict()
    table = "y_embedder.embedding_table.weight"
    assert state["model"][table].shape == (7, b[table].shape[1])
    torch.testing.assert_close(state["model"][table][-1], b[table][-1], rtol=0, atol=1e-9)  # the null class kept
    for k, v in b.items():
        if k != table:
            torch.testing.assert_close(state["model"][k], v, rtol=0, atol=1e-9)


def lora_cfg(data, base, **kw):
    settings = {"train.init_from": str(base), "train.lora.rank": 4, "train.lora.alpha": 8.0, "train.ema_decay": 0.5}
    return cfg_for(data, **{**settings, **kw})


def test_lora_trains_adapters_only_and_checkpoints_are_small(data, base, full_run, tmp_path):
    train(lora_cfg(data, base), tmp_path / "lora", progress=False)
    ck = tmp_path / "lora" / "checkpoints" / "last.pt"
    state = torch.load(ck, weights_only=True)
    assert all("lora_" in k for k in state["model"]) and state["model"]
    assert os.path.getsize(ck) <= 0.1 * os.path.getsize(full_run)
    assert torch.load(full_run, weights_only=True)["format"] == state["format"]
    # the adapters moved; the base inside the merged network is the base plus B·A (checked by merging again)
    assert any(v.abs().max() > 0 for k, v in state["model"].items() if "lora_B" in k)
    # the peft files load with peft onto a fresh network and give the run's (unmerged) EMA outputs
    folder = tmp_path / "lora" / "lora"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert all(k.startswith("base_model.model.") for k in load_file(folder / "adapter_model.safetensors"))
    fresh = load_model(base)
    peft_model = peft.PeftModel.from_pretrained(fresh, str(folder)).eval()
    merged = load_model(ck)  # load_model merges the EMA adapters into the base
    x, t, y = inputs(merged.config)
    with torch.no_grad():
        a, b = peft_model(x, t, y), merged(x, t, y)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # merged == unmerged within 1e-5
    with torch.no_grad():
        assert (a - load_model(base)(x, t, y)).abs().max() > 1e-4  # and the adapters do something


def test_lora_base_stays_bit_identical_and_resume_is_exact(data, base, tmp_path):
    train(lora_cfg(data, base), tmp_path / "full", progress=False)
    train(lora_cfg(data, base, **{"train.steps": 2}), tmp_path / "half", progress=False)
    train(lora_cfg(data, base), tmp_path / "half", resume="auto", progress=False)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "half" / "checkpoints" / "last.pt", weights_only=True)
    assert states_equal(a["model"], b["model"]) and states_equal(a["ema"], b["ema"])
    # the frozen base is bit for bit the checkpoint's after 4 steps: rebuild the run's network and look
    from pixeldit_cli.train.loop import setup

    run, _ = setup(lora_cfg(data, base), tmp_path / "full", "auto")
    base_sd = load_model(base).state_dict()
    for name, p in run.model.named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(p.detach(), base_sd[key]), name
    for name, p in run.ema.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p.detach(), base_sd[name.replace(".base_layer", "")]), name


def test_sampling_with_the_adapter_scale_zero_and_merge(data, base, tmp_path):
    train(lora_cfg(data, base), tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "lora"
    common = ["sample", "--ckpt", str(base), "--class", "1", "--n", "2", "--steps", "3", "--height", "16",
              "--width", "16", "--format", "npz", "--precision", "fp32"]  # fmt: skip

    def npz(out, *extra):
        r = runner.invoke(app, [*common, "--out", str(tmp_path / out), *map(str, extra)])
        assert r.exit_code == 0, r.output
        import numpy as np

        return np.load(tmp_path / out / "samples.npz")["arr_0"]

    plain, zero, one = npz("plain"), npz("zero", "--lora", folder, "--lora-scale", 0), npz("one", "--lora", folder)
    assert (plain == zero).all() and not (plain == one).all()
    run_json = json.loads((tmp_path / "one" / "run.json").read_text())
    assert run_json["lora"][0][0] == str(folder.resolve()) and run_json["lora"][0][1] == 1.0
    # convert --merge-lora writes the merged weights: sampling them equals sampling with --lora
    r = runner.invoke(app, ["convert", str(base), str(tmp_path / "merged.safetensors"), "--merge-lora", str(folder)])
    assert r.exit_code == 0, r.output
    a, b = load_model(tmp_path / "merged.safetensors").state_dict(), load_model(base)
    merge_adapters(b, folder, 1.0)
    assert states_equal(a, b.state_dict())
    # a different folder of adapters on another architecture is one line
    other = build_model("PixelDiT-S/4", hidden_size=64, num_heads=4, patch_depth=2, num_classes=4)
    with pytest.raises(PixelDiTError, match="does not fit this network"):
        merge_adapters(other, folder, 1.0)


def test_the_diffusers_pipeline_loads_the_adapters(data, base, tmp_path):
    """`pipe.load_lora_weights(OUT/lora)` (diffusers' loader, peft layers unmerged) gives the merged network's
    outputs within 1e-5 and `sample --lora`'s images; unloading restores the base exactly; a folder for another
    architecture is one line and leaves the pipeline as it was."""
    pytest.importorskip("diffusers")
    import numpy as np

    from pixeldit_cli.pipelines import PixelDiTPipeline

    train(lora_cfg(data, base), tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "lora"
    r = runner.invoke(app, ["convert", str(base), str(tmp_path / "pipe"), "--format", "diffusers"])
    assert r.exit_code == 0, r.output
    pipe = PixelDiTPipeline.from_pretrained(tmp_path / "pipe")
    x, t, y = inputs(pipe.transformer.pixeldit_config)
    with torch.no_grad():
        plain = pipe.transformer(x, t, y).sample
    pipe.load_lora_weights(str(folder), adapter_name="fashion")
    merged = load_model(base)
    merge_adapters(merged, folder, 1.0)
    with torch.no_grad():
        adapted, want = pipe.transformer(x, t, y).sample, merged(x, t, y)
    torch.testing.assert_close(adapted, want, rtol=0, atol=1e-5)
    assert (adapted - plain).abs().max() > 1e-4
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    got = pipe([1, 1], num_inference_steps=3, height=16, width=16, generator=gens, output_type="np").images
    r = runner.invoke(app, ["sample", "--ckpt", str(base), "--class", "1", "--n", "2", "--steps", "3", "--height", "16",
                            "--width", "16", "--format", "npz", "--precision", "fp32", "--lora", str(folder),
                            "--out", str(tmp_path / "cli")])  # fmt: skip
    assert r.exit_code == 0, r.output
    cli = np.load(tmp_path / "cli" / "samples.npz")["arr_0"].astype(np.float32)
    # merged vs unmerged weights move the last float bits: at most one uint8 level on a few pixels
    assert np.abs(np.rint(got * 255) - cli).max() <= 1 and (np.rint(got * 255) == cli).mean() > 0.99
    pipe.unload_lora_weights()
    with torch.no_grad():
        assert torch.equal(pipe.transformer(x, t, y).sample, plain)
    other = tmp_path / "other"
    small = build_model("PixelDiT-S/4", hidden_size=64, num_heads=4, patch_depth=2, num_classes=4)
    from pixeldit_cli.models.lora import adapter_state, add_adapters, lora_config, save_adapters

    small = add_adapters(small, lora_config(2))
    save_adapters(adapter_state(small), lora_config(2), other)
    with pytest.raises(PixelDiTError, match="does not fit this network"):
        pipe.load_lora_weights(str(other))
    with torch.no_grad():
        assert torch.equal(pipe.transformer(x, t, y).sample, plain)


def test_lora_with_gradient_checkpointing_equals_without(data, base, tmp_path, monkeypatch):
    """Recomputing the blocks in backward (train.grad_checkpointing) trains the same adapters."""
    train(lora_cfg(data, base), tmp_path / "plain", progress=False)
    calls, real = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    train(lora_cfg(data, base, **{"train.grad_checkpointing": True}), tmp_path / "ckpt", progress=False)
    assert calls  # the blocks really were recomputed
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.pt", weights_only=True) for n in ("plain", "ckpt"))
    assert a["model"].keys() == b["model"].keys() and all("lora_" in k for k in b["model"])
    assert max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"]) < 1e-6
    assert max(b["model"][k].abs().max().item() for k in b["model"] if "lora_B" in k) > 0


def test_fsdp_with_lora_on_two_processes_equals_one(data, base, tmp_path):
    """train.fsdp with LoRA: the frozen base sharded with the adapters; 2 steps then a resume to 3 on two
    ranks equal 3 steps on one process within 1e-5 (adapters, their EMA, AdamW's moments)."""
    from test_train import overrides_for, torchrun_train

    lora = {"train.init_from": str(base), "train.lora.rank": 4, "train.lora.alpha": 8.0, "train.ema_decay": 0.5}
    train(cfg_for(data, **{"train.steps": 3}, **lora), tmp_path / "one", progress=False)
    for steps in (2, 3):
        torchrun_train(tmp_path / "fsdp", overrides_for(data, **{"train.steps": steps, "train.fsdp": True}, **lora))
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "fsdp" / "checkpoints" / "last.pt", weights_only=True)
    assert two["step"] == 3 and all("lora_" in k for k in two["model"]) and two["model"]
    for part in ("model", "ema"):
        a, b = one[part], two[part]
        assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5, part
    sa, sb = one["optimizer"]["state"], two["optimizer"]["state"]
    assert sa.keys() == sb.keys() and max((sa[k]["exp_avg"] - sb[k]["exp_avg"]).abs().max().item() for k in sa) < 1e-5
    assert max(one["model"][k].abs().max().item() for k in one["model"] if "lora_B" in k) > 0  # the adapters moved


@pytest.mark.parametrize("kw,msg", [
    ({"train.lora.rank": -1}, r"train.lora.rank must be 0 \(off\) or a positive rank, got -1"),
    ({"train.lora.rank": 4, "train.lora.targets": "nothing\\.here"}, "matches no Linear of this network"),
    ({"train.init_from": "NOTCKPT"}, "is not a checkpoint"),
    ({"train.init_from": "MISSING"}, "does not exist"),
])  # fmt: skip
def test_bad_fine_tuning_inputs_are_one_line(data, tmp_path, kw, msg):
    (tmp_path / "notes.txt").write_text("hello")
    kw = {k: str(tmp_path / "notes.txt") if v == "NOTCKPT" else str(tmp_path / "nope.pt") if v == "MISSING" else v
          for k, v in kw.items()}  # fmt: skip
    with pytest.raises(PixelDiTError, match=msg):
        train(apply_overrides(cfg_for(data), kw), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_flags_and_a_bad_lora_folder(data, base, tmp_path):
    r = runner.invoke(app, ["train", "--preset", "smoke", "--out", str(tmp_path / "x"), "--init-from", str(base),
                            "--lora-rank", "2", "--print-config", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    tc = json.loads(r.output.strip().splitlines()[-1])["train"]
    assert tc["init_from"] == str(base) and tc["lora"]["rank"] == 2
    for rank in ("0", "-3"):  # asked for LoRA of no rank: one line, no run folder
        r = runner.invoke(app, ["train", "--preset", "smoke", "--out", str(tmp_path / "y"), "--lora-rank", rank])
        assert r.exit_code == 1 and f"--lora-rank must be a positive integer, got {rank}" in r.output
        assert "Traceback" not in r.output and not (tmp_path / "y").exists()
    # a saved config with the keys of before the train.lora section reads under the new names
    from pixeldit_cli.config import config_from_dict

    old = config_from_dict({"train": {"lora_rank": 8, "lora_alpha": 16.0, "lora_targets": "x"}})
    assert (old.train.lora.rank, old.train.lora.alpha, old.train.lora.targets, old.train.lora.dropout) == (
        8,
        16.0,
        "x",
        0.0,
    )
    (tmp_path / "notlora").mkdir()
    r = runner.invoke(app, ["sample", "--ckpt", str(base), "--lora", str(tmp_path / "notlora"), "--n", "1"])
    assert r.exit_code == 1 and "is not a peft LoRA folder" in r.output and "Traceback" not in r.output


def test_edit_with_the_adapter(data, base, tmp_path):
    from PIL import Image

    train(lora_cfg(data, base), tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "lora"
    g = torch.Generator().manual_seed(1)
    Image.fromarray(torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()).save(
        tmp_path / "in.png"
    )
    common = ["edit", str(tmp_path / "in.png"), "--ckpt", str(base), "--src", "1", "--tgt", "2", "--steps", "4",
              "--strength", "1", "--tgt-cfg", "6", "--precision", "fp32"]  # fmt: skip

    def edited(out, *extra):
        r = runner.invoke(app, [*common, "--out", str(tmp_path / out), *map(str, extra)])
        assert r.exit_code == 0, r.output
        return (tmp_path / out / "edited.png").read_bytes(), json.loads((tmp_path / out / "results.json").read_text())

    (plain, rp), (zero, _), (one, ro) = (
        edited("p"),
        edited("z", "--lora", folder, "--lora-scale", 0),
        edited("o", "--lora", folder),
    )
    assert not rp["to_source"][0]["unchanged"]  # the edit does something, so the adapter can change it
    assert plain == zero and plain != one
    assert rp["lora"] is None and ro["lora"][0][:2] == [str(folder.resolve()), 1.0]
    # the same folder with other adapters is another edit: refused without --overwrite
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "p"), "--lora", str(folder)])
    assert r.exit_code == 1 and "Traceback" not in r.output
