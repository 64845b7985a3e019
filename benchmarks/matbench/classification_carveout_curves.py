"""How the two classification tasks' fine-tuning behaves on the calibration carve-out (training rows only):
validation ROC-AUC and log loss per epoch, read from the fold models' ``metrics.jsonl`` of a default-route run.

    PYTHONPATH=. python benchmarks/matbench/classification_carveout_curves.py \
        [--runs benchmarks/matbench/runs/default_route_ens2_e100_forest_blend] [--variant crossmat_ens2_e100_forest_blend]

The fold model folders are not committed (``model/`` is ignored); ``BLEND=magpie bash
benchmarks/matbench/run_default_route.sh matbench_glass matbench_expt_is_metal`` rebuilds them. The validation
metrics are those of the trained CrossMat ensemble before any forest is blended in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TASKS = ("matbench_glass", "matbench_expt_is_metal")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("benchmarks/matbench/runs/default_route_ens2_e100_forest_blend"))
    ap.add_argument("--variant", default="crossmat_ens2_e100_forest_blend")
    args = ap.parse_args()
    print("task fold | ROC-AUC at epoch 10 / 20 / 50 / 100 | best (epoch) | log loss min (epoch) | log loss at the end")
    for task in TASKS:
        for fold in sorted((args.runs / task / args.variant).glob("fold_*")):
            path = fold / "model" / "metrics.jsonl"
            if not path.is_file():
                continue
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            rows = [r for r in rows if r.get("split") == "validation" and "roc_auc" in r]
            auc, loss = np.array([r["roc_auc"] for r in rows]), np.array([r["loss"] for r in rows])
            at = " / ".join(f"{auc[e - 1]:.4f}" for e in (10, 20, 50, 100) if e <= len(auc))
            print(f"{task} {fold.name} | {at} | {auc.max():.4f} ({int(auc.argmax()) + 1}) | "
                  f"{loss.min():.3f} ({int(loss.argmin()) + 1}) | {loss[-1]:.3f}")


if __name__ == "__main__":
    main()
