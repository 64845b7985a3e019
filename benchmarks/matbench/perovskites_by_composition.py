"""matbench_perovskites: test MAE of a finished MatBench run split by whether the test row's composition also occurs
in the training folds (another site arrangement of the same composition, with another target).

    python benchmarks/matbench/perovskites_by_composition.py [--run benchmarks/_work/matbench_default/matbench_perovskites/crossmat_default]

Reads each fold's ``predictions.csv`` of the run folder (written by ``evaluate.py``) and the MatBench task file; writes
``perovskites_by_composition.json`` next to this script. Test targets are only scored here, nothing is fit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from crossmat.dataset_builders.paths import data_dir
from crossmat.explicit_transfer.data import composition_key

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(HERE.parents[0] / "_work" / "matbench_default" / "matbench_perovskites" / "crossmat_default"))
    args = ap.parse_args()
    mb = pd.read_csv(data_dir() / "matbench_v0.1" / "matbench_perovskites.csv.gz")
    mb["key"] = composition_key(mb.formula)
    folds = []
    for k in range(5):
        path = Path(args.run) / f"fold_{k}" / "predictions.csv"
        pred = pd.read_csv(path).merge(mb[["id", "key"]], on="id", how="left", validate="one_to_one")
        if pred.key.isna().any():
            raise SystemExit(f"{path}: {int(pred.key.isna().sum())} ids not in matbench_perovskites")
        seen = pred.key.isin(set(mb.key[mb.test_fold != k])).to_numpy()
        err = (pred.target - pred.prediction).abs().to_numpy()
        folds.append({"fold": k, "n_test": len(pred), "share_composition_in_training": float(seen.mean()),
                      "mae_all": float(err.mean()), "mae_composition_in_training": float(err[seen].mean()),
                      "mae_composition_not_in_training": float(err[~seen].mean())})
        print(json.dumps(folds[-1]))
    keys = [k for k in folds[0] if k.startswith(("mae", "share"))]
    summary = {k: float(np.mean([f[k] for f in folds])) for k in keys}
    print(json.dumps(summary, indent=1))
    (HERE / "perovskites_by_composition.json").write_text(
        json.dumps({"run": args.run, "summary_mean_over_folds": summary, "folds": folds}, indent=2))


if __name__ == "__main__":
    main()
