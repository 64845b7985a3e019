"""Temperature scaling of CrossMat's class probabilities on MatBench's binary tasks, scored on the test folds.

For every fold of the tempered default route (``TAG=tempered bash benchmarks/matbench/run_default_route.sh
matbench_glass matbench_expt_is_metal``; the fold folders with their saved models must exist) the saved model
predicts its test rows twice: at the temperature it fitted on its calibration rows and at ``T = 1`` (the same trained
model, untempered). Reported: log loss, Brier score, expected calibration error (ECE, 15 equal-width bins of
P(class 1)), ROC-AUC; the balanced accuracy of the fold's own decision rule against the untempered route's record
(``crossmat_ens2_e100``), and a check that the untempered model is that record's model. Then the rule of
benchmarks/matbench/SECTION.md ("Honest class probabilities"), and, where its folds exist, the tempered blend
(``TAG=tempered BLEND=magpie``) against the tempered route under the classification confirmation rule.

Run from the repository root: ``PYTHONPATH=. python benchmarks/calibration/temperature_scaling.py [--seed S]``;
writes ``temperature_scaling[_seedS].txt`` / ``.json`` beside this script (a replicate's rules are only reported:
they were fixed for seed 0).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from crossmat.evaluation.crossmat_predictor import decision_scores
from crossmat.evaluation.protocol import matbench_folds
from crossmat.evaluation.tasks import load_matbench_frame, matbench_task
from crossmat.modeling import CrossMatForPropertyPrediction
from crossmat.modeling.calibration import fit_threshold
from crossmat.modeling.pipeline_crossmat import scores_from_logits
from crossmat.tokenization import CrossMatTokenizerFast

HERE = Path(__file__).resolve().parent
TASKS = ("matbench_glass", "matbench_expt_is_metal")
SEED = 0  # --seed: run_default_route.sh's SEED (names gain _seedS, the carve-out its seed); set in main()


def _names(seed: int) -> dict[str, str]:
    """Route folders and variants of the tempered route, the tempered blend and the untempered record."""
    s = f"_seed{seed}" if seed else ""
    return {"ROUTE": f"default_route_ens2_e100{s}_tempered", "ROUTE_VARIANT": f"crossmat_ens2_e100{s}_tempered",
            "BLEND": f"default_route_ens2_e100{s}_forest_blend_tempered",
            "BLEND_VARIANT": f"crossmat_ens2_e100{s}_forest_blend_tempered",
            "RECORD": f"default_route_ens2_e100{s}", "RECORD_VARIANT": f"crossmat_ens2_e100{s}"}


ROUTE, ROUTE_VARIANT, BLEND, BLEND_VARIANT, RECORD, RECORD_VARIANT = _names(0).values()
BINS = 15
GLASS_BAR = 0.8607


def ece(prob: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of P(class 1): the row-weighted gap between the mean probability and the share
    of class 1 in equal-width probability bins."""
    idx = np.minimum((prob * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(prob[sel].mean() - y[sel].mean())
    return float(total)


def scores(prob: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    return {"log_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()),
            "brier": float(((prob - y) ** 2).mean()), "ece": ece(prob, y), "roc_auc": float(roc_auc_score(y, prob))}


@torch.inference_mode()
def probabilities(model: CrossMatForPropertyPrediction, tok: CrossMatTokenizerFast, formulas: list[str],
                  temperature: float) -> np.ndarray:
    """P(class 1) of ``formulas`` at ``temperature`` (the model's forward, so an installed forest takes part)."""
    fitted = model.config.probability_temperature
    model.config.probability_temperature = temperature
    try:
        out = []
        for s in range(0, len(formulas), 1024):
            enc = tok(formulas[s : s + 1024], padding=True, return_tensors="pt")
            out.append(scores_from_logits(model(**enc).logits.double(), "single_label_classification")[:, 1])
        return torch.cat(out).numpy()
    finally:
        model.config.probability_temperature = fitted


def fold_dirs(runs: Path, route: str, task: str, variant: str) -> list[Path]:
    """Finished folds (with their record) of one route's variant, in fold order."""
    done = [p for p in (runs / route / task / variant).glob("fold_*") if (p / "fold.json").exists()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def balanced_accuracy(fold: Path) -> float:
    pred = pd.read_csv(fold / "predictions.csv")
    return float(balanced_accuracy_score(pred["target"].astype(int), pred["prediction"] >= 0.5))


def measure_fold(fold: Path, runs: Path, task: str) -> dict[str, float]:
    model = CrossMatForPropertyPrediction.from_pretrained(fold / "model").eval()
    tok = CrossMatTokenizerFast.from_pretrained(fold / "model")
    pred = pd.read_csv(fold / "predictions.csv")
    y = pred["target"].astype(int).to_numpy()
    t = float(model.config.probability_temperature)
    tempered, raw = probabilities(model, tok, pred["formula"].tolist(), t), probabilities(model, tok,
                                                                                        pred["formula"].tolist(), 1.0)
    row = {"fold": int(fold.name.split("_")[1]), "temperature": t,
           **{f"{k}_tempered": v for k, v in scores(tempered, y).items()},
           **{f"{k}_untempered": v for k, v in scores(raw, y).items()},
           "balanced_accuracy": balanced_accuracy(fold)}
    if not model.config.forest_nodes:  # the same model untempered, with the threshold its carve-out gives at T = 1
        carve = carve_out(task, row["fold"])
        rows = json.loads((fold / "fold.json").read_text())["params"]["calibration"]["rows"]
        assert len(carve) == rows, f"{fold}: carve-out of {len(carve)} rows, the run calibrated on {rows}"
        cut, _ = fit_threshold(probabilities(model, tok, carve["formula"].tolist(), 1.0),
                               carve["target"].astype(int).to_numpy())
        row["balanced_accuracy_untempered"] = float(balanced_accuracy_score(y, raw >= cut))
    record = runs / RECORD / task / RECORD_VARIANT / fold.name
    if (record / "predictions.csv").exists() and not model.config.forest_nodes:
        old = pd.read_csv(record / "predictions.csv")
        threshold = json.loads((record / "fold.json").read_text())["params"]["calibration"]["decision_threshold"]
        row["record_balanced_accuracy"] = balanced_accuracy(record)
        row["record_roc_auc"] = float(roc_auc_score(old["target"].astype(int), old["prediction"]))
        row["untempered_vs_record_max_abs_diff"] = float(np.abs(decision_scores(raw, threshold)
                                                              - old["prediction"].to_numpy()).max())
    return row


@functools.cache
def _frame(task: str) -> pd.DataFrame:
    return load_matbench_frame(task)


def carve_out(task: str, fold: int) -> pd.DataFrame:
    """The calibration rows of one official fold, as the harness carves them (the runs' seed, 10%)."""
    return matbench_folds(matbench_task(task), _frame(task), [fold], 0.1, SEED)[0].validation


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    d = np.asarray(a) - np.asarray(b)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("benchmarks/matbench/runs"))
    ap.add_argument("--seed", type=int, default=0, help="the runs' SEED (a replicate: reported, the rules are seed 0's)")
    args = ap.parse_args()
    global SEED, ROUTE, ROUTE_VARIANT, BLEND, BLEND_VARIANT, RECORD, RECORD_VARIANT
    SEED = args.seed
    ROUTE, ROUTE_VARIANT, BLEND, BLEND_VARIANT, RECORD, RECORD_VARIANT = _names(args.seed).values()
    stem = "temperature_scaling" + (f"_seed{args.seed}" if args.seed else "")
    out: dict = {"tasks": {}, "bins": BINS}
    lines = ["Temperature scaling on MatBench's binary tasks (test folds; same trained models at the fitted T and T=1)",
             ""]
    folds_lower, ece_lower = 0, []
    n_folds = 0
    for task in TASKS:
        rows = [measure_fold(f, args.runs, task) for f in fold_dirs(args.runs, ROUTE, task, ROUTE_VARIANT)]
        if not rows:
            lines.append(f"{task}: no folds of {ROUTE_VARIANT} under {args.runs}")
            continue
        frame = pd.DataFrame(rows)
        out["tasks"][task] = {"route": rows}
        lines.append(f"{task} ({ROUTE_VARIANT}, {len(rows)} folds)")
        lines.append(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        means = frame.mean(numeric_only=True)
        lines.append("  mean: " + ", ".join(f"{k} {means[f'{k}_untempered']:.4f} -> {means[f'{k}_tempered']:.4f}"
                                            for k in ("log_loss", "brier", "ece", "roc_auc")))
        d, se = paired(frame["balanced_accuracy"], frame["balanced_accuracy_untempered"])
        lines.append(f"  same models: balanced accuracy tempered {means['balanced_accuracy']:.4f} vs untempered (its own "
                     f"T = 1 threshold on the carve-out) {means['balanced_accuracy_untempered']:.4f} (paired {d:+.4f} "
                     f"± {se:.4f})")
        if "record_balanced_accuracy" in frame:
            d, se = paired(frame["balanced_accuracy"], frame["record_balanced_accuracy"])
            lines.append(f"  balanced accuracy {means['balanced_accuracy']:.4f} vs the untempered record "
                         f"{means['record_balanced_accuracy']:.4f} (paired {d:+.4f} ± {se:.4f}); ROC-AUC tempered "
                         f"{means['roc_auc_tempered']:.4f} vs the record {means['record_roc_auc']:.4f}; untempered "
                         f"model vs the record's scores: max |diff| {frame['untempered_vs_record_max_abs_diff'].max():.2g}")
        folds_lower += int((frame["log_loss_tempered"] < frame["log_loss_untempered"]).sum())
        n_folds += len(frame)
        ece_lower.append(bool(means["ece_tempered"] < means["ece_untempered"]))
        lines.append("")
    if n_folds:
        keep = folds_lower >= 8 and len(ece_lower) == len(TASKS) and all(ece_lower) and n_folds == 10
        out["rule"] = {"folds_with_lower_log_loss": folds_lower, "folds": n_folds, "ece_lower_per_task": ece_lower,
                       "temperature_stays_on": keep}
        lines.append(("(replicate: reported only) " if SEED else "") + f"Rule: test log loss lower on {folds_lower} of {n_folds} folds (needs >= 8 of 10), pooled ECE "
                     f"lower on {sum(ece_lower)} of {len(ece_lower)} tasks (needs both): "
                     + ("the temperature stays on by default" if keep else "the rule fails"))
        lines.append("")
    # the tempered blend against the tempered route (classification confirmation rule)
    blend_rows = {}
    for task in TASKS:
        folds = fold_dirs(args.runs, BLEND, task, BLEND_VARIANT)
        route = {f.name: f for f in fold_dirs(args.runs, ROUTE, task, ROUTE_VARIANT)}
        rows = []
        for f in folds:
            if f.name not in route or not (f / "predictions.csv").exists():
                continue
            blend = measure_fold(f, args.runs, task)
            info = json.loads((f / "fold.json").read_text())["params"].get("forest_blend", {})
            rows.append({"fold": blend["fold"], "weight": info.get("weight"),
                         "balanced_accuracy": blend["balanced_accuracy"], "roc_auc": blend["roc_auc_tempered"],
                         "log_loss": blend["log_loss_tempered"],
                         "route_balanced_accuracy": balanced_accuracy(route[f.name]),
                         "route_roc_auc": next(r["roc_auc_tempered"] for r in out["tasks"][task]["route"]
                                               if r["fold"] == blend["fold"])})
        if rows:
            blend_rows[task] = rows
            out["tasks"][task]["tempered_blend"] = rows
            frame = pd.DataFrame(rows)
            d, se = paired(frame["balanced_accuracy"], frame["route_balanced_accuracy"])
            lines.append(f"{task}: tempered blend ({BLEND_VARIANT}) vs the tempered route, {len(rows)} folds")
            lines.append(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            lines.append(f"  balanced accuracy {frame['balanced_accuracy'].mean():.4f} vs {frame['route_balanced_accuracy'].mean():.4f} "
                         f"(paired {d:+.4f} ± {se:.4f}); ROC-AUC {frame['roc_auc'].mean():.4f} vs "
                         f"{frame['route_roc_auc'].mean():.4f}")
            out["tasks"][task]["tempered_blend_paired_balanced_accuracy"] = [d, se]
            lines.append("")
    if len(blend_rows) == len(TASKS) and all(len(r) == 5 for r in blend_rows.values()):
        metal = pd.DataFrame(blend_rows["matbench_expt_is_metal"])
        glass = pd.DataFrame(blend_rows["matbench_glass"])
        d, se = paired(metal["balanced_accuracy"], metal["route_balanced_accuracy"])
        ok = (d > 2 * se and metal["roc_auc"].mean() >= metal["route_roc_auc"].mean()
              and glass["balanced_accuracy"].mean() > GLASS_BAR)
        out["blend_rule"] = {"expt_is_metal_paired": [d, se], "glass_balanced_accuracy": glass["balanced_accuracy"].mean(),
                             "blend_becomes_classification_default": bool(ok)}
        lines.append(("(replicate: reported only) " if SEED else "") + f"Tempered blend rule: expt_is_metal paired {d:+.4f} (needs > 2 SE = {2 * se:.4f}), ROC-AUC "
                     f"{metal['roc_auc'].mean():.4f} vs {metal['route_roc_auc'].mean():.4f}, glass balanced accuracy "
                     f"{glass['balanced_accuracy'].mean():.4f} (needs > {GLASS_BAR}): "
                     + ("the blend becomes the classification default" if ok else "it stays a recorded variant"))
    (HERE / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    (HERE / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
