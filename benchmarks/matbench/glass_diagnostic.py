"""Why the default route misses the glass bar (issue 22 item 4): threshold or ranking?

For each official fold of the committed default-route glass predictions (runs/default_route_ens2_e100, P(1)
remapped so that the calibrated threshold sits at 0.5) and the forest's record: balanced accuracy at the calibrated
threshold, the best balanced accuracy any threshold could reach *if it were chosen on the test rows* (an oracle, not
a method), and ROC-AUC. If the oracle stays below the bar, no threshold rule can reach it: the ranking must improve.

    python benchmarks/matbench/glass_diagnostic.py > benchmarks/matbench/glass_diagnostic.txt
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from crossmat.modeling.calibration import fit_threshold  # the calibration's own search, here run on the test rows

HERE = Path(__file__).resolve().parent
RUN = HERE / "runs" / "default_route_ens2_e100" / "matbench_glass" / "crossmat_ens2_e100"
FOREST = HERE.parents[0] / "results" / "matbench" / "matbench_glass" / "rf_magpie.json"
BAR = 0.8607


def main() -> None:
    rows = []
    for f in sorted(RUN.glob("fold_*/predictions.csv")):
        d = pd.read_csv(f)
        y, p = d.target.to_numpy().astype(int), d.prediction.to_numpy()
        rows.append((f.parent.name, balanced_accuracy_score(y, p >= 0.5), fit_threshold(p, y)[1], roc_auc_score(y, p)))
    print(f"{'fold':8s} {'BA calibrated':>14s} {'BA oracle':>10s} {'ROC-AUC':>8s}")
    for r in rows:
        print(f"{r[0]:8s} {r[1]:14.4f} {r[2]:10.4f} {r[3]:8.4f}")
    m = np.mean([r[1:] for r in rows], axis=0)
    print(f"{'mean':8s} {m[0]:14.4f} {m[1]:10.4f} {m[2]:8.4f}   (bar {BAR})")
    forest = json.loads(FOREST.read_text())["all_metrics"]
    print(f"forest (rf_magpie, same folds): balanced accuracy {forest['balanced_accuracy']:.4f} at 0.5, "
          f"ROC-AUC {forest['rocauc']:.4f}")


if __name__ == "__main__":
    main()
