"""The pre-registered two-seed rule for adopting the same-cost 2 x 100 ensemble as the default
(benchmarks/matbench/SECTION.md, committed before either seed-1 run): per fold, the relative error change of
``crossmat_ens2_e100`` vs ``crossmat`` (seed 0) and of ``crossmat_ens2_e100_seed1`` vs ``crossmat_seed1`` (seed 1)
are averaged; adopt only if (a) the 25-fold mean is negative by > 2 SE, (b) no task's 5-fold mean is positive by
> 2 SE, (c) the seed-1 pair alone has a negative 25-fold mean. Also reports the seed-to-seed spread of each arm.

Usage: PYTHONPATH=. python benchmarks/calibration/seed2_rule.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.imkt.compare_arms import errors

TASKS = ["matbench_steels", "matbench_jdft2d", "matbench_phonons", "matbench_expt_gap", "matbench_dielectric"]
PAIRS = {0: ("crossmat_ens2_e100", "crossmat"), 1: ("crossmat_ens2_e100_seed1", "crossmat_seed1")}


def rel(task: str, arm: str, ref: str) -> np.ndarray:
    """Per-fold relative error change (%) of ``arm`` against ``ref`` on ``task``."""
    a, b = errors(task, arm)[0], errors(task, ref)[0]
    return 100.0 * (a - b) / b


def mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    per_task, pooled, seed1 = {}, [], []
    for t in TASKS:
        r0, r1 = rel(t, *PAIRS[0]), rel(t, *PAIRS[1])
        avg = (r0 + r1) / 2
        m, se = mean_se(avg)
        spread = {"default route": float(rel(t, PAIRS[1][1], PAIRS[0][1]).mean()),  # seed 1 vs seed 0, same arm
                  "2 x 100": float(rel(t, PAIRS[1][0], PAIRS[0][0]).mean())}
        per_task[t] = {"seed0": r0.round(2).tolist(), "seed1": r1.round(2).tolist(), "mean": m, "se": se,
                       "worse_by_2se": m > 2 * se, "seed1_vs_seed0_same_arm_pct": spread}
        pooled += avg.tolist()
        seed1 += r1.tolist()
        print(f"{t:22s} seed0 {r0.mean():+6.2f}  seed1 {r1.mean():+6.2f}  averaged {m:+6.2f} ± {se:.2f}"
              f"  (seed 1 vs seed 0, same arm: route {spread['default route']:+.1f}%, 2x100 {spread['2 x 100']:+.1f}%)")
    pm, pse = mean_se(np.asarray(pooled))
    s1m = float(np.mean(seed1))
    rule = {"a_pooled_better_by_2se": pm < -2 * pse, "b_no_task_worse_by_2se": not any(v["worse_by_2se"] for v in per_task.values()),
            "c_seed1_pooled_negative": s1m < 0}
    verdict = "adopt" if all(rule.values()) else "keep the default"
    print(f"pooled over 25 folds (seed-averaged): {pm:+.2f} ± {pse:.2f}; seed 1 alone {s1m:+.2f}; rule {rule}: {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"tasks": per_task, "pooled_mean": pm, "pooled_se": pse, "seed1_pooled_mean": s1m,
                                         "rule": rule, "verdict": verdict}, indent=1) + "\n")


if __name__ == "__main__":
    main()
