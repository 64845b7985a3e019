"""The pre-registered rule for the same-composition correction (benchmarks/matbench/SECTION.md, "Same-composition
correction", committed before any fold ran): per fold, the MAE change (%) of ``crossmat_ens2_e100_same_composition``
(``SAME=1 bash benchmarks/matbench/run_default_route.sh``) against the same trained models without the correction
(``predictions_without_same_composition.csv``; a fold whose weight came out 0 changed nothing). On by default only if
(a) perovskites' 5-fold mean change is negative by > 2 SE and (b) no change on dielectric, jdft2d or phonons is
positive by > 2 SE. Also printed: the weights chosen, the rows they were chosen on, the corrected and uncorrected
MAE with the earlier default-route record and CrabNet's bar, and the coverage of the corrected sigma.

Usage: PYTHONPATH=. python benchmarks/matbench/same_composition_rule.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.calibration.seed2_rule import mean_se

ARM = "crossmat_ens2_e100_same_composition"
RUNS = Path("benchmarks/matbench/runs/default_route_ens2_e100_same_composition")
RECORDS = Path("benchmarks/results/matbench")
DECIDING, GUARDED = "matbench_perovskites", ("matbench_dielectric", "matbench_jdft2d", "matbench_phonons")
CRABNET = {"matbench_perovskites": 0.4065, "matbench_dielectric": 0.3234, "matbench_jdft2d": 45.61,
           "matbench_phonons": 55.11}


def mae(frame: pd.DataFrame) -> float:
    return float(np.abs(frame["prediction"] - frame["target"]).mean())


def task_summary(task: str) -> dict | None:
    """Per-fold corrected / uncorrected MAE, their paired change and what the carve-out chose; None before any fold."""
    folds = sorted((RUNS / task / ARM).glob("fold_*"))
    rows = []
    for fold in folds:
        if not (fold / "fold.json").is_file():
            continue
        info = json.loads((fold / "fold.json").read_text())["params"].get("same_composition", {})
        pred = pd.read_csv(fold / "predictions.csv")
        alone_file = fold / "predictions_without_same_composition.csv"
        alone = pred if not alone_file.is_file() else pred[["id", "target"]].merge(pd.read_csv(alone_file), on="id")
        err = (pred["prediction"] - pred["target"]).abs()
        inside = (err <= pred["uncertainty"]).mean(), (err <= 2 * pred["uncertainty"]).mean()
        rows.append({"fold": int(fold.name.split("_")[1]), "mae": mae(pred), "mae_without": mae(alone),
                     "weight": info.get("weight", 0.0), "rows_chosen_on": info.get("validation_rows_with_composition"),
                     "coverage_1sigma": float(inside[0]), "coverage_2sigma": float(inside[1])})
    if not rows:
        return None
    change = np.array([100.0 * (r["mae"] - r["mae_without"]) / r["mae_without"] for r in rows])
    m, se = mean_se(change) if len(change) > 1 else (float(change[0]), float("nan"))
    record = RECORDS / task / "crossmat_ens2_e100.json"
    earlier = json.loads(record.read_text()) if record.is_file() else None
    return {"folds": rows, "mae": float(np.mean([r["mae"] for r in rows])),
            "mae_std": float(np.std([r["mae"] for r in rows])),
            "mae_without": float(np.mean([r["mae_without"] for r in rows])),
            "change_percent": m, "change_se": se, "complete": len(rows) == 5,
            "earlier_default_route": None if earlier is None else float(earlier["mean"]),
            "crabnet": CRABNET.get(task)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = {t: task_summary(t) for t in (DECIDING, *GUARDED)}
    for task, s in out.items():
        if s is None:
            print(f"{task}: no fold yet")
            continue
        print(f"{task} ({len(s['folds'])} folds): corrected MAE {s['mae']:.4f} ± {s['mae_std']:.4f}, same models "
              f"without {s['mae_without']:.4f}, change {s['change_percent']:+.2f}% ± {s['change_se']:.2f} (SE); earlier "
              f"default-route record {s['earlier_default_route']}; CrabNet {s['crabnet']}")
        for r in s["folds"]:
            print(f"  fold {r['fold']}: weight {r['weight']:+.2f} chosen on {r['rows_chosen_on']} carve-out rows; MAE "
                  f"{r['mae']:.4f} vs {r['mae_without']:.4f}; coverage 1/2 sigma {r['coverage_1sigma']:.3f} / "
                  f"{r['coverage_2sigma']:.3f}")
    done = all(s is not None and s["complete"] for s in out.values())
    if done:
        a = out[DECIDING]["change_percent"] < -2 * out[DECIDING]["change_se"]
        b = all(not (out[t]["change_percent"] > 2 * out[t]["change_se"]) for t in GUARDED)
        verdict = "ON BY DEFAULT" if a and b else "KEEP AS AN OPTION"
        print(f"rule: (a) perovskites negative by > 2 SE: {a}; (b) no guarded task positive by > 2 SE: {b} -> {verdict}")
        out["rule"] = {"a": bool(a), "b": bool(b), "verdict": verdict}
    else:
        print("rule: not all folds have landed")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
