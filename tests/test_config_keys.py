"""Every config key is read somewhere: a key that nothing reads is a knob that silently does nothing
(`smoke.yaml` once set `sample.batch_size: 40` to no effect)."""

import dataclasses
import re
from pathlib import Path

from pixeldit_cli.config import Config

PACKAGE = Path(__file__).resolve().parents[1] / "pixeldit_cli"
CONFIG_NAMES = r"(?:cfg|base|config)"  # what the code calls a Config


def section_aliases(source: str, section: str) -> set[str]:
    """Local names bound to a section: `tc = cfg.train`, `tc, sc = cfg.train, cfg.sample`."""
    names = set()
    for lhs, rhs in re.findall(r"^\s*([\w, ]+?) = ([\w., ]+)$", source, flags=re.M):
        for name, expr in zip((s.strip() for s in lhs.split(",")), (s.strip() for s in rhs.split(","))):
            if re.fullmatch(rf"{CONFIG_NAMES}\.{section}", expr):
                names.add(name)
    return names


def unread_keys(source: str) -> list[str]:
    unread = []
    for section in dataclasses.fields(Config):
        if not dataclasses.is_dataclass(section.type):
            continue
        readers = section_aliases(source, section.name)
        for f in dataclasses.fields(section.type):
            direct = rf"{CONFIG_NAMES}\.{section.name}\.{f.name}\b"
            via = [rf"\b{a}\.{f.name}\b" for a in readers] + [rf"getattr\({a}, [\"']{f.name}[\"']" for a in readers]
            if not any(re.search(p, source) for p in [direct, *via]):
                unread.append(f"{section.name}.{f.name}")
    return unread


def test_every_config_key_is_read_outside_the_config_module():
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "config.py")
    assert unread_keys(source) == []


def test_the_check_finds_a_key_nothing_reads():
    source = "tc = cfg.train\nlr = tc.lr\nsteps = cfg.sample.steps\nseed = tc.seed\n"
    missing = unread_keys(source)
    assert "train.lr" not in missing and "sample.steps" not in missing and "train.seed" not in missing
    assert "sample.seed" in missing  # `seed` is read, but only from the train section
