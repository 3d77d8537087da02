"""Semantic reuse on the demo model: speed against quality, measured (the README's table and plot).

    .venv/bin/python -m studies.semantic_reuse_study --ckpt runs/demo/train/checkpoints/last.pt

For each variant — K = 1 (the release's sampler), 2, 3, 4, and K = 3 with the "ends" schedule — it
samples the same N images (same seeds, classes balanced) with the model's own sampling settings,
measures img/s in this process, FID / precision / recall against held-out Fashion-MNIST test images
(the ADM protocol; the fallback Inception weights unless --inception is given), and the pixel-space
distance of every image to its K = 1 twin (mean |Δ| in 0..255 and PSNR). With --classifier (the demo's
independent Fashion-MNIST classifier, studies/fashion_classifier.py) also the share of samples assigned to
the class they were drawn for, a second quality read whose binomial standard error is known.
Writes OUT/study.json, OUT/table.md and OUT/reuse_tradeoff.png.
"""

import argparse
import importlib
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = [
    ("K=1", 1, "uniform"),
    ("K=2", 2, "uniform"),
    ("K=3", 3, "uniform"),
    ("K=4", 4, "uniform"),
    ("K=3 ends", 3, "ends"),
]


def reference(out: Path, n: int) -> Path:
    """The first n Fashion-MNIST test images as an ADM npz (the data the model never saw)."""
    from pixeldit_cli.npz import write_npz
    from pixeldit_cli.train.data import FashionMNIST

    path = out / f"fashion_test_{n}.npz"
    if not path.exists():
        ds = FashionMNIST("test", 32)
        imgs = np.stack([ds[i][0].permute(1, 2, 0).numpy() for i in range(n)])
        write_npz(path, imgs, arr_1=ds.labels[:n].numpy())
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_variant(S, model, args, label, k, schedule, out: Path) -> dict:
    job = S.SampleJob(
        ckpt=args.ckpt,
        n=args.n,
        out=str(out / label.replace(" ", "-").replace("=", "")),
        mode="balanced",
        solver=args.solver,
        steps=args.steps,
        cfg=args.cfg,
        interval=tuple(args.interval),
        shift=1.0,
        height=32,
        width=32,
        seed=0,
        batch_size=args.batch_size,
        format="npz",
        semantic_reuse=k,
        reuse_schedule=schedule,
    )
    t0 = time.perf_counter()
    r = S.run(job, model=model, progress=False)
    wall = time.perf_counter() - t0
    return {
        "variant": label,
        "K": k,
        "schedule": schedule,
        "img_per_s": r["images_per_second"] or args.n / wall,
        "patch_evals": r["patch_path_evals_per_sample"],
        "pixel_evals": r["pixel_path_evals_per_sample"],
        "gflops_per_image": r["gflops_per_image"],
        "npz": str(Path(job.out) / "samples.npz"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="runs/demo/train/checkpoints/last.pt")
    ap.add_argument("--out", default="runs/reuse-study")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--ref-n", type=int, default=2000, help="held-out test images in the FID reference")
    ap.add_argument("--solver", default="flowdpm")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--interval", type=float, nargs=2, default=[0.1, 1.0])
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--inception", default=None, help="pt_inception-2015-12-05 weights (default: the fallback)")
    ap.add_argument(
        "--classifier", default=None, help="classifier.pt from studies/fashion_classifier.py (adds class agreement)"
    )
    ap.add_argument("--report-only", action="store_true", help="redraw table and plot from OUT/study.json")
    ap.add_argument(
        "--timing", action="store_true", help="only time the variants (interleaved, quiet machine) into study.json"
    )
    ap.add_argument("--timing-n", type=int, default=100)
    ap.add_argument("--timing-rounds", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from pixeldit_cli import load_model
    from pixeldit_cli.metrics.evaluate import evaluate

    state_file = out / "study.json"
    rows = json.loads(state_file.read_text())["rows"] if state_file.exists() else []
    save = lambda: state_file.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    if args.timing:  # its own file: a study still running keeps writing study.json
        (out / "timing.json").write_text(json.dumps(timing(rows, args), indent=2) + "\n")
    elif not args.report_only:
        S = importlib.import_module("pixeldit_cli.sampling")
        model = load_model(args.ckpt)
        import torch

        from pixeldit_cli.solvers import noise_for, solve

        solve(
            model,
            noise_for(range(args.batch_size), 0, (3, 32, 32)),
            torch.zeros(args.batch_size, dtype=torch.long),
            None,
            steps=2,
            cfg=args.cfg,
        )  # warm-up: allocator and tables, so K=1 is not timed cold
        done = {r["variant"] for r in rows}
        for label, k, schedule in VARIANTS:  # sampling first: every variant, then the slow Inception passes
            if label not in done:
                rows.append(run_variant(S, model, args, label, k, schedule, out))
                save()
                print(json.dumps(rows[-1]), flush=True)
        ref = reference(out, args.ref_n)
        for row in rows:
            if row.get("fid") is None:
                m = evaluate(row["npz"], ref, args.inception, None, 100, "fp16", "eigh", out / "cache", progress=False)
                row.update(fid=m["fid"], precision=m["precision"], recall=m["recall"])
                save()
                print(json.dumps(row), flush=True)
    report(rows, out, args)


def timing(rows, args):
    """img/s of every variant on the same `timing_n` images, the variants interleaved round by round and
    the best round kept: the full runs' wall clocks share the machine with whatever else runs, ratios
    measured side by side do not."""
    import torch

    from pixeldit_cli import load_model
    from pixeldit_cli.solvers import noise_for, solve

    model = load_model(args.ckpt)
    n = args.timing_n
    x, y = noise_for(range(n), 0, (3, 32, 32)), torch.arange(n) % 10
    kw = dict(solver=args.solver, steps=args.steps, cfg=args.cfg, interval=tuple(args.interval))
    solve(model, x[:8], y[:8], None, **{**kw, "steps": 2})  # warm-up
    best = {}
    for _ in range(args.timing_rounds):
        for label, k, schedule in VARIANTS:
            t0 = time.perf_counter()
            solve(model, x, y, None, **kw, semantic_reuse=k, reuse_schedule=schedule)
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - t0)
    result = {k: n / v for k, v in best.items()}
    print(json.dumps({k: round(v, 2) for k, v in result.items()}), flush=True)
    return result


def report(rows, out: Path, args):
    rows = [r for r in rows if r.get("fid") is not None]
    quiet = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {}
    for row in rows:
        if row["variant"] in quiet:
            row["img_per_s_quiet"] = quiet[row["variant"]]
    base = np.load(rows[0]["npz"])["arr_0"]
    clf = None
    if args.classifier:
        from studies.classifier import load_classifier, predict

        clf, _ = load_classifier(args.classifier)
        base_pred = predict(clf, base)
    for row in rows:
        with np.load(row["npz"]) as f:
            imgs, asked = f["arr_0"], f["arr_1"]
        if "img_per_s_quiet" in row:  # the interleaved timing pass, when it has run
            row["img_per_s"] = row["img_per_s_quiet"]
        row["speedup"] = row["img_per_s"] / rows[0]["img_per_s"]
        row["flops_saving"] = 1 - row["gflops_per_image"] / rows[0]["gflops_per_image"]
        row["mean_abs_diff_to_K1"] = float(np.abs(imgs.astype(np.int16) - base.astype(np.int16)).mean())
        row["psnr_to_K1"] = psnr(imgs, base)
        if clf is not None:
            pred = predict(clf, imgs)
            p = float((pred == asked).mean())
            row.update(
                class_agreement=p,
                class_agreement_se=float(np.sqrt(p * (1 - p) / len(pred))),
                verdict_changed_vs_K1=float((pred != base_pred).mean()),
            )
    (out / "report.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    table = [
        "| variant | patch / pixel evals per image | GFLOPs per image | img/s | speed-up | FID | precision | recall | mean abs Δ to K=1 | PSNR to K=1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['variant']} | {r['patch_evals']} / {r['pixel_evals']} | {r['gflops_per_image']:.2f} | "
            f"{r['img_per_s']:.1f} | {r['speedup']:.2f}× | {r['fid']:.2f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['mean_abs_diff_to_K1']:.2f} | "
            f"{'∞' if r['psnr_to_K1'] == float('inf') else format(r['psnr_to_K1'], '.1f')} dB |"
        )
    if clf is not None:
        table += [
            "",
            "| variant | samples assigned to their class (± s.e.) | class verdict changed vs K=1 |",
            "|---|---|---|",
        ]
        table += [
            f"| {r['variant']} | {r['class_agreement']:.1%} ± {r['class_agreement_se']:.1%} | "
            f"{r['verdict_changed_vs_K1']:.1%} |"
            for r in rows
        ]
    (out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    plot(rows, out / "reuse_tradeoff.png", args)


def plot(rows, path: Path, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        ax[0].scatter(r["speedup"], r["fid"], s=40, color="tab:orange" if r["schedule"] == "ends" else "tab:blue")
        ax[0].annotate(r["variant"], (r["speedup"], r["fid"]), textcoords="offset points", xytext=(5, 4))
    ax[0].set_xlabel("speed-up over K=1 (img/s, this CPU)")
    ax[0].set_ylabel(f"FID vs {args.ref_n} held-out test images")
    ax[0].set_title(f"speed against quality, N = {args.n}")
    ax[0].grid(alpha=0.3)
    ks = [r for r in rows if r["schedule"] == "uniform" and r["K"] > 1]
    ax[1].plot([r["K"] for r in ks], [r["psnr_to_K1"] for r in ks], marker="o", label="uniform")
    ax[1].set_xticks(sorted({r["K"] for r in rows}))
    for r in rows:
        if r["schedule"] == "ends":
            ax[1].scatter(r["K"], r["psnr_to_K1"], color="tab:orange", label="K=3 ends", zorder=3)
    ax[1].set_xlabel("K (patch pathway every K-th evaluation)")
    ax[1].set_ylabel("PSNR to the K=1 image (dB)")
    ax[1].set_title("how far each image moves")
    ax[1].legend()
    ax[1].grid(alpha=0.3)
    fig.suptitle(f"Semantic reuse on the demo model ({args.solver}, {args.steps} steps, CFG {args.cfg})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
