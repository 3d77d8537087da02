"""`pixeldit app` in a real browser: headless Chromium clicks Generate and the downloaded PNGs are byte for byte
the ones `pixeldit sample` writes at the same settings; Edit makes a strip from an uploaded image; bad values
show the CLI's one-line message in the page and no output. Plus the app's calls without a browser."""

import json
import sys

import numpy as np
import pytest
from app_browser import CHROMIUM, browser_page, choose, error_shown, fill, generate, paint, running_app
from PIL import Image
from typer.testing import CliRunner

from pixeldit_cli.cli import app
from pixeldit_cli.convert import convert
from pixeldit_cli.errors import PixelDiTError

gr = pytest.importorskip("gradio")
pytest.importorskip("playwright")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"
)
runner = CliRunner()


@pytest.fixture(scope="module")
def fixtures_dir(tmp_path_factory):
    from conftest import FIXTURES

    d = tmp_path_factory.mktemp("app")
    convert(FIXTURES / "official_c2i_small.ckpt", d / "tiny.safetensors")
    return d


@pytest.fixture(scope="module")
def page_and_out(fixtures_dir):
    out = fixtures_dir / "out"
    with running_app(fixtures_dir / "tiny.safetensors", out) as url, browser_page(url) as page:
        yield page, out


@needs_browser
def test_generate_in_the_browser_equals_pixeldit_sample(page_and_out, fixtures_dir, tmp_path):
    page, _ = page_and_out
    urls = generate(page, n=4, steps=3, size=16, seed=5)
    got = [page.request.get(u).body() for u in urls]
    command = page.inner_text("#gen-command")
    assert "pixeldit sample --ckpt" in command and "--seed 5" in command and "--steps 3" in command
    r = runner.invoke(app, ["sample", "--ckpt", str(fixtures_dir / "tiny.safetensors"), "--class", "0", "--n", "4",
                            "--seed", "5", "--steps", "3", "--height", "16", "--width", "16", "--out",
                            str(tmp_path / "cli")])  # fmt: skip
    assert r.exit_code == 0, r.output
    want = [(tmp_path / "cli" / f"{i:06d}.png").read_bytes() for i in range(4)]
    assert got == want
    assert len(set(want)) == 4  # four different images


@needs_browser
@pytest.mark.parametrize("field,value,message", [
    ("gen-steps", 0, "--steps must be at least 1, got 0"),
    ("gen-cfg", "", "--cfg None is not a number"),
    ("gen-size", 15, "is not a multiple of the patch size 2"),
])  # fmt: skip
def test_bad_values_show_the_clis_line_and_no_output(page_and_out, field, value, message):
    page, out = page_and_out
    before = sorted(p.name for p in out.rglob("*.png"))
    fill(page, "gen-n", 2)
    fill(page, "gen-size", 16)
    fill(page, "gen-steps", 2)
    fill(page, field, value)
    page.click("#gen-go")
    assert message in error_shown(page, message)
    page.wait_for_timeout(500)  # a job that wrongly started would have written its first files by now
    assert sorted(p.name for p in out.rglob("*.png")) == before
    fill(page, "gen-steps", 3)
    fill(page, "gen-cfg", 2.75)
    fill(page, "gen-size", 16)


@needs_browser
def test_the_page_shows_the_step_count_and_eta(page_and_out):
    """A long job shows Gradio's bar with our text ("sampling: step i/N, ETA s") while it runs."""
    page, _ = page_and_out
    for elem, value in (("gen-n", 8), ("gen-steps", 1500), ("gen-size", 16)):
        fill(page, elem, value)
    page.click("#gen-go")
    bar = page.get_by_text("sampling: step", exact=False).first
    bar.wait_for(timeout=60000)
    assert "/1500, ETA " in bar.inner_text()
    page.wait_for_function("document.querySelectorAll('#gen-gallery img').length >= 8", timeout=180000)
    fill(page, "gen-steps", 3)


@needs_browser
def test_edit_in_the_browser_makes_a_strip(page_and_out, tmp_path):
    page, out = page_and_out
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    page.click("#tab-edit-button")
    page.set_input_files("#edit-image input[type=file]", str(tmp_path / "in.png"))
    choose(page, "edit-src", "1: 1")
    choose(page, "edit-tgt", "3: 3")
    fill(page, "edit-steps", 4)
    page.click("#edit-go")
    page.wait_for_selector("#edit-strip img", timeout=120000)
    folder = sorted(p.parent for p in out.rglob("strip.png"))[-1]
    assert folder.parent.name != "local"  # the browser session's own folder (Gradio's session hash)
    res = json.loads((folder / "results.json").read_text())
    assert res["source"]["class"] == 1 and res["target"]["class"] == 3 and res["steps"] == 4
    assert Image.open(folder / res["outputs"][0]).size == (16, 16)
    strip = Image.open(folder / "strip.png")
    assert strip.size[0] >= 2 * strip.size[1]  # source | edit, side by side
    assert "pixeldit edit" in page.inner_text("#edit-command") and res["region"] is None
    # a stroke painted over the image: the edit's mask (the CLI's --mask file), background metrics outside it
    paint(page, "edit-mask")
    page.click("#edit-go")
    page.wait_for_function("document.querySelector('#edit-command').innerText.includes('--mask')", timeout=120000)
    folder = sorted(p.parent for p in out.rglob("strip.png"))[-1]
    res = json.loads((folder / "results.json").read_text())
    mask = np.asarray(Image.open(res["region"]["mask"]))
    assert mask.shape == (16, 16) and 0 < (mask > 0).sum() < 16 * 16
    assert res["background"][0]["background_fraction"] == pytest.approx(1 - (mask > 0).mean())
    # a 1×1 upload is the CLI's line, no new edit folder
    folders = sorted(p.parent for p in out.rglob("strip.png"))
    page.set_input_files("#edit-image input[type=file]", str(tmp_path / "dot.png"))
    page.click("#edit-go")
    assert "smaller than one 2x2 patch" in error_shown(page, "smaller than one 2x2 patch")
    assert sorted(p.parent for p in out.rglob("strip.png")) == folders
    page.click("#tab-generate-button")


def test_buttons_get_gradios_request_and_progress_bar():
    """Gradio's own injection (helpers.special_args) fills the handler's request and progress slots: the
    session folder is the browser session's, and on_step drives the bar with the step count and the ETA."""
    import types

    from gradio.helpers import special_args

    from pixeldit_cli.app import handler

    seen = {}

    def fn(session, a, b, on_step=None):
        seen.update(session=session, a=a, b=b)
        on_step(1, 4)
        on_step(4, 4)
        return "ok"

    call = handler(fn, 2, "sampling")
    inputs, progress_index, *_ = special_args(call, ["A", "B"], request=types.SimpleNamespace(session_hash="s3ss"))
    assert progress_index == 3 and isinstance(inputs[3], gr.Progress) and inputs[2].session_hash == "s3ss"
    ticks = []
    inputs[3] = lambda p, desc=None, unit=None: ticks.append((p, desc, unit))  # the tracker Gradio swaps in
    assert call(*inputs) == "ok" and seen == {"session": "s3ss", "a": "A", "b": "B"}
    assert ticks[0][0] == (1, 4) and ticks[0][1].startswith("sampling: step 1/4, ETA ") and ticks[-1][0] == (4, 4)

    def bad(session, a, b):
        raise PixelDiTError("--steps must be at least 1, got 0")

    with pytest.raises(gr.Error, match="--steps must be at least 1, got 0"):
        handler(bad, 2)("A", "B", None, None)


def test_the_calls_behind_the_buttons(fixtures_dir, tmp_path):
    from pixeldit_cli import load_model
    from pixeldit_cli.app import Session, generate, model_card

    s = Session(load_model(fixtures_dir / "tiny.safetensors"), fixtures_dir / "tiny.safetensors", tmp_path)
    r = generate(s, "abc", ["2: 2"], "", "", 2, 1, "euler", 2, 1.0, 0.0, 1.0, 1.0, 8, 1, "fp32")
    assert [p.split("/")[-1] for p in r["images"]] == ["000000.png", "000001.png"]
    assert json.loads(open(r["results"]).read())["settings"]["classes"] == [2]
    assert "--class 2" in r["command"] and "--solver euler" in r["command"]
    card = model_card(s, 16)
    assert card["parameters"] == sum(p.numel() for p in s.model.parameters()) and card["gflops_per_forward"] > 0
    with pytest.raises(PixelDiTError, match="--n must be between 1 and 64"):
        generate(s, "abc", ["2: 2"], "", "", 65, 1, "euler", 2, 1.0, 0.0, 1.0, 1.0, 8, 1, "fp32")


def test_without_gradio_the_app_is_one_line(fixtures_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    r = runner.invoke(app, ["app", "--ckpt", str(fixtures_dir / "tiny.safetensors")])
    assert r.exit_code == 1 and "pip install 'pixeldit[app]'" in r.output and "Traceback" not in r.output


def test_progress_counts_every_solver_step_and_edit_step(fixtures_dir, tmp_path):
    """The page's bar is fed on_step(done, total): one call per velocity evaluation, counting up to the job's
    batches × steps (sampling) or seeds × edited steps (FlowEdit), and the images do not change."""
    from pixeldit_cli import load_model
    from pixeldit_cli.app import Session, edit, generate

    s = Session(load_model(fixtures_dir / "tiny.safetensors"), fixtures_dir / "tiny.safetensors", tmp_path)
    for solver in ("euler", "heun", "flowdpm", "dpm++2m"):
        calls = []
        # 3 images in batches of the preset's size: one batch; CFG 2 on [0, 1]: every step guided
        r = generate(s, "p", ["1: 1"], "", "", 3, 0, solver, 5, 2.0, 0.0, 1.0, 1.0, 8, 1, "fp32",
                     on_step=lambda d, t: calls.append((d, t)))  # fmt: skip
        assert calls == [(i, 5) for i in range(1, 6)], solver
        plain = generate(s, "p", ["1: 1"], "", "", 3, 0, solver, 5, 2.0, 0.0, 1.0, 1.0, 8, 1, "fp32")
        assert [open(a, "rb").read() for a in r["images"]] == [open(b, "rb").read() for b in plain["images"]]
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(img)
    calls = []
    # 10 steps at strength 0.5 edit the last 5 of them; two seeds: 10 steps counted
    edit(s, "p", str(img), "1: 1", "3: 3", 0.5, 1.0, 3.0, 10, 0, 2, "", "", None,
         on_step=lambda d, t: calls.append((d, t)))  # fmt: skip
    assert calls == [(i, 10) for i in range(1, 11)]


def test_a_drawn_mask_is_the_clis_mask(fixtures_dir, tmp_path):
    """Strokes painted in the Edit tab (Gradio's RGBA layer) become a --mask file; the background metrics
    equal `pixeldit edit --mask` with that file, and the command shown says --mask."""
    from pixeldit_cli import load_model
    from pixeldit_cli.app import Session, edit

    s = Session(load_model(fixtures_dir / "tiny.safetensors"), fixtures_dir / "tiny.safetensors", tmp_path / "app")
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(img)
    layer = np.zeros((12, 16, 4), np.uint8)
    layer[2:7, 3:11] = (255, 0, 255, 255)  # a painted rectangle: 5 rows × 8 columns
    drawn = {"background": None, "layers": [layer], "composite": None}
    r = edit(s, "m", str(img), "1: 1", "3: 3", 0.5, 1.0, 3.0, 6, 0, 1, "", "", drawn)
    mask_file = r["command"].split("--mask ")[1].split()[0]
    m = np.asarray(Image.open(mask_file))
    assert m.shape == (12, 16) and (m[2:7, 3:11] == 255).all() and (m > 0).sum() == 40
    res = json.loads(open(r["results"]).read())
    assert res["region"] == {"mask": mask_file}
    cli = runner.invoke(app, ["edit", str(img), "--ckpt", str(fixtures_dir / "tiny.safetensors"), "--src", "1",
                              "--tgt", "3", "--strength", "0.5", "--src-cfg", "1", "--tgt-cfg", "3", "--steps", "6",
                              "--mask", mask_file, "--out", str(tmp_path / "cli")])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    want = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert res["background"] == want["background"] and res["background"] is not None
    assert res["to_source"] == want["to_source"]
    # nothing painted: no mask, the whole image is the region; a mask of another size: one line
    r2 = edit(s, "m", str(img), "1: 1", "3: 3", 0.5, 1.0, 3.0, 6, 0, 1, "", "", {"layers": [layer * 0]})
    assert json.loads(open(r2["results"]).read())["region"] is None
    with pytest.raises(PixelDiTError, match="the drawn mask is 8x4 but the image is 16x12"):
        edit(s, "m", str(img), "1: 1", "3: 3", 0.5, 1.0, 3.0, 6, 0, 1, "", "", {"layers": [layer[:4, :8]]})
    with pytest.raises(PixelDiTError, match="both a drawn mask and a box"):
        edit(s, "m", str(img), "1: 1", "3: 3", 0.5, 1.0, 3.0, 6, 0, 1, "0 0 4 4", "", drawn)
