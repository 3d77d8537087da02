"""make demo's verdicts in one file: OUT/summary.json (and a short table on stdout).

    python scripts/demo_summary.py runs/demo

Reads what the demo's stages wrote — judge.json (classifier agreement, its standard error, per class),
fid.json (`eval-fid --json`: FID, precision, recall at the N used), edit/edit_study.json (the FlowEdit sweep
and the setting chosen by its stated rule) and timings.txt (seconds per stage) — and writes them together.
A stage that did not run is recorded as missing, never guessed.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixeldit_cli.io import write_json  # noqa: E402


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def timings(path: Path) -> dict:
    """timings.txt lines `stage   123 s` -> {stage: seconds}."""
    out = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = line.split()
        if len(parts) == 3 and parts[2] == "s":
            out[parts[0]] = int(parts[1])
    return out


def summary(out: Path) -> dict:
    judge, fid, edit = _read(out / "judge.json"), _read(out / "fid.json"), _read(out / "edit" / "edit_study.json")
    times = timings(out / "timings.txt")
    s = {"samples": None, "fid": None, "edit": None, "seconds": {k: v for k, v in times.items() if k != "total"},
         "total_seconds": times.get("total")}  # fmt: skip
    if judge:
        s["samples"] = {k: judge[k] for k in ("n", "agreement", "se", "per_class", "classifier_test_accuracy")}
    if fid:
        s["fid"] = {"n": fid["n"], **{k: fid.get(k) for k in ("fid", "precision", "recall")},
                    "reference": fid.get("reference")}  # fmt: skip
    if edit:
        key = edit["chosen"]
        ch = next(r for r in edit["sweep"] if (r["strength"], r["tgt_cfg"]) == (key["strength"], key["tgt_cfg"]))
        s["edit"] = {
            **{k: ch[k] for k in ("strength", "tgt_cfg", "success", "kept", "ssim", "bg_ssim")},
            "to_target_per_pair": {f"{r['src']}->{r['tgt']}": r["to_target"] for r in ch["rows"]},
            "baseline": edit.get("baseline"),  # unedited sources: classified correctly / already the target
            "images_per_pair": edit["settings"]["per_pair"],
            "rule": "best success up to 0.05, then the most source kept (SSIM)",
        }
    return s


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
    s = summary(out)
    write_json(out / "summary.json", s)
    smp, fid, ed = s["samples"] or {}, s["fid"] or {}, s["edit"] or {}
    fmt = lambda v, f: "missing" if v is None else format(v, f)  # noqa: E731
    print(f"classifier agreement {fmt(smp.get('agreement'), '.1%')} (SE {fmt(smp.get('se'), '.1%')}, "
          f"N = {smp.get('n')}) | FID {fmt(fid.get('fid'), '.1f')}, precision {fmt(fid.get('precision'), '.2f')}, "
          f"recall {fmt(fid.get('recall'), '.2f')} | edit success {fmt(ed.get('success'), '.0%')}, "
          f"kept {fmt(ed.get('kept'), '.0%')}, background SSIM {fmt(ed.get('bg_ssim'), '.2f')} | "
          f"total {s['total_seconds']} s -> {out / 'summary.json'}")  # fmt: skip


if __name__ == "__main__":
    main()
