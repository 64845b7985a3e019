"""Slim committed fold predictions of a large task to what resuming needs (``id``, ``prediction`` and, where
present, ``uncertainty``, at 9 significant digits): ``formula`` and ``target`` are the shared data's own columns,
read back by id from ``CROSSMAT_DATA_DIR`` (``with_targets``). Before writing, each slimmed file must reproduce its
record's per-fold score to 1e-9 (balanced accuracy of labels above 0.5, as the MatBench metric cuts them, or MAE). Used for matbench_mp_is_metal (21,200 test rows
per fold), whose full files were over 1 MiB each.

Usage: PYTHONPATH=. python benchmarks/matbench/slim_predictions.py RUN_FOLDER [RUN_FOLDER ...]
  (RUN_FOLDER = benchmarks/matbench/runs/<route>/<task>; the task is its last part)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score

from crossmat.evaluation.metrics.matbench_classification.matbench_classification import THRESHOLD
from crossmat.evaluation.tasks import load_matbench_frame

KEEP = ("id", "prediction", "uncertainty")


def with_targets(pred: pd.DataFrame, task: str) -> pd.DataFrame:
    """``pred`` with the shared data's ``target`` column joined by id (a slimmed file has none)."""
    if "target" in pred:
        return pred
    frame = load_matbench_frame(task)[["id", "target"]]
    out = pred.merge(frame, on="id", how="left", validate="one_to_one")
    if out["target"].isna().any():
        raise ValueError(f"{task}: {int(out['target'].isna().sum())} prediction id(s) are not rows of the task")
    return out


def score(pred: pd.DataFrame, metric: str) -> float:
    if metric == "balanced_accuracy":
        return float(balanced_accuracy_score(pred["target"].astype(int), (pred["prediction"] > THRESHOLD).astype(int)))
    return float(np.abs(pred["prediction"] - pred["target"]).mean())


def slim(run_folder: Path, results: Path = Path("benchmarks/results/matbench")) -> None:
    task = run_folder.name
    for variant in sorted(p for p in run_folder.iterdir() if p.is_dir()):
        record = json.loads((results / task / f"{variant.name}.json").read_text())
        for k, fold in zip(record["fold_ids"], record["folds"], strict=True):
            for path in sorted((variant / f"fold_{k}").glob("predictions*.csv")):
                full = pd.read_csv(path)
                slimmed = full[[c for c in KEEP if c in full]]
                text = slimmed.to_csv(index=False, float_format="%.9g")
                if path.name == "predictions.csv":
                    again = with_targets(pd.read_csv(pd.io.common.StringIO(text)), task)
                    got = score(again, record["metric"])
                    if abs(got - fold) > 1e-9:
                        raise ValueError(f"{path}: slimmed score {got} != record fold {k} {fold}")
                path.write_text(text)
                print(f"{path}: {len(text) // 1024} KiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_folders", nargs="+", type=Path)
    for folder in ap.parse_args().run_folders:
        slim(folder)


if __name__ == "__main__":
    main()
