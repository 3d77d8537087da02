"""The config system: presets, frozen dataclasses, dotted overrides, unknown keys, installed-wheel lookup."""

import dataclasses
import subprocess
import sys
import zipfile

import pytest

from pixeldit_cli.config import apply_overrides, load_preset, parse_overrides, preset_names, resolve
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.models import model_config

PRESETS = ["b256", "l256", "xl256", "xl512", "t2i512-stage1", "t2i512-stage2", "t2i1024", "smoke", "fashion"]


def test_every_required_preset_exists_and_names_a_registry_model():
    assert set(PRESETS) <= set(preset_names())
    for name in PRESETS:
        cfg = load_preset(name)
        assert model_config(cfg.model.name)  # resolves
        assert cfg.description


def test_presets_open_with_what_they_reproduce_and_how_to_launch():
    from pixeldit_cli.config import presets_dir

    for name in PRESETS:
        text = (presets_dir() / f"{name}.yaml").read_text()
        assert text.startswith("#")
        assert "Reproduces" in text and "pixeldit" in text.split("description:")[0]


def test_release_sampling_settings_in_presets():
    xl = load_preset("xl256")
    assert (xl.sample.solver, xl.sample.steps, xl.sample.cfg, xl.sample.interval, xl.sample.shift) == (
        "flowdpm",
        100,
        2.75,
        (0.1, 0.9),
        1.0,
    )
    x5 = load_preset("xl512")
    assert (
        x5.sample.cfg,
        x5.sample.interval,
        x5.sample.shift,
        x5.train.lr,
        x5.train.grad_clip,
        x5.train.time_shift,
    ) == (3.5, (0.1, 1.0), 2.0, 1e-5, 0.5, 3.0)
    assert (xl.train.lr, xl.train.global_batch, xl.train.ema_decay, xl.train.repa_block, xl.train.repa_weight) == (
        1e-4,
        256,
        0.9999,
        8,
        0.5,
    )
    t1, t3 = load_preset("t2i512-stage1"), load_preset("t2i1024")
    assert (t1.train.steps, t1.train.global_batch, t1.train.repa_block, t1.sample.shift) == (400_000, 1024, 6, 3.0)
    assert (
        t3.train.steps,
        t3.train.global_batch,
        t3.train.lr,
        t3.train.grad_clip,
        t3.train.repa_weight,
        t3.sample.shift,
        t3.sample.cfg,
    ) == (100_000, 768, 2e-5, 0.1, 0.0, 4.0, 4.5)


def test_configs_are_frozen():
    cfg = load_preset("xl256")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0


def test_dotted_overrides_typed():
    cfg = resolve(
        "xl256",
        parse_overrides(
            [
                "--train.lr",
                "1e-5",
                "sample.interval=[0.2, 0.8]",
                "--train.compile",
                "true",
                "--model.name",
                "PixelDiT-B/16",
            ]
        ),
    )
    assert cfg.train.lr == 1e-5 and cfg.sample.interval == (0.2, 0.8) and cfg.train.compile is True
    assert cfg.model.name == "PixelDiT-B/16"
    assert load_preset("xl256").train.lr == 1e-4  # the preset itself is untouched


@pytest.mark.parametrize(
    "overrides,msg",
    [
        ({"train.lrr": "1"}, "unknown config key 'train.lrr'"),
        ({"nosuch.x": "1"}, "unknown config key 'nosuch.x'"),
        ({"train.steps": "many"}, "train.steps must be an integer"),
        ({"train.compile": "maybe"}, "train.compile must be true or false"),
        ({"sample.interval": "0.5"}, "sample.interval must be a list of 2 values"),
        ({"train": "1"}, "is a section"),
    ],
)
def test_bad_overrides(overrides, msg):
    with pytest.raises(PixelDiTError, match=msg.replace("(", r"\(")):
        apply_overrides(load_preset("smoke"), overrides)


def test_unknown_preset_and_unknown_yaml_key(tmp_path):
    with pytest.raises(PixelDiTError, match="unknown preset 'xl9000'.*xl256"):
        load_preset("xl9000")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: PixelDiT-B/16\n  depth: 3\n")
    with pytest.raises(PixelDiTError, match="unknown config key model.depth"):
        load_preset(str(bad))


def test_presets_resolve_from_an_installed_wheel(tmp_path):
    """Build the wheel, install it into a bare directory, and resolve presets from outside the checkout."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "w"),
            str(root),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "w").glob("pixeldit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"pixeldit_cli/presets/{p}.yaml" for p in PRESETS} <= set(names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = "from pixeldit_cli.config import presets_dir, load_preset; print(presets_dir()); print(load_preset('xl256').model.name)"
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    where, name = r.stdout.split()
    assert where.startswith(str(tmp_path / "site")) and name == "PixelDiT-XL/16"
