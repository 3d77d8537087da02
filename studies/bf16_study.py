"""Does bf16 sampling change quality? fp32 against bf16 on the same seeds, read against run-to-run noise.

    .venv/bin/python -m studies.bf16_study --ckpt runs/study/train/checkpoints/last.pt --classifier C.pt

Three sample jobs of N images each (classes balanced, the study's sampler settings): fp32 and bf16 on
the same seeds, and fp32 on other seeds — the noise floor: two draws of the same model and sampler differ
by that much with nothing changed. For each: FID / precision / recall against N held-out Fashion-MNIST
test images (ADM protocol, the fallback Inception weights unless --inception), the independent
classifier's agreement with the class asked for (± its binomial standard error), and, for bf16, every
image's PSNR to its fp32 twin and the share of images whose classifier label changes. The verdict: bf16 is
within the noise when its FID moves less than the other-seeds FID does and its agreement moves less
than two standard errors. Writes OUT/study.json and OUT/table.md.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from studies.semantic_reuse_study import psnr, reference

VARIANTS = [("fp32", "fp32", 0), ("bf16", "bf16", 0), ("fp32, other seeds", "fp32", 1_000_000)]


def run_variant(args, label, precision, seed, out: Path) -> dict:
    from pixeldit_cli.sampling import SampleJob, run

    job = SampleJob(ckpt=args.ckpt, n=args.n, out=str(out / label.replace(", ", "-").replace(" ", "-")),
                    mode="balanced", solver=args.solver, steps=args.steps, cfg=args.cfg,
                    interval=tuple(args.interval), height=32, width=32, seed=seed, batch_size=args.batch_size,
                    format="npz", precision=precision)  # fmt: skip
    t0 = time.perf_counter()
    r = run(job, progress=False)
    return {"variant": label, "precision": r["dtype"], "reason": r["precision_reason"], "seed": seed,
            "seconds": round(time.perf_counter() - t0, 1), "npz": str(Path(job.out) / "samples.npz")}  # fmt: skip


def scores(rows, args, out: Path) -> None:
    from pixeldit_cli.metrics.evaluate import evaluate
    from studies.classifier import load_classifier, predict

    ref = reference(out, args.n)
    clf = load_classifier(args.classifier)[0] if args.classifier else None
    for row in rows:
        m = evaluate(row["npz"], ref, args.inception, None, 100, "fp16", "eigh", out / "cache", progress=False)
        row.update(fid=m["fid"], precision_pr=m["precision"], recall=m["recall"])
        with np.load(row["npz"]) as f:
            imgs, asked = f["arr_0"], f["arr_1"]
        if clf is not None:
            row["pred"] = predict(clf, imgs)
            p = float((row["pred"] == asked).mean())
            row.update(class_agreement=p, class_agreement_se=float(np.sqrt(p * (1 - p) / len(asked))))
    a, b = (np.load(rows[i]["npz"])["arr_0"] for i in (0, 1))
    per_image = [psnr(x, y) for x, y in zip(a, b)]
    finite = [v for v in per_image if np.isfinite(v)]
    rows[1].update(psnr_to_fp32_mean=float(np.mean(finite)) if finite else float("inf"),
                   psnr_to_fp32_min=float(np.min(finite)) if finite else float("inf"),
                   identical_to_fp32=int(len(per_image) - len(finite)),
                   mean_abs_diff_to_fp32=float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()))  # fmt: skip
    if clf is not None:
        rows[1]["label_changed_vs_fp32"] = float((rows[0]["pred"] != rows[1]["pred"]).mean())
    for row in rows:
        row.pop("pred", None)


def verdict(rows) -> dict:
    fp32, bf16, other = rows
    noise_fid = abs(other["fid"] - fp32["fid"])
    moved_fid = abs(bf16["fid"] - fp32["fid"])
    out = {
        "fid_moved_by_bf16": moved_fid,
        "fid_moved_by_other_seeds": noise_fid,
        "fid_within_noise": moved_fid <= noise_fid,
    }
    if "class_agreement" in fp32:
        se = max(fp32["class_agreement_se"], bf16["class_agreement_se"])
        moved = abs(bf16["class_agreement"] - fp32["class_agreement"])
        out.update(agreement_moved_by_bf16=moved, agreement_two_se=2 * se, agreement_within_noise=moved <= 2 * se)
    out["within_noise"] = all(v for k, v in out.items() if k.endswith("within_noise"))
    return out


def table(rows, v) -> str:
    head = "| variant | FID | precision | recall | classifier agreement | PSNR to fp32 twin (mean / min) | seconds |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = (
            f"{100 * r['class_agreement']:.1f}% ± {100 * r['class_agreement_se']:.1f}"
            if "class_agreement" in r
            else "–"
        )
        ps = f"{r['psnr_to_fp32_mean']:.1f} / {r['psnr_to_fp32_min']:.1f} dB" if "psnr_to_fp32_mean" in r else "–"
        lines.append(
            f"| {r['variant']} | {r['fid']:.2f} | {r['precision_pr']:.3f} | {r['recall']:.3f} | {agree} | {ps} | {r['seconds']} |"
        )
    lines.append("")
    lines.append(f"bf16 moves FID by {v['fid_moved_by_bf16']:.2f}, other seeds by {v['fid_moved_by_other_seeds']:.2f}; "
                 f"verdict: {'within' if v['within_noise'] else 'beyond'} run-to-run noise.")  # fmt: skip
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", default="runs/bf16-study")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--solver", default="flowdpm")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--interval", type=float, nargs=2, default=[0.1, 1.0])
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--inception", default=None)
    ap.add_argument("--classifier", default=None, help="classifier.pt from studies/fashion_classifier.py")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_variant(args, *v, out) for v in VARIANTS]
    scores(rows, args, out)
    v = verdict(rows)
    (out / "study.json").write_text(json.dumps({"settings": vars(args), "rows": rows, "verdict": v}, indent=2) + "\n")
    (out / "table.md").write_text(table(rows, v))
    print(table(rows, v))


if __name__ == "__main__":
    main()
