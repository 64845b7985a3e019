"""The pre-registered rule for the forest blend (benchmarks/matbench/SECTION.md, "Blending with the Magpie forest",
committed before any blend fold ran): per fold, the relative MAE change of ``crossmat_ens2_e100_forest_blend``
(seed 0, ``BLEND=magpie bash benchmarks/matbench/run_default_route.sh``) against the mean of the default route's two
seeds (``crossmat_ens2_e100``, ``crossmat_ens2_e100_seed1``); adopt as the default only if (a) the 25-fold mean is
negative by > 2 SE and (b) no task's 5-fold mean is positive by > 2 SE. Glass is reported (balanced accuracy, bar
0.8607, and ROC-AUC), never part of the decision.

Beside the rule, the paired effect on the same trained model: every blended fold also wrote CrossMat's own test
outputs (``predictions_without_forest.csv``; a fold whose weight came out 1 kept no forest, so its change is 0).
This isolates the blend from the seed spread; it is reported, the rule above decides. Two follow-ups fixed later in
the SECTION are applied when their runs exist: the rule on two-seed means once the seed-1 replicate
(``crossmat_ens2_e100_seed1_forest_blend``) is complete, and the classification confirmation on expt_is_metal.
The last confirmation, on matbench_mp_is_metal (a task no earlier run scored, 8,000 training rows per fold), is
applied when both of its records exist (``mp_is_metal_confirmation``).

Usage: PYTHONPATH=. python benchmarks/matbench/forest_blend_rule.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from benchmarks.calibration.seed2_rule import mean_se
from benchmarks.calibration.stats_rule import ROUTE, TASKS, rel_to_route
from benchmarks.imkt.compare_arms import errors, record_path
from benchmarks.matbench.slim_predictions import with_targets

ARM = "crossmat_ens2_e100_forest_blend"
ARM_SEED1 = "crossmat_ens2_e100_seed1_forest_blend"  # the follow-up replicate (SECTION: "Follow-up")
RUNS = Path("benchmarks/matbench/runs/default_route_ens2_e100_forest_blend")
RUNS_SEED1 = Path("benchmarks/matbench/runs/default_route_ens2_e100_seed1_forest_blend")
BAR = 0.8607


def fold_frames(task: str, runs: Path = RUNS, arm: str = ARM) -> list[tuple[dict, pd.DataFrame, pd.DataFrame | None]]:
    """(fold.json, predictions.csv, predictions_without_forest.csv or None) of every finished blended fold."""
    out = []
    for fold in sorted((runs / task / arm).glob("fold_*")):
        if (fold / "fold.json").is_file():
            alone = fold / "predictions_without_forest.csv"
            out.append((json.loads((fold / "fold.json").read_text()), pd.read_csv(fold / "predictions.csv"),
                        pd.read_csv(alone) if alone.is_file() else None))
    return out


def same_model(task: str, runs: Path = RUNS, arm: str = ARM) -> dict:
    """Per fold: the chosen CrossMat weight and the blend's MAE change (%) against the same model without its forest."""
    weights, rel = [], []
    for info, pred, alone in fold_frames(task, runs, arm):
        weights.append(info["params"]["forest_blend"]["weight"])
        blend = float(np.abs(pred["prediction"] - pred["target"]).mean())
        if alone is None:
            rel.append(0.0)
            continue
        ref = pred[["id", "target"]].merge(alone, on="id")
        crossmat = float(np.abs(ref["prediction"] - ref["target"]).mean())
        rel.append(100.0 * (blend - crossmat) / crossmat)
    return {"weights": weights, "per_fold_pct": [round(r, 2) for r in rel]}


def glass() -> dict | None:
    """Glass, means over folds: the blend's balanced accuracy (the scores put 0.5 on its own threshold) and ROC-AUC,
    CrossMat's own ROC-AUC from the same models, and the route's."""
    folds = fold_frames("matbench_glass")
    if not folds:
        return None
    both = [p.merge(a if a is not None else p[["id", "prediction"]], on="id", suffixes=("", "_alone"))
            for _, p, a in folds]
    auc = [roc_auc_score(b["target"].astype(int), b["prediction"]) for b in both]
    auc_alone = [roc_auc_score(b["target"].astype(int), b["prediction_alone"]) for b in both]
    route = json.loads(record_path("matbench_glass", ROUTE[0]).read_text())
    per_fold = [balanced_accuracy_score(p["target"].astype(int), (p["prediction"] >= 0.5).astype(int)) for _, p, _ in folds]
    return {"folds": len(folds), "weights": [i["params"]["forest_blend"]["weight"] for i, _, _ in folds],
            "balanced_accuracy_per_fold": [round(float(b), 4) for b in per_fold],
            "balanced_accuracy": float(np.mean(per_fold)),
            "rocauc": float(np.mean(auc)), "rocauc_crossmat_same_models": float(np.mean(auc_alone)),
            "route_balanced_accuracy": route["mean"], "route_rocauc": route["all_metrics"]["rocauc"], "bar": BAR}


def two_seed_rule() -> dict:
    """The follow-up: (a) and (b) on the blend's two-seed mean against the route's two-seed mean, per fold."""
    per_task, pooled, pooled_same = {}, [], []
    for t in TASKS:
        blend = np.mean([errors(t, a)[0] for a in (ARM, ARM_SEED1)], axis=0)
        ref = np.mean([errors(t, r)[0] for r in ROUTE], axis=0)
        r = 100.0 * (blend - ref) / ref
        m, se = mean_se(r)
        same = same_model(t, RUNS_SEED1, ARM_SEED1)
        sm, sse = mean_se(np.asarray(same["per_fold_pct"]))
        per_task[t] = {"per_fold_pct": r.round(2).tolist(), "mean": m, "se": se, "worse_by_2se": m > 2 * se,
                       "seed1_weights": same["weights"], "seed1_same_model_per_fold_pct": same["per_fold_pct"]}
        pooled += r.tolist()
        pooled_same += same["per_fold_pct"]
        print(f"follow-up {t:22s} two seeds vs two seeds {m:+6.2f} ± {se:.2f}; seed 1 weights {same['weights']}, "
              f"same model {sm:+.2f} ± {sse:.2f}")
    sm, sse = mean_se(np.asarray(pooled_same))
    print(f"follow-up: seed 1 against the same models without the forest, pooled {sm:+.2f} ± {sse:.2f}")
    pm, pse = mean_se(np.asarray(pooled))
    rule = {"a_pooled_better_by_2se": pm < -2 * pse,
            "b_no_task_worse_by_2se": not any(v["worse_by_2se"] for v in per_task.values())}
    verdict = "adopt" if all(rule.values()) else "keep the default"
    print(f"follow-up pooled over {len(pooled)} folds: {pm:+.2f} ± {pse:.2f}; rule {rule}: {verdict}")
    return {"tasks": per_task, "pooled_mean": pm, "pooled_se": pse, "rule": rule, "verdict": verdict,
            "seed1_same_model_pooled_mean": sm, "seed1_same_model_pooled_se": sse}


def classification_confirmation() -> dict | None:
    """SECTION's classification confirmation on matbench_expt_is_metal: the blend's balanced accuracy above the
    route's by more than 2 SE of the per-fold paired difference, and its mean ROC-AUC not lower."""
    task = "matbench_expt_is_metal"
    if not record_path(task, ARM).is_file():
        return None
    blend, route = (json.loads(record_path(task, a).read_text()) for a in (ARM, ROUTE[0]))
    diff = np.asarray(blend["folds"]) - np.asarray(route["folds"])
    m, se = mean_se(diff)
    auc, route_auc = blend["all_metrics"]["rocauc"], route["all_metrics"]["rocauc"]
    rule = {"balanced_accuracy_up_by_2se": m > 2 * se, "rocauc_not_lower": auc >= route_auc}
    verdict = "the blend becomes the classification default" if all(rule.values()) else "keep the default"
    print(f"expt_is_metal confirmation: balanced accuracy {blend['mean']:.4f} vs route {route['mean']:.4f} "
          f"(paired {m:+.4f} ± {se:.4f}, folds {diff.round(4).tolist()}), ROC-AUC {auc:.4f} vs {route_auc:.4f}; "
          f"rule {rule}: {verdict}")
    return {"balanced_accuracy": blend["mean"], "route_balanced_accuracy": route["mean"], "paired_mean": m,
            "paired_se": se, "rocauc": auc, "route_rocauc": route_auc, "rule": rule, "verdict": verdict}


MP_IS_METAL = ("crossmat_ens2_e100_forest_blend_n8000_tempered", "crossmat_ens2_e100_n8000_tempered")


def mp_is_metal_confirmation() -> dict | None:
    """SECTION's confirmation on matbench_mp_is_metal (fixed before any run of it): the tempered blend becomes the
    binary-classification default if (a) its mean balanced accuracy is not below the tempered route's by more than
    1 SE of the per-fold paired differences and (b) its mean ROC-AUC is not lower. Also reported: the same run's
    Magpie forest and the blended models' own ROC-AUC without the forest."""
    task = "matbench_mp_is_metal"
    if not all(record_path(task, a).is_file() for a in MP_IS_METAL):
        return None
    blend, route = (json.loads(record_path(task, a).read_text()) for a in MP_IS_METAL)
    forest = json.loads(record_path(task, "rf_magpie").read_text())
    diff = np.asarray(blend["folds"]) - np.asarray(route["folds"])
    m, se = mean_se(diff)
    auc, route_auc = blend["all_metrics"]["rocauc"], route["all_metrics"]["rocauc"]
    runs = Path("benchmarks/matbench/runs/default_route_ens2_e100_forest_blend_n8000_tempered")
    folds = fold_frames(task, runs, MP_IS_METAL[0])
    weights = [i["params"]["forest_blend"]["weight"] for i, _, _ in folds]
    # the slimmed fold files carry no targets: joined by id from the shared data (slim_predictions.py)
    auc_alone = float(np.mean([roc_auc_score(with_targets(p, task)["target"].astype(int),
                                             (a if a is not None else p)["prediction"]) for _, p, a in folds]))
    rule = {"a_balanced_accuracy_not_below_by_1se": m >= -se, "b_rocauc_not_lower": auc >= route_auc}
    verdict = "the blend becomes the binary-classification default" if all(rule.values()) else "keep the default"
    print(f"mp_is_metal confirmation (8,000 training rows per fold): balanced accuracy {blend['mean']:.4f} vs route "
          f"{route['mean']:.4f} (paired {m:+.4f} ± {se:.4f}, folds {diff.round(4).tolist()}), ROC-AUC {auc:.4f} vs "
          f"{route_auc:.4f} (the blended models without the forest {auc_alone:.4f}); forest of the same run "
          f"{forest['mean']:.4f}; CrossMat weights {weights}; rule {rule}: {verdict}")
    return {"balanced_accuracy": blend["mean"], "route_balanced_accuracy": route["mean"], "paired_mean": m,
            "paired_se": se, "paired_per_fold": diff.round(4).tolist(), "rocauc": auc, "route_rocauc": route_auc,
            "rocauc_same_models_without_forest": auc_alone, "forest_balanced_accuracy": forest["mean"],
            "weights": weights, "rule": rule, "verdict": verdict}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    per_task, pooled, pooled_same, pending = {}, [], [], []
    for t in TASKS:
        same = same_model(t)
        r = rel_to_route(t, ARM)
        if r is None:
            pending.append(t)
            if same["weights"]:
                print(f"{t:22s} pending: {len(same['weights'])} fold(s), weights {same['weights']}, same model "
                      f"{same['per_fold_pct']}")
            continue
        m, se = mean_se(r)
        sm, sse = mean_se(np.asarray(same["per_fold_pct"]))
        per_task[t] = {"per_fold_pct": r.round(2).tolist(), "mean": m, "se": se, "worse_by_2se": m > 2 * se,
                       "weights": same["weights"], "same_model_per_fold_pct": same["per_fold_pct"],
                       "same_model_mean": sm, "same_model_se": sse}
        pooled += r.tolist()
        pooled_same += same["per_fold_pct"]
        print(f"{t:22s} vs route {m:+6.2f} ± {se:.2f}  folds {r.round(1).tolist()}; weights {same['weights']}; "
              f"same model {sm:+.2f} ± {sse:.2f}")
    out: dict = {"tasks": per_task, "pending": pending}
    if pooled:
        pm, pse = mean_se(np.asarray(pooled))
        sm, sse = mean_se(np.asarray(pooled_same))
        rule = {"a_pooled_better_by_2se": pm < -2 * pse,
                "b_no_task_worse_by_2se": not any(v["worse_by_2se"] for v in per_task.values())}
        verdict = ("pending (screening tasks missing)" if pending
                   else "adopt" if all(rule.values()) else "keep the default")
        print(f"pooled over {len(pooled)} folds: {pm:+.2f} ± {pse:.2f} vs the route's two seeds; same model "
              f"{sm:+.2f} ± {sse:.2f}; rule {rule}; pending tasks {pending}: {verdict}")
        out.update(pooled_mean=pm, pooled_se=pse, same_model_pooled_mean=sm, same_model_pooled_se=sse, rule=rule,
                   verdict=verdict)
    if not pending and all(errors(t, ARM_SEED1) is not None and len(errors(t, ARM_SEED1)[0]) == 5 for t in TASKS):
        out["follow_up"] = two_seed_rule()
    g = glass()
    if g is not None:
        print(f"glass (reported, not decisive; {g['folds']} folds, weights {g['weights']}): balanced accuracy "
              f"{g['balanced_accuracy']:.4f} (route {g['route_balanced_accuracy']:.4f}, bar {BAR}), ROC-AUC "
              f"{g['rocauc']:.4f} (the same models without the forest {g['rocauc_crossmat_same_models']:.4f}; route "
              f"{g['route_rocauc']:.4f}); means over folds")
        out["glass"] = g
    confirmation = classification_confirmation()
    if confirmation is not None:
        out["classification_confirmation"] = confirmation
    last = mp_is_metal_confirmation()
    if last is not None:
        out["mp_is_metal_confirmation"] = last
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
