"""Driving `pixeldit app` in headless Chromium (Debian's `chromium` through playwright): shared by the browser
test and scripts/app_screenshots.py, so the README's screenshots come from the very setup the tests use."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(ckpt, out, *extra, timeout: float = 90):
    """`pixeldit app` in a subprocess on a free localhost port; yields its URL, stops it after."""
    port = free_port()
    cmd = [sys.executable, "-m", "pixeldit_cli", "app", "--ckpt", str(ckpt), "--port", str(port), "--out", str(out),
           *map(str, extra)]  # fmt: skip
    log = open(Path(out).parent / f"app-{port}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"pixeldit app exited: {Path(log.name).read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError("pixeldit app did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def browser_page(url, width=1280, height=1100):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#gen-go", timeout=60000)
            yield page
        finally:
            browser.close()


def fill(page, elem_id: str, value) -> None:
    page.fill(f"#{elem_id} input, #{elem_id} textarea", str(value))


def choose(page, elem_id: str, text: str) -> None:
    """Pick an entry of a Gradio dropdown: open it, click the option of that label."""
    page.click(f"#{elem_id} input")
    page.click(f'#{elem_id} [role=option][aria-label="{text}"]')


def generate(page, n=4, steps=3, size=16, seed=0, cfg=None) -> list[str]:
    """Fill the Generate form, click, wait for the gallery; the images' URLs."""
    for elem, value in (("gen-n", n), ("gen-steps", steps), ("gen-size", size), ("gen-seed", seed)):
        fill(page, elem, value)
    if cfg is not None:
        fill(page, "gen-cfg", cfg)
    page.click("#gen-go")
    page.wait_for_function(f"document.querySelectorAll('#gen-gallery img').length >= {n}", timeout=120000)
    return page.eval_on_selector_all("#gen-gallery img", "els => els.map(e => e.src)")


def error_shown(page, message: str, timeout=60000) -> str:
    """Wait for an error toast (Gradio's gr.Error) that says `message`; its text. Toasts of earlier errors
    may still be on the page: only one with this message counts."""
    toast = page.locator(".toast-body", has_text=message).first
    toast.wait_for(state="visible", timeout=timeout)
    return toast.inner_text()


def paint(page, elem_id: str, start=(0.45, 0.5), end=(0.55, 0.5), steps: int = 10) -> None:
    """Draw one brush stroke on a Gradio ImageEditor, from and to fractions of its canvas."""
    page.click(f"#{elem_id} button[aria-label=Brush]")
    box = max((c.bounding_box() for c in page.query_selector_all(f"#{elem_id} canvas")),
              key=lambda b: b["width"] * b["height"])  # fmt: skip
    at = lambda f: (box["x"] + box["width"] * f[0], box["y"] + box["height"] * f[1])  # noqa: E731
    page.mouse.move(*at(start))
    page.mouse.down()
    for i in range(1, steps + 1):
        f = i / steps
        page.mouse.move(*at((start[0] + (end[0] - start[0]) * f, start[1] + (end[1] - start[1]) * f)), steps=2)
    page.mouse.up()
    page.wait_for_timeout(300)
