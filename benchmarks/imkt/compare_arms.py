"""Paired per-fold comparison of fine-tuned backbone arms (records ``crossmat_default_from_<arm>.json``, or any
record ``<arm>.json``, e.g. ``crossmat`` (the default route) against ``crossmat_ens2``).

Usage: PYTHONPATH=. python benchmarks/imkt/compare_arms.py ARM --against mlm imkt [--tasks T ...] [--json OUT]
Prints, per task, the arm's mean ± std over folds (the record's std) and, per reference arm, the per-fold relative error change 100 (a - b) / b (error = MAE, or
1 - value for accuracy-type metrics), its mean ± SE over folds and a verdict needing |mean| > 2 SE, then the
average over the tasks both arms have.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path("benchmarks/results/matbench")
HIGHER_IS_BETTER = ("balanced_accuracy", "accuracy", "roc_auc", "f1")


def record_path(task: str, arm: str) -> Path:
    """The record of ``arm`` on ``task``: ``crossmat_default_from_<arm>.json`` if there is one, else ``<arm>.json``."""
    path = RESULTS / task / f"crossmat_default_from_{arm}.json"
    return path if path.is_file() else RESULTS / task / f"{arm}.json"


def errors(task: str, arm: str) -> tuple[np.ndarray, str, float] | None:
    """Per-fold errors, metric and the record's fold std of one arm on one task (None without a record)."""
    path = record_path(task, arm)
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    folds = np.asarray(rec["folds"], dtype=float)
    return (1.0 - folds if rec["metric"] in HIGHER_IS_BETTER else folds), rec["metric"], float(rec["std"])


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-fold relative change of ``a`` against ``b`` (%), mean, SE and verdict (> 2 SE)."""
    rel = 100.0 * (a - b) / b
    se = float(rel.std(ddof=1) / np.sqrt(len(rel)))
    verdict = "better" if rel.mean() < -2 * se else "worse" if rel.mean() > 2 * se else "no clear difference"
    return {"per_fold_pct": [round(float(r), 2) for r in rel], "mean_pct": round(float(rel.mean()), 2),
            "se_pct": round(se, 2), "verdict": verdict}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arm")
    ap.add_argument("--against", nargs="+", default=["mlm", "imkt"])
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tasks = args.tasks or sorted(p.name for p in RESULTS.iterdir() if record_path(p.name, args.arm).is_file())
    out: dict = {"arm": args.arm, "tasks": {}, "average": {}}
    for task in tasks:
        mine = errors(task, args.arm)
        if mine is None:
            continue
        row = {"metric": mine[1], "folds": [round(float(v), 4) for v in mine[0]], "mean": round(float(mine[0].mean()), 4),
               "std": round(mine[2], 4)}  # fmt: skip
        for ref in args.against:
            theirs = errors(task, ref)
            if theirs is not None:
                row[f"vs_{ref}"] = {"ref_folds": [round(float(v), 4) for v in theirs[0]], **paired(mine[0], theirs[0])}
        out["tasks"][task] = row
        cells = "  ".join(f"vs {r}: {row[f'vs_{r}']['mean_pct']:+.1f}% ± {row[f'vs_{r}']['se_pct']:.1f} "
                          f"({row[f'vs_{r}']['verdict']}; folds {row[f'vs_{r}']['per_fold_pct']})"
                          for r in args.against if f"vs_{r}" in row)  # fmt: skip
        print(f"{task:22s} {row['mean']:.4g} ± {row['std']:.3g}  {cells}")
    for ref in args.against:
        means = [r[f"vs_{ref}"]["mean_pct"] for r in out["tasks"].values() if f"vs_{ref}" in r]
        if means:
            out["average"][ref] = {"tasks": len(means), "mean_pct": round(float(np.mean(means)), 2)}
            print(f"average vs {ref} over {len(means)} task(s): {np.mean(means):+.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
