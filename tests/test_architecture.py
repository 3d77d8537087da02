"""The package's shape: no import cycle (in-function imports included), and one `pixeldit sample` resolves,
validates and sets up its processes once each — the front ends (CLI, pipeline, app, sweep) share one path."""

import ast
import json
import sys
from pathlib import Path

import pytest
from conftest import randomize
from safetensors.torch import save_file
from typer.testing import CliRunner

import pixeldit_cli.sampling as sampling_module
from pixeldit_cli import build_model
from pixeldit_cli.cli import app
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.settings import EditSettings, SolveSettings, resolve_edit, resolve_solve

PACKAGE = Path(__file__).resolve().parents[1] / "pixeldit_cli"


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions."""
    name_of = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        name_of[p] = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    modules = set(name_of.values())
    graph = {}
    for p, mod in name_of.items():
        package = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != mod}
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] (depth-first search, colouring nodes)."""
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == "open":
                return stack[stack.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = "done"
        stack.pop()
        return []

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return []


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) == []


def test_the_cycle_finder_finds_one_in_a_function_body(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    cycle = find_cycle(import_graph(pkg))
    assert cycle in (["pkg.a", "pkg.sub.b", "pkg.a"], ["pkg.sub.b", "pkg.a", "pkg.sub.b"])


def test_the_library_imports_no_study_and_cites_no_file_outside_the_repository():
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    assert [p.name for p, s in sources.items() if "studies" in s and "import" in s and "from studies" in s] == []
    assert [p.name for p, s in sources.items() if "DESIGN.md" in s or "docs/sampling.md" in s] == []


# ---- one path per command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    m = randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), 0)
    path = d / "tiny.safetensors"
    save_file(m.state_dict(), str(path), metadata={"pixeldit_config": json.dumps(m.config.to_dict())})
    return path


def count_calls(monkeypatch, owner, name, counts, key=None):
    real = getattr(owner, name)

    def counted(*a, **k):
        counts[key or name] = counts.get(key or name, 0) + 1
        return real(*a, **k)

    monkeypatch.setattr(owner, name, counted)


def test_sample_resolves_validates_and_sets_up_processes_once(tiny, tmp_path, monkeypatch):
    import pixeldit_cli.config as config_module
    import pixeldit_cli.dist as dist_module
    from pixeldit_cli.families import FAMILIES

    counts = {}
    # the config: wherever it is looked up
    count_calls(monkeypatch, sampling_module, "command_config", counts)
    count_calls(monkeypatch, config_module, "command_config", counts)
    count_calls(monkeypatch, sampling_module, "solve_values", counts)
    # the process group: the CLI's own lookup (inside the command) and the library's
    count_calls(monkeypatch, dist_module, "init_distributed", counts)
    count_calls(monkeypatch, sampling_module, "init_distributed", counts)
    count_calls(monkeypatch, sampling_module, "choose", counts)
    # validation: the job's own, the settings', the check against the network and its family
    count_calls(monkeypatch, sampling_module.SampleJob, "__post_init__", counts, "job validated")
    count_calls(monkeypatch, SolveSettings, "__post_init__", counts, "settings validated")
    count_calls(monkeypatch, sampling_module, "check_model", counts)
    count_calls(monkeypatch, type(FAMILIES["c2i"]), "check_request", counts)
    count_calls(monkeypatch, sampling_module, "load_model", counts)
    count_calls(monkeypatch, sys.modules["pixeldit_cli.models.loading"], "load_model", counts, "load_model")
    args = ["sample", "--ckpt", str(tiny), "--n", "2", "--steps", "2", "--height", "16", "--width", "16"]
    r = CliRunner().invoke(app, [*args, "--class", "3", "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    assert counts == {
        "command_config": 1,
        "solve_values": 1,
        "init_distributed": 1,
        "choose": 1,
        "job validated": 1,
        "settings validated": 1,
        "check_model": 1,
        "check_request": 1,
        "load_model": 1,
    }
    assert json.loads(r.output)["settings"]["steps"] == 2


def test_settings_validate_themselves_and_resolve_from_a_config():
    from pixeldit_cli.config import Config, load_preset

    with pytest.raises(PixelDiTError, match="--cfg-interval 0.9 0.1 is invalid"):
        SolveSettings(interval=(0.9, 0.1))
    with pytest.raises(PixelDiTError, match="unknown solver 'rk4'"):
        SolveSettings(solver="rk4")
    xl = load_preset("xl256")  # the release's settings: FlowDPM, 100 steps, CFG 2.75 on (0.1, 0.9)
    s = resolve_solve(xl, steps=50, cfg=None)
    assert (s.solver, s.steps, s.cfg, s.interval, s.shift) == ("flowdpm", 50, 2.75, (0.1, 0.9), 1.0)
    e = resolve_edit(Config())  # FlowEdit's schedule: 33 of 50 steps edited (strength 0.66)
    assert (e.steps, e.n_max, e.src_cfg, e.tgt_cfg) == (50, 33, 1.5, 4.0) and e.strength == pytest.approx(0.66)
    assert resolve_edit(Config(), strength=0.5, steps=10).n_max == 5
    assert resolve_edit(Config(), n_max=7, steps=10).strength == pytest.approx(0.7)
    with pytest.raises(PixelDiTError, match="--strength and --n-max both given"):
        resolve_edit(Config(), strength=0.5, n_max=3)
    with pytest.raises(PixelDiTError, match="need 0 <= --n-min <= --n-max <= --steps"):
        EditSettings(steps=10, n_max=11)
