"""Pooled embeddings, predictions and targets of the trained MatBench fold models (fit / held-out / test rows),
cached for ``calibration_study.py``; nothing is retrained.

For each fold model the held-out calibration rows are rebuilt with the benchmark's own split
(``evaluation.protocol.matbench_folds``, seed 0, 10%) and checked against the residuals stored in the model's
buffers; test predictions are checked against the run's ``predictions.csv``.

Usage: ``PYTHONPATH=. python benchmarks/modeling/calibration_extract.py [--models DIR] [--tasks ...]``, ``DIR`` the
run's ``benchmarks/_work/default_route`` (the fold models are not tracked; this study used the worktree that ran it)
-> ``benchmarks/_work/calibration_study/<task>_fold<k>.npz`` (ignored by git).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from crossmat.evaluation.protocol import matbench_folds
from crossmat.evaluation.tasks import load_matbench_frame, matbench_task
from crossmat.inference.engine import FormulaPredictor

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TASKS = ("matbench_steels", "matbench_jdft2d", "matbench_phonons", "matbench_expt_gap", "matbench_dielectric")
MODELS = ROOT / "benchmarks" / "_work" / "default_route"
CACHE = ROOT / "benchmarks" / "_work" / "calibration_study"


@torch.inference_mode()
def embed(predictor: FormulaPredictor, formulas: list[str], batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Pooled embeddings (first member) and physical-unit predictions, in input order."""
    model = predictor.model
    ids, errors = predictor.encode(formulas)
    if any(e is not None for e in errors):
        raise ValueError(f"invalid formulas: {[e for e in errors if e][:3]}")
    order = np.argsort([len(s) for s in ids], kind="stable")
    pooled = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    pred = np.zeros((len(ids), model.num_labels), dtype=np.float64)
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        input_ids, mask = predictor._pad([ids[i] for i in rows])
        out = model.crossmat(input_ids, attention_mask=mask).pooler_output
        mean, std = model._target_stats(out)
        pooled[rows] = out.float().numpy()
        pred[rows] = model._clip(model.head(out) * std + mean).double().numpy()
    return pooled, pred


def extract(task: str, fold: int, models: Path) -> Path:
    out = CACHE / f"{task}_fold{fold}.npz"
    if out.is_file():
        return out
    frame = load_matbench_frame(task)
    data = matbench_folds(matbench_task(task), frame, [fold], 0.1, 0)[0]
    predictor = FormulaPredictor(models / task / "crossmat" / f"fold_{fold}" / "model", batch_size=512)
    model = predictor.model.eval()
    if model.config.ensemble_size != 1:
        raise ValueError("the study assumes single-member models")
    arrays: dict[str, np.ndarray] = {}
    for split, df in (("fit", data.train), ("val", data.validation), ("test", data.test)):
        pooled, pred = embed(predictor, df["formula"].tolist())
        arrays[f"{split}_pooled"], arrays[f"{split}_pred"] = pooled, pred[:, 0]
        arrays[f"{split}_target"] = df["target"].to_numpy(np.float64)
    stored = model.uncertainty_residuals.double().numpy()[:, 0]
    resid = arrays["val_target"] - arrays["val_pred"]
    if stored.shape != resid.shape or np.abs(stored - resid).max() > 1e-3 * (1 + np.abs(stored).max()):
        raise RuntimeError(f"{task} fold {fold}: rebuilt held-out rows do not match the stored residuals")
    keys = model.uncertainty_keys.double().numpy()
    rebuilt = arrays["val_pooled"] / np.linalg.norm(arrays["val_pooled"], axis=1, keepdims=True)
    if np.abs(keys - rebuilt).max() > 1e-4:
        raise RuntimeError(f"{task} fold {fold}: rebuilt held-out embeddings do not match the stored keys")
    runs = ROOT / "benchmarks" / "matbench" / "runs" / "default_route" / task / "crossmat" / f"fold_{fold}"
    ref = pd.read_csv(runs / "predictions.csv")
    if not (ref["formula"].tolist() == data.test["formula"].tolist()
            and np.allclose(ref["prediction"], arrays["test_pred"], rtol=1e-4, atol=1e-4 * ref["target"].std())):
        raise RuntimeError(f"{task} fold {fold}: test predictions differ from {runs / 'predictions.csv'}")
    arrays["test_uncertainty_recorded"] = ref["uncertainty"].to_numpy(np.float64)
    arrays["stored_residuals"], arrays["stored_keys"] = stored, keys
    cfg = model.config
    arrays["stored_params"] = np.array([cfg.uncertainty_k, cfg.uncertainty_prior, cfg.uncertainty_scale])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, default=MODELS)
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--folds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    torch.set_num_threads(1)
    for task in args.tasks:
        for fold in args.folds:
            print(task, fold, extract(task, fold, args.models), flush=True)


if __name__ == "__main__":
    main()
