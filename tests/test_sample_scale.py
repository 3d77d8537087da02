"""The sample job at scale: linear bookkeeping, --format, records that survive kills and full disks,
and process invariance of samples.npz (issue: paper-scale sampling)."""

import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import randomize
from safetensors.torch import save_file

from pixeldit_cli import build_model
from pixeldit_cli.errors import PixelDiTError
from pixeldit_cli.labels import labels_for
from pixeldit_cli.sampling import SampleJob, run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    m = randomize(build_model("PixelDiT-S/4", hidden_size=32, num_heads=2, patch_depth=2, num_classes=10), 0)
    path = d / "tiny.safetensors"
    save_file(m.state_dict(), str(path), metadata={"pixeldit_config": json.dumps(m.config.to_dict())})
    return path


def job(tiny, out, **kw):
    base = dict(
        ckpt=str(tiny),
        n=8,
        out=str(out),
        solver="euler",
        steps=2,
        cfg=2.0,
        interval=(0.0, 1.0),
        height=16,
        width=24,
        seed=3,
        batch_size=3,
    )
    base.update(kw)
    return SampleJob(**base)


def cli(tiny, out, *args, env=None, preexec=None, n=8, batch=3):
    cmd = [
        sys.executable,
        "-m",
        "pixeldit_cli",
        "sample",
        "--ckpt",
        str(tiny),
        "--n",
        str(n),
        "--out",
        str(out),
        "--solver",
        "euler",
        "--steps",
        "2",
        "--cfg",
        "2.0",
        "--cfg-interval",
        "0",
        "1",
        "--height",
        "16",
        "--width",
        "24",
        "--seed",
        "3",
        "--batch-size",
        str(batch),
        *args,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        preexec_fn=preexec,
    )


# ---- --format ---------------------------------------------------------------------------------------


def test_format_rule_is_visible_and_each_format_writes_what_it_says(tiny, tmp_path):
    assert SampleJob(ckpt="x", n=1000).resolved_format() == "both"
    assert SampleJob(ckpt="x", n=1001).resolved_format() == "npz"
    assert SampleJob(ckpt="x", n=5000, npz=True).resolved_format() == "npz"
    assert SampleJob(ckpt="x", n=10, format="png", npz=True).resolved_format() == "both"  # --npz keeps its meaning
    r = run(job(tiny, tmp_path / "npz", format="npz"), progress=False)
    names = sorted(p.name for p in (tmp_path / "npz").iterdir())
    assert names == ["grid.png", "results.json", "run.json", "samples.npz"] and r["format"] == "npz"
    run(job(tiny, tmp_path / "png", format="png"), progress=False)
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == [f"{i:06d}.png" for i in range(8)] + ["grid.png", "results.json", "run.json"]
    # the same images whichever format carried them
    from torchvision.io import read_image

    arr = np.load(tmp_path / "npz" / "samples.npz")["arr_0"]
    assert all(
        np.array_equal(arr[i], read_image(str(tmp_path / "png" / f"{i:06d}.png")).permute(1, 2, 0).numpy())
        for i in range(8)
    )


# ---- linear bookkeeping (counted, not timed) ---------------------------------------------------------


class Counter:
    def __init__(self, monkeypatch):
        self.listings, self.decodes = 0, 0
        import pathlib

        import torchvision.io as tvio

        import pixeldit_cli.io as pio

        def wrap(owner, name, field):
            orig = getattr(owner, name)

            def f(*a, **k):
                setattr(self, field, getattr(self, field) + 1)
                return orig(*a, **k)

            monkeypatch.setattr(owner, name, f)

        for owner, name in ((os, "scandir"), (os, "listdir"), (pathlib.Path, "glob"), (pathlib.Path, "iterdir")):
            wrap(owner, name, "listings")
        for owner, name in ((pio, "read_image"), (tvio, "decode_png"), (tvio, "decode_image"), (tvio, "read_image")):
            wrap(owner, name, "decodes")


@pytest.mark.parametrize("fmt", ["both", "npz"])
def test_assembly_file_system_work_does_not_grow_with_n(tiny, tmp_path, monkeypatch, fmt):
    counts = {}
    for n in (6, 30):
        c = Counter(monkeypatch)
        run(job(tiny, tmp_path / f"{fmt}{n}", n=n, batch_size=6, steps=1, format=fmt), progress=False)
        counts[n] = (c.listings, c.decodes)
        monkeypatch.undo()
    assert counts[6] == counts[30], counts  # listings are per run, not per index
    assert counts[30][1] == 0  # the npz and grid come from the records, no PNG is decoded


# ---- resume after a kill: byte-identical npz -----------------------------------------------------------


def test_npz_only_job_killed_mid_record_resumes_to_identical_npz(tiny, tmp_path):
    ref = cli(tiny, tmp_path / "ref", "--format", "npz")
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    p = cli(tiny, out, "--format", "npz", env={"PIXELDIT_TEST_KILL_AFTER_RECORDS": "4"})
    assert p.returncode == -signal.SIGKILL
    parts = list((out / "parts").glob("*.part"))
    assert len(parts) == 1 and not (out / "samples.npz").exists()
    p = cli(tiny, out, "--format", "npz", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((out / "results.json").read_text())
    assert r["resumed_from_disk"] == 4 and r["generated_this_run"] == 4 and r["records_dropped"] == 1  # the torn 5th
    assert (out / "samples.npz").read_bytes() == (tmp_path / "ref" / "samples.npz").read_bytes()
    assert not (out / "parts").exists()  # merged into samples.npz


def test_one_process_and_two_under_torchrun_give_the_same_npz(tiny, tmp_path):
    one = cli(tiny, tmp_path / "one", "--format", "npz", batch=1)
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pixeldit_cli",
        "--",
        "sample",
        "--ckpt",
        str(tiny),
        "--n",
        "8",
        "--out",
        str(tmp_path / "two"),
        "--solver",
        "euler",
        "--steps",
        "2",
        "--cfg",
        "2.0",
        "--cfg-interval",
        "0",
        "1",
        "--height",
        "16",
        "--width",
        "24",
        "--seed",
        "3",
        "--batch-size",
        "1",
        "--format",
        "npz",
    ]
    two = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert a["arr_1"].tolist() == labels_for(range(8), classes=None, mode="uniform", n=8, num_classes=10, seed=3)
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2


# ---- full disk: one line, nothing half-written counted as done ------------------------------------------


def _limit(nbytes):
    def f():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return f


def test_full_disk_mid_job_loses_nothing_and_the_rerun_is_identical(tiny, tmp_path):
    ref = cli(tiny, tmp_path / "ref", "--format", "both")
    assert ref.returncode == 0
    out = tmp_path / "full"
    record = 24 + 16 * 24 * 3
    p = cli(tiny, out, "--format", "both", preexec=_limit(32 + 4 * record))  # the part file fills in the 2nd batch
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "could not write" in p.stderr and "re-run the same command" in p.stderr
    assert not list(out.glob(".*.tmp"))
    assert all(f.stat().st_size > 0 for f in out.glob("*.png"))
    p = cli(tiny, out, "--format", "both")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (out / "samples.npz").read_bytes() == (tmp_path / "ref" / "samples.npz").read_bytes()
    for i in range(8):
        assert (out / f"{i:06d}.png").read_bytes() == (tmp_path / "ref" / f"{i:06d}.png").read_bytes()


def test_full_disk_never_leaves_an_empty_png_counted_as_done(tiny, tmp_path):
    out = tmp_path / "tiny-disk"
    p = cli(tiny, out, "--format", "png", preexec=_limit(300))  # no PNG fits
    assert p.returncode == 1 and "could not write" in p.stderr and "Traceback" not in p.stderr
    assert not list(out.glob("*.png")) and not list(out.glob(".*.tmp"))
    p = cli(tiny, out, "--format", "png")
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["generated_this_run"] == 8


def test_a_truncated_png_is_not_trusted_on_resume(tiny, tmp_path):
    out = tmp_path / "t"
    run(job(tiny, out, format="png"), progress=False)
    good = (out / "000004.png").read_bytes()
    (out / "000004.png").write_bytes(good[: len(good) // 2])  # torn
    (out / "000005.png").write_bytes(b"")  # zero bytes
    r = run(job(tiny, out, format="png"), progress=False)
    assert r["generated_this_run"] == 2 and (out / "000004.png").read_bytes() == good


# ---- bad input -----------------------------------------------------------------------------------------


def test_another_count_in_the_same_folder_is_refused_and_nothing_is_overwritten(tiny, tmp_path):
    out = tmp_path / "c"
    run(job(tiny, out), progress=False)
    before = (out / "samples.npz").read_bytes()
    with pytest.raises(PixelDiTError, match=r"holds samples up to index 7; this run asks for --n 4"):
        run(job(tiny, out, n=4), progress=False)
    assert (out / "samples.npz").read_bytes() == before
    r = run(job(tiny, out, n=10), progress=False)  # a larger n extends the same job
    assert r["generated_this_run"] == 2 and np.load(out / "samples.npz")["arr_0"].shape[0] == 10


def test_another_resolution_in_the_same_folder_is_refused(tiny, tmp_path):
    out = tmp_path / "res"
    run(job(tiny, out), progress=False)
    with pytest.raises(PixelDiTError, match=r"other settings \(height\)"):
        run(job(tiny, out, height=32), progress=False)
