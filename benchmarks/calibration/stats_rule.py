"""The pre-registered rule for the Magpie composition statistics arm (benchmarks/matbench/SECTION.md, "Magpie
composition statistics in the head", committed before any fold ran): per fold, the relative MAE change of
``crossmat_ens2_e100_magpie_stats`` (seed 0) against the mean of the default route's two seeds
(``crossmat_ens2_e100``, ``crossmat_ens2_e100_seed1``); adopt only if (a) the 25-fold mean is negative by > 2 SE,
(b) no task's 5-fold mean is positive by > 2 SE, (c) the arm's seed-1 replicate (``..._seed1_magpie_stats``) also has
a negative pooled mean. Tasks without a complete record yet are listed as pending; glass is reported (balanced
accuracy error and ROC-AUC), never part of the decision.

Usage: PYTHONPATH=. python benchmarks/calibration/stats_rule.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.calibration.seed2_rule import mean_se
from benchmarks.imkt.compare_arms import errors, record_path

TASKS = ["matbench_steels", "matbench_jdft2d", "matbench_phonons", "matbench_expt_gap", "matbench_dielectric"]
ARM, ARM_SEED1 = "crossmat_ens2_e100_magpie_stats", "crossmat_ens2_e100_seed1_magpie_stats"
ROUTE = ("crossmat_ens2_e100", "crossmat_ens2_e100_seed1")


def rel_to_route(task: str, arm: str) -> np.ndarray | None:
    """Per-fold relative error change (%) of ``arm`` against the route's two-seed mean (None until complete)."""
    got = errors(task, arm)
    if got is None or len(got[0]) != 5:
        return None
    ref = np.mean([errors(task, r)[0] for r in ROUTE], axis=0)
    return 100.0 * (got[0] - ref) / ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    per_task, pooled, pending = {}, [], []
    for t in TASKS:
        r = rel_to_route(t, ARM)
        if r is None:
            pending.append(t)
            continue
        m, se = mean_se(r)
        per_task[t] = {"per_fold_pct": r.round(2).tolist(), "mean": m, "se": se, "worse_by_2se": m > 2 * se}
        pooled += r.tolist()
        print(f"{t:22s} {m:+6.2f} ± {se:.2f}  folds {r.round(1).tolist()}")
    out: dict = {"tasks": per_task, "pending": pending}
    if pooled:
        pm, pse = mean_se(np.asarray(pooled))
        s1 = [rel_to_route(t, ARM_SEED1) for t in TASKS]
        s1m = float(np.mean(np.concatenate(s1))) if all(x is not None for x in s1) else None
        rule = {"a_pooled_better_by_2se": pm < -2 * pse,
                "b_no_task_worse_by_2se": not any(v["worse_by_2se"] for v in per_task.values()),
                "c_seed1_pooled_negative": None if s1m is None else s1m < 0}
        ab = rule["a_pooled_better_by_2se"] and rule["b_no_task_worse_by_2se"]
        if pending:
            verdict = "pending (screening tasks missing)"
        elif not ab:
            verdict = "keep the default"
        elif s1m is None:
            verdict = "pending (the seed-1 replicate decides)"
        else:
            verdict = "adopt" if s1m < 0 else "keep the default"
        print(f"pooled over {len(pooled)} folds: {pm:+.2f} ± {pse:.2f}; seed-1 replicate "
              f"{'not run' if s1m is None else f'{s1m:+.2f}'}; rule {rule}; pending tasks {pending}: {verdict}")
        out.update(pooled_mean=pm, pooled_se=pse, seed1_pooled_mean=s1m, rule=rule, verdict=verdict)
    glass = record_path("matbench_glass", ARM)
    if glass.is_file():
        rec = json.loads(glass.read_text())
        route = [json.loads(record_path("matbench_glass", r).read_text()) for r in ROUTE[:1]]
        print(f"glass (reported, not decisive): balanced accuracy {rec['mean']:.4f} (route {route[0]['mean']:.4f}), "
              f"ROC-AUC {rec['all_metrics']['rocauc']:.4f} (route {route[0]['all_metrics']['rocauc']:.4f}); bar 0.8607")
        out["glass"] = {"balanced_accuracy": rec["mean"], "rocauc": rec["all_metrics"]["rocauc"],
                        "route_balanced_accuracy": route[0]["mean"], "route_rocauc": route[0]["all_metrics"]["rocauc"]}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
