"""Every config key is read somewhere: a key that nothing reads is a knob that silently does nothing
(`smoke.yaml` once set `sample.batch_size: 40` to no effect)."""

import dataclasses
import re
from pathlib import Path

from pixeldit_cli.config import Config

PACKAGE = Path(__file__).resolve().parents[1] / "pixeldit_cli"
CONFIG_NAMES = r"(?:cfg|base|config)"  # what the code calls a Config


def section_aliases(source: str, section: str, parents=CONFIG_NAMES) -> set[str]:
    """Local names bound to a section: `tc = cfg.train`, `tc, sc = cfg.train, cfg.sample` (and, for a nested
    section, to it through its parent's names: `lc = tc.lora`)."""
    names = set()
    for lhs, rhs in re.findall(r"^\s*([\w, ]+?) = ([\w., ]+)$", source, flags=re.M):
        for name, expr in zip((s.strip() for s in lhs.split(",")), (s.strip() for s in rhs.split(","))):
            if re.fullmatch(rf"{parents}\.{section}", expr):
                names.add(name)
    return names


def unread_keys(source: str, cls=Config, readers=(), prefix: str = "") -> list[str]:
    """The keys of `cls` (a Config or a section) that no code reads, through `readers` (names bound to it)."""
    unread = []
    for f in dataclasses.fields(cls):
        if cls is Config and not dataclasses.is_dataclass(f.type):
            continue
        if cls is Config or dataclasses.is_dataclass(f.type):  # a section: its own keys, through its names
            parents = "|".join([CONFIG_NAMES, *(re.escape(r) for r in readers)])
            names = section_aliases(source, f.name, f"(?:{parents})")
            names |= {f"{r}.{f.name}" for r in readers} | (
                {f"cfg.{f.name}", f"base.{f.name}", f"config.{f.name}"} if cls is Config else set()
            )
            unread += unread_keys(source, f.type, sorted(names), f"{prefix}{f.name}.")
            continue
        via = [rf"\b{re.escape(a)}\.{f.name}\b" for a in readers]
        via += [rf"getattr\({re.escape(a)}, [\"']{f.name}[\"']" for a in readers]
        if not any(re.search(p, source) for p in via):
            unread.append(f"{prefix}{f.name}")
    return unread


def test_every_config_key_is_read_outside_the_config_module():
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "config.py")
    assert unread_keys(source) == []


def test_the_check_finds_a_key_nothing_reads():
    source = "tc = cfg.train\nlr = tc.lr\nsteps = cfg.sample.steps\nseed = tc.seed\n"
    missing = unread_keys(source)
    assert "train.lr" not in missing and "sample.steps" not in missing and "train.seed" not in missing
    assert "sample.seed" in missing  # `seed` is read, but only from the train section
    # a nested section's keys, directly or through a name bound to it
    nested = "tc = cfg.train\nlc = tc.lora\nr = lc.rank\nt = cfg.train.lora.targets\n"
    missing = unread_keys(nested)
    assert "train.lora.rank" not in missing and "train.lora.targets" not in missing
    assert "train.lora.alpha" in missing and "train.lora.dropout" in missing
