"""Issue 22 item 3: do the default route's prediction intervals reach the nominal coverage? (the rule in
benchmarks/matbench/SECTION.md, "Prediction intervals with the nominal coverage", fixed before any fold ran).

Reads every finished fold of ``runs/default_route_ens2_e100_same_composition_intervals/<task>`` (test predictions,
the calibrated sigma, and the fold's multipliers ``m68`` / ``m95`` chosen on its held-out training rows, in
``fold.json``), pools the test rows of the task's folds and reports the share of errors within ``m68 x sigma`` and
``m95 x sigma`` next to the sigma's own 1 / 2 sigma coverage. A task passes if both interval coverages are within
±0.05 of 0.683 / 0.954. Slimmed fold files (no target column) get their targets back by id from the shared data.

    PYTHONPATH=. python benchmarks/calibration/interval_rule.py --json benchmarks/calibration/interval_rule.json \
        > benchmarks/calibration/interval_rule.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.matbench.slim_predictions import with_targets
from crossmat.modeling.configuration_crossmat import INTERVAL_LEVELS

RUN = Path(__file__).parents[1] / "matbench" / "runs" / "default_route_ens2_e100_same_composition_intervals"
VARIANT = "crossmat_ens2_e100_same_composition_intervals"
TARGETS = INTERVAL_LEVELS
TOLERANCE = 0.05


def task_rows(task_dir: Path) -> dict | None:
    """Pooled coverage of one task's finished folds (``None`` when none has finished)."""
    errs, sigmas, m68s, m95s, folds = [], [], [], [], []
    for fold_dir in sorted((task_dir / VARIANT).glob("fold_*")):
        pred_file, meta_file = fold_dir / "predictions.csv", fold_dir / "fold.json"
        if not (pred_file.is_file() and meta_file.is_file()):
            continue
        pred = pd.read_csv(pred_file, dtype={"id": str})
        if "target" not in pred:
            pred = with_targets(pred, task_dir.name)
        cal = json.loads(meta_file.read_text())["params"]["calibration"]
        n = len(pred)
        errs.append(np.abs(pred["prediction"].to_numpy(float) - pred["target"].to_numpy(float)))
        sigmas.append(pred["uncertainty"].to_numpy(float))
        m68s.append(np.full(n, cal["interval_multiplier_68"]))
        m95s.append(np.full(n, cal["interval_multiplier_95"]))
        folds.append({"fold": int(fold_dir.name.split("_")[1]), "calibration_rows": int(cal["rows"]),
                      "m68": cal["interval_multiplier_68"], "m95": cal["interval_multiplier_95"]})
    if not folds:
        return None
    err, sig, m68, m95 = (np.concatenate(a) for a in (errs, sigmas, m68s, m95s))
    row = {"task": task_dir.name, "folds": folds, "rows": int(len(err)), "mae": float(err.mean()),
           "sigma_1": float((err <= sig).mean()), "sigma_2": float((err <= 2 * sig).mean()),
           "interval_68": float((err <= m68 * sig).mean()), "interval_95": float((err <= m95 * sig).mean())}
    row["sigma_max_deviation"] = max(abs(row["sigma_1"] - TARGETS[0]), abs(row["sigma_2"] - TARGETS[1]))
    row["interval_max_deviation"] = max(abs(row["interval_68"] - TARGETS[0]), abs(row["interval_95"] - TARGETS[1]))
    row["complete"] = len(folds) == 5
    row["passes"] = row["interval_max_deviation"] <= TOLERANCE
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    rows = [r for d in sorted(RUN.glob("matbench_*")) if (r := task_rows(d))]
    print(f"prediction intervals of the default route ({VARIANT}); pooled test rows of the finished folds; "
          f"a task passes if both interval coverages are within ±{TOLERANCE} of {TARGETS[0]} / {TARGETS[1]}")
    print(f"{'task':22s} {'folds':>5s} {'rows':>6s} {'MAE':>9s} | {'1 sigma':>7s} {'2 sigma':>7s} {'maxdev':>6s} | "
          f"{'68% int':>7s} {'95% int':>7s} {'maxdev':>6s} | m68 (folds)               m95 (folds)               | verdict")
    for r in rows:
        m68 = " ".join(f"{f['m68']:.2f}" for f in r["folds"])
        m95 = " ".join(f"{f['m95']:.2f}" for f in r["folds"])
        verdict = ("passes" if r["passes"] else "misses") + ("" if r["complete"] else " (folds missing)")
        print(f"{r['task']:22s} {len(r['folds']):5d} {r['rows']:6d} {r['mae']:9.4g} | {r['sigma_1']:7.3f} "
              f"{r['sigma_2']:7.3f} {r['sigma_max_deviation']:6.3f} | {r['interval_68']:7.3f} {r['interval_95']:7.3f} "
              f"{r['interval_max_deviation']:6.3f} | {m68:25s} {m95:25s} | {verdict}")
    done = [r for r in rows if r["complete"]]
    print(f"complete tasks: {len(done)}; passing: {sum(r['passes'] for r in done)}; the sigma alone would pass on "
          f"{sum(r['sigma_max_deviation'] <= TOLERANCE for r in done)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
