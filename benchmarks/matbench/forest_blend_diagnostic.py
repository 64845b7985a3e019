"""Would averaging the default route with the Magpie forest help? (issue 22 item 4, a diagnostic, not a method)

For each official fold: the committed default-route test predictions (runs/default_route_ens2_e100; glass: P(1)
remapped so the calibrated threshold sits at 0.5) and a Magpie random forest (500 trees, seed 0, fitted here on the
fold's training rows, as the rf_magpie baseline), blended as ``w * crossmat + (1 - w) * forest`` at a fixed grid of
weights. Nothing is chosen here: every weight is shown, and the best one per task is a test-row oracle. A method
would pick ``w`` on held-out training rows (SECTION, "Blending with the forest").
``--features element_statistics`` fits the forest instead on what a CrossMat model can compute at predict time: the
fraction-weighted mean and std, min and max of the 22 standardised Magpie element properties the weights carry
(``modeling_crossmat.formula_statistics`` over ``element_feature_table("magpie")``), not matminer's 132 features.

    PYTHONPATH=. python benchmarks/matbench/forest_blend_diagnostic.py > benchmarks/matbench/forest_blend_diagnostic.txt
    PYTHONPATH=. python benchmarks/matbench/forest_blend_diagnostic.py --features element_statistics \
        --tasks matbench_steels matbench_glass > benchmarks/matbench/forest_blend_diagnostic_element_statistics.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from crossmat.evaluation.baselines import MagpieFeaturizer
from crossmat.evaluation.tasks import fold_indices, load_matbench_frame, matbench_task
from crossmat.modeling.configuration_crossmat import CrossMatConfig
from crossmat.modeling.element_features import element_feature_table
from crossmat.modeling.modeling_crossmat import formula_statistics
from crossmat.tokenization import CrossMatTokenizerFast

RUNS = Path(__file__).resolve().parent / "runs" / "default_route_ens2_e100"
TASKS = ["matbench_steels", "matbench_jdft2d", "matbench_phonons", "matbench_dielectric", "matbench_expt_gap",
         "matbench_glass"]
WEIGHTS = (1.0, 0.9, 0.8, 0.7, 0.5, 0.25, 0.0)


def element_statistics_features(formulas: pd.Series) -> np.ndarray:
    """The head's ``composition_statistics`` of every formula over the standardised Magpie table, batched."""
    tok = CrossMatTokenizerFast()
    table, _ = element_feature_table("magpie")
    ids = tok(list(formulas), padding=True, return_tensors="pt")["input_ids"]
    return formula_statistics(table, ids, CrossMatConfig(vocab_size=tok.vocab_size)).numpy()


def fold_predictions(task: str, frame: pd.DataFrame, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test targets, CrossMat predictions and forest predictions (P(1) for glass) of fold ``k``."""
    train, test = fold_indices(frame["test_fold"], k)
    y = frame.target.to_numpy()
    if matbench_task(task).task_type == "classification":
        rf = RandomForestClassifier(500, n_jobs=1, random_state=0).fit(X[train], y[train].astype(int))
        forest = rf.predict_proba(X[test])[:, 1]
    else:
        forest = RandomForestRegressor(500, n_jobs=1, random_state=0).fit(X[train], y[train]).predict(X[test])
    pred = pd.read_csv(RUNS / task / "crossmat_ens2_e100" / f"fold_{k}" / "predictions.csv").set_index("id")
    return y[test], pred.loc[frame.id.iloc[test]].prediction.to_numpy(), forest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", choices=["magpie", "element_statistics"], default="magpie")
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    args = ap.parse_args()
    featurizer = MagpieFeaturizer()
    for task in args.tasks:
        frame = load_matbench_frame(task)
        if args.features == "magpie":
            X, rejected = featurizer.transform(frame["formula"])
            if rejected:
                raise ValueError(f"{task}: rows without Magpie features: {rejected[:3]}")
        else:
            with torch.no_grad():
                X = element_statistics_features(frame["formula"])
        rows = []
        for k in range(5):
            y, cm, rf = fold_predictions(task, frame, X, k)
            if matbench_task(task).task_type == "classification":
                yi = y.astype(int)
                rows.append({f"BA w={w}": balanced_accuracy_score(yi, w * cm + (1 - w) * rf >= 0.5) for w in WEIGHTS}
                            | {f"AUC w={w}": roc_auc_score(yi, w * cm + (1 - w) * rf) for w in WEIGHTS})
            else:
                rows.append({f"w={w}": float(np.abs(w * cm + (1 - w) * rf - y).mean()) for w in WEIGHTS})
        d = pd.DataFrame(rows)
        print(f"== {task} (5 folds; w = weight of CrossMat)")
        if matbench_task(task).task_type == "classification":
            print("balanced accuracy at 0.5:", "  ".join(f"{c[3:]} {v:.4f}" for c, v in d.filter(like="BA").mean().items()))
            print("ROC-AUC:                 ", "  ".join(f"{c[4:]} {v:.4f}" for c, v in d.filter(like="AUC").mean().items()))
            continue
        rel = 100 * d.sub(d["w=1.0"], axis=0).div(d["w=1.0"], axis=0)
        se = rel.std(ddof=1) / np.sqrt(len(rel))
        print("MAE:         ", "  ".join(f"{c} {v:.4g}" for c, v in d.mean().items()))
        print("vs CrossMat: ", "  ".join(f"{c} {m:+.1f}% ± {s:.1f}" for c, m, s in zip(rel.columns, rel.mean(), se, strict=True)))


if __name__ == "__main__":
    main()
