"""The significance guard of the same-composition correction, applied to saved fold models (benchmarks/matbench/SECTION.md,
"Same-composition correction", follow-up): for every fold of ``crossmat_ens2_e100_same_composition`` whose model folder
is still on disk, the calibration carve-out is rebuilt (the harness's seeded split), its rows that share a composition
with the fold's training rows are scored with the model's chosen weight and without it, and the weight is kept only
if the mean per-row loss change is below -2 standard errors (``modeling.same_composition.significant_gain``). The
guarded test outputs are then the fold's corrected ``predictions.csv`` (kept) or its
``predictions_without_same_composition.csv`` (dropped): the same trained models, three ways.

Usage: PYTHONPATH=. python benchmarks/matbench/same_composition_guard.py --runs RUNS_ROOT [--tasks ...] [--json OUT]
(RUNS_ROOT: the folder that holds ``<task>/crossmat_ens2_e100_same_composition/fold_k/model``, e.g. a worktree's
``benchmarks/matbench/runs/default_route_ens2_e100_same_composition``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.calibration.seed2_rule import mean_se
from benchmarks.matbench.same_composition_rule import ARM, mae
from crossmat.evaluation.protocol import matbench_folds
from crossmat.evaluation.tasks import load_matbench_frame, matbench_task
from crossmat.modeling import CrossMatForPropertyPrediction
from crossmat.modeling.modeling_crossmat import composition_keys
from crossmat.modeling.same_composition import row_losses, significant_gain
from crossmat.tokenization import CrossMatTokenizerFast

MIN_SE = 2.0


@torch.inference_mode()
def fold_guard(task: str, k: int, folder: Path, tokenizer: CrossMatTokenizerFast) -> dict:
    """The guard's decision for one saved fold model and the fold's test MAE three ways."""
    info = json.loads((folder / "fold.json").read_text())["params"]["same_composition"]
    pred = pd.read_csv(folder / "predictions.csv")
    alone_file = folder / "predictions_without_same_composition.csv"
    alone = pred[["id", "target"]].merge(pd.read_csv(alone_file), on="id") if alone_file.is_file() else pred
    out = {"fold": k, "weight": info["weight"], "rows": info["validation_rows_with_composition"],
           "mae_unguarded": mae(pred), "mae_without": mae(alone)}
    if not info["installed"]:
        return {**out, "kept": False, "change": 0.0, "se": None, "mae_guarded": mae(pred)}
    model = CrossMatForPropertyPrediction.from_pretrained(folder / "model").eval()
    frame = load_matbench_frame(task)
    fold = matbench_folds(matbench_task(task), frame, [k], 0.1, 0)[0]
    if len(fold.validation) != info["validation_rows"]:
        raise RuntimeError(f"{task} fold {k}: rebuilt carve-out has {len(fold.validation)} rows, the run had "
                           f"{info['validation_rows']}")
    enc = {n: tokenizer(part["formula"].tolist(), padding=True, return_tensors="pt")
           for n, part in (("train", fold.train), ("validation", fold.validation))}
    keys = {n: composition_keys(e["input_ids"], model.composition_key_multipliers, model.config) for n, e in enc.items()}
    means = pd.Series(fold.train["target"].to_numpy()).groupby(keys["train"].numpy()).mean()
    held = pd.Series(keys["validation"].numpy()).map(means).to_numpy()
    rows = np.flatnonzero(np.isfinite(held))
    if len(rows) != info["validation_rows_with_composition"]:
        raise RuntimeError(f"{task} fold {k}: {len(rows)} carve-out rows share a composition, the run had "
                           f"{info['validation_rows_with_composition']}")
    ids, mask = enc["validation"]["input_ids"][rows], enc["validation"]["attention_mask"][rows]
    labels = torch.as_tensor(fold.validation["target"].to_numpy()[rows], dtype=torch.float32).view(-1, 1)
    same = torch.as_tensor(held[rows], dtype=torch.float32).view(-1, 1)
    weight = model.config.same_composition_weight
    with_w = row_losses(model, ids, mask, labels, None, same, weight)
    without = row_losses(model, ids, mask, labels, None, same, 0.0)
    model.config.same_composition_weight = weight
    if abs(float(with_w.mean()) - info["validation_loss_with"]) > 1e-4 * max(1.0, info["validation_loss_with"]):
        raise RuntimeError(f"{task} fold {k}: carve-out loss {float(with_w.mean()):.6g} does not reproduce the run's "
                           f"{info['validation_loss_with']:.6g}")
    kept, change, se = significant_gain(with_w, without, MIN_SE)
    return {**out, "kept": kept, "change": change, "se": se, "mae_guarded": out["mae_unguarded"] if kept else out["mae_without"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=["matbench_perovskites", "matbench_dielectric"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tokenizer = CrossMatTokenizerFast()
    result = {}
    for task in args.tasks:
        folds = []
        for folder in sorted((args.runs / task / ARM).glob("fold_*")):
            if (folder / "fold.json").is_file() and (folder / "model" / "config.json").is_file():
                folds.append(fold_guard(task, int(folder.name.split("_")[1]), folder, tokenizer))
        if not folds:
            print(f"{task}: no saved fold model")
            continue
        print(f"{task} ({len(folds)} folds):")
        for f in folds:
            se = "-" if f["se"] is None else f"{f['se']:.4f}"
            print(f"  fold {f['fold']}: weight {f['weight']:+.2f} on {f['rows']} carve-out rows; per-row loss change "
                  f"{f['change']:+.4f} (SE {se}) -> {'kept' if f['kept'] else 'dropped'}; test MAE without "
                  f"{f['mae_without']:.4f}, unguarded {f['mae_unguarded']:.4f}, guarded {f['mae_guarded']:.4f}")
        rel = {arm: np.array([100 * (f[f"mae_{arm}"] - f["mae_without"]) / f["mae_without"] for f in folds])
               for arm in ("unguarded", "guarded")}
        summary = {arm: mean_se(v) if len(v) > 1 else (float(v[0]), float("nan")) for arm, v in rel.items()}
        for arm, (m, s) in summary.items():
            print(f"  {arm}: {m:+.2f}% ± {s:.2f} (SE) against the same models without the correction")
        result[task] = {"folds": folds, "change_percent": {a: {"mean": m, "se": s} for a, (m, s) in summary.items()}}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
