"""Model families: the condition and the time/velocity convention live in one object per family.

Checked here: the lookup; each family's convention against the networks called by hand (1000·σ and
ε − x for text-to-image, t and x − ε for class-conditional); that a new family plugs in without touching
the solvers (a third family whose network predicts −(x − ε) samples bit-identical images); and that no
module outside families/ branches on the family name.
"""

import ast
import re
from pathlib import Path

import pytest
import torch

from pixeldit_cli import build_model
from pixeldit_cli.families import FAMILIES, ClassConditional, TextToImage, family_of
from pixeldit_cli.models.config import ModelConfig
from pixeldit_cli.models.pixeldit import PixelDiT
from pixeldit_cli.solvers import Velocity, solve

PACKAGE = Path(__file__).resolve().parents[1] / "pixeldit_cli"


def test_lookup_by_kind_config_and_network(c2i, t2i):
    assert isinstance(family_of("c2i"), ClassConditional) and isinstance(family_of("t2i"), TextToImage)
    assert family_of(c2i) is FAMILIES["c2i"] and family_of(t2i.config) is FAMILIES["t2i"]
    with pytest.raises(ValueError, match="unknown model family 'unc'"):
        family_of("unc")
    with pytest.raises(ValueError, match="kind must be one of 'c2i', 't2i'"):
        ModelConfig(kind="unc")


def test_each_convention_matches_the_network_called_by_hand(c2i, t2i):
    """Velocity at t = 0.3: the class model is fed t and its output is the velocity; the T2I model is fed
    1000·(1 − t) and its output is negated. Bit for bit, without guidance and with it (CFG 2)."""
    g = torch.Generator().manual_seed(0)
    t = torch.tensor(0.3)
    x = torch.randn(2, 3, 16, 16, generator=g)
    y = torch.tensor([1, 4])
    with torch.no_grad():
        assert torch.equal(Velocity(c2i, y)(x, 0.3, t), c2i(x, t.expand(2), y))
        null = torch.full_like(y, 10)  # the null class id is num_classes
        u, c = c2i(x, t.expand(2), null), c2i(x, t.expand(2), y)
        v = Velocity(c2i, y, cfg=2.0)(x, 0.3, t)
        assert torch.allclose(v, u + 2.0 * (c - u), atol=1e-6)
        xt = torch.randn(2, 3, 32, 32, generator=g)
        emb = torch.randn(2, t2i.config.text_len, t2i.config.text_dim, generator=g)
        neg = torch.randn(1, t2i.config.text_len, t2i.config.text_dim, generator=g)
        fed = (1000.0 * (1.0 - t)).expand(2)
        assert torch.equal(Velocity(t2i, emb, neg)(xt, 0.3, t), -t2i(xt, fed, emb))
        with pytest.raises(ValueError, match="negative prompt"):
            Velocity(t2i, emb)  # no built-in null condition for text
    fam = family_of(t2i)
    assert fam.network_time(t, sigma=torch.tensor(0.7)).item() == pytest.approx(700.0)  # σ itself when known
    assert fam.autocast_time(torch.tensor(123.456), torch.bfloat16).item() == 123.5  # bf16 has 8 significant bits
    assert family_of(c2i).autocast_time(torch.tensor(0.123456), torch.bfloat16).item() == pytest.approx(0.123456)


class Negated(PixelDiT):
    """The class network, trained (say) to predict ε − x: same weights, output negated."""

    def forward(self, x, t, y, **kw):
        return -super().forward(x, t, y, **kw)


class EpsClassConditional(ClassConditional):
    """A third family in a dozen lines: class ids, network output ε − x."""

    kind = "c2i-eps"

    def network(self, config):
        return Negated(config)

    def velocity(self, out):
        return -out


@pytest.mark.parametrize("solver", ["euler", "heun", "flowdpm", "dpm++2m"])
def test_a_new_family_plugs_in_without_touching_the_solvers(c2i, monkeypatch, solver):
    monkeypatch.setitem(FAMILIES, "c2i-eps", EpsClassConditional())
    other = build_model(c2i.config.replace(kind="c2i-eps"), init=False)
    assert type(other) is Negated
    other.load_state_dict(c2i.state_dict())
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([2, 7])
    a, _ = solve(c2i, noise, y, solver=solver, steps=5, cfg=2.5, interval=(0.1, 0.9))
    b, _ = solve(other, noise, y, solver=solver, steps=5, cfg=2.5, interval=(0.1, 0.9))
    assert torch.equal(a, b)


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "families" not in p.parts)


def test_no_module_outside_families_branches_on_the_family():
    hits = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in _sources()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\bkind\s*[!=]=", line)
    ]
    assert hits == []


def test_functions_read_in_one_screen():
    """No function body over 60 lines unless its docstring says why ("long because")."""
    long = []
    for p in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.end_lineno - node.body[0].lineno + 1
                if body > 60 and "long because" not in (ast.get_docstring(node) or ""):
                    long.append(f"{p.relative_to(PACKAGE)}:{node.name} ({body} lines)")
    assert long == []
