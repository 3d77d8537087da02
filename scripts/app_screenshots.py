"""The README's screenshots of `pixeldit app`, taken with the browser test's own setup (tests/app_browser.py).

    .venv/bin/python scripts/app_screenshots.py CKPT [--out docs/images] [--image photo.png --src 7 --tgt 9]

Starts the app on a free port, fills each tab the way a user would, and saves app-generate.png,
app-edit.png, app-compare.png and app-model.png.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from app_browser import browser_page, choose, fill, generate, paint, running_app  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--image", help="an image to edit (default: none, the Edit tab is shown empty)")
    ap.add_argument("--src", default=None, help="the dropdown label of the source class, e.g. '7: Sneaker'")
    ap.add_argument("--tgt", default=None)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, running_app(a.ckpt, Path(tmp) / "app") as url, \
            browser_page(url) as page:  # fmt: skip
        generate(page, n=8, steps=a.steps, size=a.size, seed=0)
        page.screenshot(path=str(out / "app-generate.png"), full_page=True)
        page.click("#tab-edit-button")
        if a.image:
            page.set_input_files("#edit-image input[type=file]", a.image)
            page.wait_for_timeout(1000)
            paint(page, "edit-mask", (0.4, 0.45), (0.6, 0.45))  # a stroke: the drawn mask of the metrics
            if a.src:
                choose(page, "edit-src", a.src)
            if a.tgt:
                choose(page, "edit-tgt", a.tgt)
            page.click("#edit-go")
            page.wait_for_selector("#edit-strip img", timeout=300000)
        page.screenshot(path=str(out / "app-edit.png"), full_page=True)
        page.click("#tab-compare-button")
        fill(page, "cmp-cfg-a", 1)
        fill(page, "cmp-cfg-b", 3)
        page.click("#cmp-go")
        page.wait_for_selector("#cmp-b img", timeout=300000)
        page.screenshot(path=str(out / "app-compare.png"), full_page=True)
        page.click("#tab-model-button")
        page.screenshot(path=str(out / "app-model.png"), full_page=True)
    print(f"wrote {out}/app-{{generate,edit,compare,model}}.png")


if __name__ == "__main__":
    main()
