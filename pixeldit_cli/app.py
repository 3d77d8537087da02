"""`pixeldit app`: a local Gradio page over the same library calls as the CLI — generate, edit, compare, inspect.

Nothing here samples or edits by itself: Generate and Compare build a SampleJob with `sampling.job_for` and
run it with `sampling.run` (so the images are the CLI's, byte for byte), Edit resolves EditSettings with
`settings.resolve_edit` and calls `edit.run_edit`, Model reads `flops.analytic_flops` and the checkpoint's
config. Every check is the CLI's own: a PixelDiTError becomes the same one line in the page.

Behaviour: binds to 127.0.0.1 unless --host says otherwise (and then warns); Gradio's analytics are off and
no share link is made; one job at a time on the model (Gradio's queue, which shows the position); uploads
are size-limited; outputs go to a per-session folder under --out, written by the library's atomic writers.
"""

import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import torch  # noqa: E402

from .config import command_config  # noqa: E402
from .errors import PixelDiTError  # noqa: E402
from .families import family_of  # noqa: E402
from .flops import analytic_flops  # noqa: E402
from .io import write_png  # noqa: E402
from .labels import class_names_of  # noqa: E402
from .models.registry import count_params  # noqa: E402
from .sampling import job_for, png_name, run  # noqa: E402
from .settings import resolve_edit  # noqa: E402
from .solvers import SOLVERS  # noqa: E402

MAX_UPLOAD = "20mb"
MAX_IMAGES = 64  # per Generate click: a page, not a 50K job


#################################################################################
#                 The calls behind the buttons (plain functions, tested)        #
#################################################################################


class Session:
    """One app: the loaded network and the folder each browser session writes into."""

    def __init__(self, model, ckpt, out, text_encoder="", device="auto"):
        self.model, self.ckpt, self.out = model, str(ckpt), Path(out)
        self.text_encoder, self.device = str(text_encoder or ""), device
        self.counter = 0
        self.config, self.defaults_from = command_config(None, None, model)

    def folder(self, session: str, kind: str) -> Path:
        self.counter += 1
        safe = "".join(c for c in (session or "local") if c.isalnum())[:32] or "local"
        return self.out / safe / f"{kind}-{self.counter:04d}"

    @property
    def t2i(self) -> bool:
        return family_of(self.model.config).prompted

    def class_choices(self) -> list[str]:
        names = class_names_of(self.model) or [str(i) for i in range(self.model.config.num_classes)]
        return [f"{i}: {n}" for i, n in enumerate(names)]


def _class_ids(values) -> list[str]:
    """Dropdown entries '207: golden retriever' -> '207' (what --class takes)."""
    return [str(v).split(":", 1)[0].strip() for v in (values or [])]


def generate(s: Session, session_id: str, classes, prompt, negative, n, seed, solver, steps, cfg, lo, hi, shift,
             size, reuse, precision, on_step=None) -> dict:  # fmt: skip
    """Sample with the CLI's job; returns the PNG paths, the grid, results.json and the equivalent command.
    `on_step(done, total)` follows the solver steps (the page's progress bar)."""
    n, seed, steps, reuse, size = (_int(v, name) for v, name in ((n, "--n"), (seed, "--seed"), (steps, "--steps"),
                                                                 (reuse, "--semantic-reuse"), (size, "--height")))  # fmt: skip
    if not 1 <= n <= MAX_IMAGES:
        raise PixelDiTError(f"--n must be between 1 and {MAX_IMAGES} in the app, got {n}", "use the CLI for more")
    ids = [] if s.t2i else _class_ids(classes)
    prompts = [p.strip() for p in (prompt or "").splitlines() if p.strip()] if s.t2i else []
    out = s.folder(session_id, "generate")
    given = dict(n=n, seed=seed, solver=solver, steps=steps, cfg=_float(cfg, "--cfg"), shift=_float(shift, "--shift"),
                 interval=(_float(lo, "--cfg-interval"), _float(hi, "--cfg-interval")), height=size, width=size,
                 semantic_reuse=reuse, precision=precision, format="png", device=s.device,
                 negative_prompt=negative if s.t2i else None,
                 text_encoder=s.text_encoder if s.t2i else None)  # fmt: skip
    job, defaults_from, config = job_for(s.model, s.ckpt, classes=ids, prompts=prompts, out=str(out), **given)
    t0 = time.perf_counter()
    result = run(job, model=s.model, progress=False, provenance={"defaults_from": defaults_from,
                                                                "config": config.to_dict()}, on_step=on_step)  # fmt: skip
    texts = [prompts[i % len(prompts)] if prompts else None for i in range(n)]
    return {
        "images": [str(out / png_name(i, texts[i])) for i in range(n)],
        "grid": str(out / "grid.png"),
        "results": str(out / "results.json"),
        "command": sample_command(s, job),
        "seconds": round(time.perf_counter() - t0, 2),
        "result": result,
    }


def sample_command(s: Session, job) -> str:
    """The `pixeldit sample` line that makes the same images."""
    args = ["pixeldit", "sample", "--ckpt", s.ckpt]
    for c in job.classes:
        args += ["--class", str(c)]
    for p in dict.fromkeys(job.prompts):
        args += ["--prompt", p]
    if job.prompts:
        args += ["--text-encoder", job.text_encoder] + (
            ["--negative-prompt", job.negative_prompt] if job.negative_prompt else []
        )
    lo, hi = job.interval
    args += ["--n", str(job.n), "--seed", str(job.seed), "--solver", job.solver, "--steps", str(job.steps),
             "--cfg", f"{job.cfg:g}", "--cfg-interval", f"{lo:g}", f"{hi:g}", "--shift", f"{job.shift:g}",
             "--height", str(job.height), "--width", str(job.width), "--precision", job.precision]  # fmt: skip
    if job.semantic_reuse != 1:
        args += ["--semantic-reuse", str(job.semantic_reuse)]
    return shlex.join(args + ["--out", "OUT"])


def edit(s: Session, session_id: str, image, src, tgt, strength, src_cfg, tgt_cfg, steps, seed, num_seeds, bbox,
         negative, drawn=None, on_step=None) -> dict:  # fmt: skip
    """FlowEdit with the CLI's settings resolver and job; returns the strip, the edits, metrics and the command.
    `drawn`: the mask editor's value (painted strokes = the edited region, as --mask); else the box text."""
    from .edit import run_edit  # noqa: PLC0415 (scipy-free, but only the Edit tab needs it)

    if not image:
        raise PixelDiTError("no image uploaded", "upload a PNG or JPEG first")
    box = _bbox(bbox)
    mask = _drawn_mask(drawn, image, lambda: s.folder(session_id, "mask").with_suffix(".png"))
    if mask is not None and box is not None:
        raise PixelDiTError("both a drawn mask and a box were given", "clear one of them")
    settings = resolve_edit(s.config, strength=_float(strength, "--strength"), src_cfg=_float(src_cfg, "--src-cfg"),
                            tgt_cfg=_float(tgt_cfg, "--tgt-cfg"), steps=_int(steps, "--steps"),
                            seed=_int(seed, "--seed"), num_seeds=_int(num_seeds, "--num-seeds"))  # fmt: skip
    src = src if s.t2i else _class_ids([src])[0] if src else ""
    tgt = tgt if s.t2i else _class_ids([tgt])[0] if tgt else ""
    if not src or not tgt:
        raise PixelDiTError("give a source and a target", "pick both classes (or type both prompts)")
    out = s.folder(session_id, "edit")
    r = run_edit(image, s.ckpt, src, tgt, out, settings, bbox=box, mask=mask, model=s.model, device=s.device,
                 text_encoder=s.text_encoder or None, negative_prompt=negative or "", on_step=on_step)  # fmt: skip
    args = ["pixeldit", "edit", str(image), "--ckpt", s.ckpt, "--src", src, "--tgt", tgt,
            "--strength", f"{settings.strength:g}", "--src-cfg", f"{settings.src_cfg:g}",
            "--tgt-cfg", f"{settings.tgt_cfg:g}", "--steps", str(settings.steps), "--seed", str(settings.seed),
            "--num-seeds", str(settings.num_seeds)]  # fmt: skip
    if box is not None:
        args += ["--bbox", *map(str, box)]
    if mask is not None:
        args += ["--mask", str(mask)]
    return {"strip": str(out / "strip.png"), "edits": [str(out / name) for name in r["outputs"]],
            "metrics": {"to_source": r["to_source"], "background": r["background"]},
            "results": str(out / "results.json"), "command": shlex.join(args + ["--out", "OUT"])}  # fmt: skip


def model_card(s: Session, size: int) -> dict:
    cfg = s.model.config
    size = _int(size, "--height")
    if size % cfg.patch_size:
        raise PixelDiTError(f"{size} is not a multiple of the patch size {cfg.patch_size}")
    f = analytic_flops(cfg, size, size)
    return {"checkpoint": s.ckpt, "config": cfg.to_dict(), "parameters": count_params(s.model),
            "gflops_per_forward": round(f["total"] / 1e9, 3), "resolution": size,
            "defaults_from": s.defaults_from, "sampling_defaults": asdict(s.config.sample)}  # fmt: skip


def _int(v, name) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise PixelDiTError(f"{name} {v!r} is not a number") from None
    if f != f or f != int(f):
        raise PixelDiTError(f"{name} must be a whole number, got {v!r}")
    return int(f)


def _float(v, name) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise PixelDiTError(f"{name} {v!r} is not a number") from None
    return f  # finiteness and range: the settings' own checks say it, as on the command line


def _drawn_mask(drawn, image, where):
    """The mask editor's strokes as a --mask file at `where()` (white = edit, the uploaded image's size); None
    if nothing was painted. Gradio hands over {"background", "layers", "composite"} with RGBA layers."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    layers = [np.asarray(a) for a in ((drawn or {}).get("layers") or []) if a is not None]
    painted = [a[..., 3] > 0 if a.ndim == 3 and a.shape[2] == 4 else a.reshape(a.shape[:2] + (-1,)).max(-1) > 0
               for a in layers]  # fmt: skip
    if not painted or not any(p.any() for p in painted):
        return None
    region = np.logical_or.reduce(painted)
    with Image.open(image) as im:
        size = im.size
    if region.shape[::-1] != size:
        raise PixelDiTError(f"the drawn mask is {region.shape[1]}x{region.shape[0]} but the image is {size[0]}x{size[1]}",
                            "upload the image again and redraw the mask")  # fmt: skip
    path = where()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(torch.from_numpy(region.astype(np.uint8) * 255)[None], path)  # the library's atomic write
    return path


def _bar(progress, what: str):
    """on_step(done, total) -> Gradio's progress bar, with the step count and the ETA from the rate so far."""
    t0 = time.perf_counter()

    def on_step(done, total):
        eta = (time.perf_counter() - t0) / done * (total - done)
        progress((done, total), desc=f"{what}: step {done}/{total}, ETA {eta:.0f} s", unit="steps")

    return on_step


def _bbox(text):
    if not text or not str(text).strip():
        return None
    parts = str(text).replace(",", " ").split()
    if len(parts) != 4:
        raise PixelDiTError(f"box {text!r} is not X0 Y0 X1 Y1", "give four pixel coordinates, e.g. 4 4 28 28")
    return tuple(_int(p, "--bbox") for p in parts)


#################################################################################
#                                 The page                                      #
#################################################################################


def handler(fn, n_inputs: int, what: str | None = None):
    """A button's callback: `fn(session_id, *inputs[, on_step])` with CLI errors as the page's one line and
    (`what` given) Gradio's progress bar fed by on_step. Gradio injects the request and the progress tracker
    only into positional parameters it can see, so the callback's signature names the n inputs, then those
    two — a bare *args would get neither (and every browser would share one session folder)."""
    import inspect  # noqa: PLC0415

    import gradio as gr  # noqa: PLC0415 (optional extra: pixeldit[app])

    def call(*args):
        *inputs, request, progress = args
        session = getattr(request, "session_hash", None) or "local"
        try:
            if what is None:
                return fn(session, *inputs)
            return fn(session, *inputs, on_step=_bar(progress, what))
        except PixelDiTError as e:
            raise gr.Error(str(e), print_exception=False) from None

    P = inspect.Parameter
    params = [P(f"input{i}", P.POSITIONAL_OR_KEYWORD) for i in range(n_inputs)]
    params += [P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request),
               P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress())]  # fmt: skip
    call.__signature__ = inspect.Signature(params)
    call.__annotations__ = {"request": gr.Request}
    return call


def build(s: Session):
    """The Gradio Blocks of the app (the browser test drives these by their element ids; long because it is
    the page's layout: one component per line, tab by tab, in the order the page shows them)."""
    import gradio as gr  # noqa: PLC0415 (optional extra: pixeldit[app])

    sc, cfg = s.config.sample, s.model.config
    res = sc.height or s.config.data.resolution
    with gr.Blocks(title="pixeldit", analytics_enabled=False) as demo:
        gr.Markdown(f"## pixeldit — {Path(s.ckpt).name} ({'text-to-image' if s.t2i else 'class-conditional'})")
        with gr.Tab("Generate", elem_id="tab-generate"):
            with gr.Row():
                with gr.Column():
                    if s.t2i:
                        classes = gr.State([])
                        prompt = gr.Textbox(label="Prompts (one per line)", elem_id="gen-prompt")
                        negative = gr.Textbox(label="Negative prompt", elem_id="gen-negative")
                    else:
                        classes = gr.Dropdown(s.class_choices(), value=[s.class_choices()[0]], multiselect=True,
                                              filterable=True, label="Classes (type to search)", elem_id="gen-classes")  # fmt: skip
                        prompt, negative = gr.State(""), gr.State("")
                    n = gr.Number(8, label="Images", precision=0, elem_id="gen-n")
                    seed = gr.Number(sc.seed, label="Seed (image i uses seed + i)", precision=0, elem_id="gen-seed")
                    solver = gr.Dropdown(list(SOLVERS), value=sc.solver, label="Solver", elem_id="gen-solver")
                    steps = gr.Number(sc.steps, label="Steps", elem_id="gen-steps")
                    guidance = gr.Number(sc.cfg, label="CFG", elem_id="gen-cfg")
                    with gr.Row():
                        lo = gr.Number(sc.interval[0], label="Guidance from t =", elem_id="gen-lo")
                        hi = gr.Number(sc.interval[1], label="to t =", elem_id="gen-hi")
                    shift = gr.Number(sc.shift, label="Time shift", elem_id="gen-shift")
                    size = gr.Number(res, label=f"Resolution (a multiple of {cfg.patch_size})", elem_id="gen-size")
                    reuse = gr.Number(1, label="Semantic reuse K", precision=0, elem_id="gen-reuse")
                    precision = gr.Dropdown(["auto", "fp32", "bf16"], value="auto", label="Precision",
                                            elem_id="gen-precision")  # fmt: skip
                    go = gr.Button("Generate", variant="primary", elem_id="gen-go")
                with gr.Column():
                    gallery = gr.Gallery(label="Images", columns=4, elem_id="gen-gallery", format="png")
                    grid = gr.Image(label="Grid", type="filepath", elem_id="gen-grid", format="png")
                    files = gr.File(label="Downloads (PNGs + results.json)", file_count="multiple", elem_id="gen-files")
                    command = gr.Code(label="Same settings as CLI", language="shell", elem_id="gen-command")

            def on_generate(session, *args, on_step=None):
                r = generate(s, session, *args, on_step=on_step)
                return r["images"], r["grid"], [*r["images"], r["results"]], r["command"]

            gen_in = [classes, prompt, negative, n, seed, solver, steps, guidance, lo, hi, shift, size, reuse,
                      precision]  # fmt: skip
            go.click(handler(on_generate, len(gen_in), "sampling"), gen_in, [gallery, grid, files, command])

        with gr.Tab("Edit", elem_id="tab-edit"):
            ec = s.config.edit
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Image", type="filepath", elem_id="edit-image", sources=["upload"])
                    if s.t2i:
                        src = gr.Textbox(label="Source prompt", elem_id="edit-src")
                        tgt = gr.Textbox(label="Target prompt", elem_id="edit-tgt")
                    else:
                        src = gr.Dropdown(s.class_choices(), label="Source class", filterable=True, elem_id="edit-src")
                        tgt = gr.Dropdown(s.class_choices(), label="Target class", filterable=True, elem_id="edit-tgt")
                    strength = gr.Number(ec.strength, label="Strength (noise level edits start at)",
                                         elem_id="edit-strength")  # fmt: skip
                    src_cfg = gr.Number(ec.src_cfg, label="Source CFG", elem_id="edit-src-cfg")
                    tgt_cfg = gr.Number(ec.tgt_cfg, label="Target CFG", elem_id="edit-tgt-cfg")
                    e_steps = gr.Number(ec.steps, label="Steps", elem_id="edit-steps")
                    e_seed = gr.Number(0, label="Seed", precision=0, elem_id="edit-seed")
                    seeds = gr.Number(1, label="Seeds", precision=0, elem_id="edit-seeds")
                    drawn = gr.ImageEditor(label="Mask: paint the region to edit (background metrics outside it)",
                                           type="numpy", sources=(), layers=False, transforms=(),
                                           brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=2),
                                           elem_id="edit-mask")  # fmt: skip
                    bbox = gr.Textbox(label="…or a box X0 Y0 X1 Y1", elem_id="edit-bbox")
                    e_negative = gr.Textbox(label="Negative prompt", visible=s.t2i, elem_id="edit-negative")
                    e_go = gr.Button("Edit", variant="primary", elem_id="edit-go")
                with gr.Column():
                    strip = gr.Image(label="Source | edits", type="filepath", elem_id="edit-strip", format="png")
                    metrics = gr.JSON(label="MSE / SSIM to the source (and outside the box)", elem_id="edit-metrics")
                    e_files = gr.File(label="Downloads", file_count="multiple", elem_id="edit-files")
                    e_command = gr.Code(label="Same settings as CLI", language="shell", elem_id="edit-command")

            def on_edit(session, *args, on_step=None):
                r = edit(s, session, *args, on_step=on_step)
                return r["strip"], r["metrics"], [*r["edits"], r["results"]], r["command"]

            # the mask is painted over the uploaded image itself
            image.change(lambda p: {"background": p, "layers": [], "composite": p} if p else None, [image], [drawn])
            edit_in = [image, src, tgt, strength, src_cfg, tgt_cfg, e_steps, e_seed, seeds, bbox, e_negative, drawn]
            e_go.click(handler(on_edit, len(edit_in), "editing"), edit_in, [strip, metrics, e_files, e_command])

        with gr.Tab("Compare", elem_id="tab-compare"):
            gr.Markdown("The same seeds under two settings, side by side, with the time each took.")
            with gr.Row():
                cmp_cfg_a = gr.Number(sc.cfg, label="A: CFG", elem_id="cmp-cfg-a")
                cmp_reuse_a = gr.Number(1, label="A: semantic reuse K", precision=0, elem_id="cmp-reuse-a")
                cmp_cfg_b = gr.Number(max(1.0, sc.cfg * 2), label="B: CFG", elem_id="cmp-cfg-b")
                cmp_reuse_b = gr.Number(1, label="B: semantic reuse K", precision=0, elem_id="cmp-reuse-b")
            cmp_go = gr.Button("Compare", variant="primary", elem_id="cmp-go")
            with gr.Row():
                grid_a = gr.Image(label="A", type="filepath", elem_id="cmp-a", format="png")
                grid_b = gr.Image(label="B", type="filepath", elem_id="cmp-b", format="png")
            cmp_info = gr.Markdown(elem_id="cmp-info")

            def on_compare(session, classes, prompt, negative, n, seed, solver, steps, lo, hi, shift, size, precision,
                           cfg_a, reuse_a, cfg_b, reuse_b, on_step=None):  # fmt: skip
                common = (classes, prompt, negative, n, seed, solver, steps)
                tail = (lo, hi, shift, size)
                half = lambda k: None if on_step is None else (lambda d, t: on_step(k * t + d, 2 * t))  # noqa: E731
                a = generate(s, session, *common, cfg_a, *tail, reuse_a, precision, on_step=half(0))
                b = generate(s, session, *common, cfg_b, *tail, reuse_b, precision, on_step=half(1))
                info = (f"A: CFG {_float(cfg_a, '--cfg'):g}, K = {_int(reuse_a, 'K')} — {a['seconds']} s  \n"
                        f"B: CFG {_float(cfg_b, '--cfg'):g}, K = {_int(reuse_b, 'K')} — {b['seconds']} s")  # fmt: skip
                return a["grid"], b["grid"], info

            cmp_in = [classes, prompt, negative, n, seed, solver, steps, lo, hi, shift, size, precision,
                      cmp_cfg_a, cmp_reuse_a, cmp_cfg_b, cmp_reuse_b]  # fmt: skip
            cmp_go.click(handler(on_compare, len(cmp_in), "A then B"), cmp_in, [grid_a, grid_b, cmp_info])

        with gr.Tab("Model", elem_id="tab-model"):
            m_size = gr.Number(res, label="Resolution", elem_id="model-size")
            m_go = gr.Button("Show", elem_id="model-go")
            card = gr.JSON(value=model_card(s, res), label="Checkpoint", elem_id="model-card")
            m_go.click(handler(lambda session, size: model_card(s, size), 1), [m_size], [card])
    return demo


def serve(model, ckpt, out, host="127.0.0.1", port=7860, text_encoder="", device="auto", block=True):
    """Launch the page (one job at a time: the queue), bound to `host`."""
    try:
        import gradio  # noqa: F401, PLC0415
    except ImportError:
        raise PixelDiTError("the app needs Gradio", "pip install 'pixeldit[app]'") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this machine on port {port} can use the model",
              file=sys.stderr, flush=True)  # fmt: skip
    Path(out).mkdir(parents=True, exist_ok=True)
    s = Session(model, ckpt, out, text_encoder, device)
    demo = build(s).queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_UPLOAD, show_error=True,
                allowed_paths=[str(Path(out).resolve())], prevent_thread_lock=not block, quiet=True)  # fmt: skip
    return demo
