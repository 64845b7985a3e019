"""The pre-registered two-seed rule for the frozen structure branch (benchmarks/imkt/SECTION.md, written before any
run of the arm). Per task and fold an arm's error is the mean of its two pretraining seeds (42 and 7); changes
are per fold, 100 (a - b) / b, mean ± SE over folds, pooled over every task that has all eight records:
  1. imKT+branch vs MLM+branch: pooled <= -3% and beyond 2 SE, and no task worse by more than 2 SE;
  2. the branch helps a backbone: backbone+branch vs the same backbone without it, the same test.

Usage: PYTHONPATH=. python benchmarks/imkt/branch_rule.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.imkt.compare_arms import errors

TASKS = ["matbench_steels", "matbench_jdft2d", "matbench_phonons", "matbench_expt_gap", "matbench_dielectric"]
SEEDS = {"imkt": ("imkt", "imkt_seed7"), "mlm": ("mlm", "mlm_seed7")}
COMPARISONS = {"imkt+branch vs mlm+branch": ("imkt", "branch", "mlm", "branch"),
               "imkt+branch vs imkt": ("imkt", "branch", "imkt", None),
               "mlm+branch vs mlm": ("mlm", "branch", "mlm", None)}


def two_seed(task: str, backbone: str, method: str | None) -> np.ndarray | None:
    """Per-fold error of one arm, averaged over its two pretraining seeds (None if a record is missing)."""
    runs = [errors(task, f"{seed}_{method}" if method else seed) for seed in SEEDS[backbone]]
    return None if any(r is None for r in runs) else (runs[0][0] + runs[1][0]) / 2


def rule(rel_by_task: dict[str, np.ndarray], threshold: float = -3.0) -> dict:
    """The rule on per-task per-fold changes: pooled mean <= threshold and < -2 SE, no task > +2 SE."""
    pooled = np.concatenate(list(rel_by_task.values()))
    mean, se = float(pooled.mean()), float(pooled.std(ddof=1) / np.sqrt(len(pooled)))
    tasks = {t: {"folds": r.round(2).tolist(), "mean": round(float(r.mean()), 2),
                 "se": round(float(r.std(ddof=1) / np.sqrt(len(r))), 2)} for t, r in rel_by_task.items()}
    worse = [t for t, v in tasks.items() if v["mean"] > 2 * v["se"]]
    holds = mean <= threshold and mean < -2 * se and not worse
    return {"tasks": tasks, "pooled_mean": round(mean, 2), "pooled_se": round(se, 2), "folds": len(pooled),
            "tasks_worse_by_2se": worse, "holds": bool(holds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict = {}
    arms = [(b, m) for b in SEEDS for m in ("branch", None)]
    errs = {t: {arm: two_seed(t, *arm) for arm in arms} for t in TASKS}
    complete = [t for t in TASKS if all(e is not None for e in errs[t].values())]  # all eight records
    for name, (a, ma, b, mb) in COMPARISONS.items():
        if not complete:
            continue
        rel = {t: 100.0 * (errs[t][(a, ma)] - errs[t][(b, mb)]) / errs[t][(b, mb)] for t in complete}
        out[name] = rule(rel)
        res = out[name]
        cells = "  ".join(f"{t.removeprefix('matbench_')} {v['mean']:+.1f} ± {v['se']:.1f}" for t, v in res["tasks"].items())
        print(f"{name:28s} pooled {res['pooled_mean']:+.2f} ± {res['pooled_se']:.2f} over {res['folds']} folds"
              f" -> {'holds' if res['holds'] else 'does not hold'}   [{cells}]")
    seeds = {}
    for t in TASKS:  # the seed-to-seed change of each branch arm (the noise a 2-seed mean halves)
        for backbone, (s42, s7) in SEEDS.items():
            a, b = errors(t, f"{s7}_branch"), errors(t, f"{s42}_branch")
            if a is not None and b is not None:
                seeds.setdefault(t, {})[backbone] = round(float((100.0 * (a[0] - b[0]) / b[0]).mean()), 2)
    if seeds:
        print("seed 7 vs seed 42 with the branch (%):", seeds)
    out["seed7_vs_seed42_branch_pct"] = seeds
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
