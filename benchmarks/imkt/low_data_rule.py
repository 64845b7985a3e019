"""The pre-registered few-label rule (benchmarks/imkt/SECTION.md, "Few labels", written before any run): the default
recipe with 300 training rows per fold (records ``crossmat_default_from_<backbone>_n300`` by run_low_data.sh). Per
task and fold the clean-view imKT backbones' error is the mean of their two pretraining seeds, against the same mean
of the two MLM-only backbones; changes are per fold, 100 (a - b) / b, mean ± SE over folds, pooled over the tasks:
imKT helps with few labels if the pooled change is <= -3% beyond 2 SE and no task is worse by more than 2 SE
(branch_rule.rule). Beside the rule: the shipped imKT backbone (one seed) against MLM-only seed 42, and every
backbone against scratch.

Usage: PYTHONPATH=. python benchmarks/imkt/low_data_rule.py [--n 300] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.imkt.aux_rule import arm_errors as folds
from benchmarks.imkt.branch_rule import rule
from benchmarks.imkt.compare_arms import paired

TASKS = ["matbench_phonons", "matbench_dielectric", "matbench_expt_gap", "matbench_log_kvrh"]
ARM, CONTROL = ("imkt_clean", "imkt_clean_seed7"), ("mlm", "mlm_seed7")
BESIDE = ("imkt", "mlm", "mlm_seed7", "imkt_clean", "imkt_clean_seed7")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="training rows per fold of the records (run_low_data.sh N_TRAIN)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    name = {b: f"{b}_n{args.n}" for b in (*ARM, *CONTROL, "imkt", "scratch")}
    runs = {t: {b: folds(t, n) for b, n in name.items()} for t in TASKS}
    complete = [t for t in TASKS if all(runs[t][b] is not None for b in (*ARM, *CONTROL))]
    out: dict = {"n_train": args.n, "complete_tasks": complete}
    if complete:
        arm = {t: (runs[t][ARM[0]] + runs[t][ARM[1]]) / 2 for t in complete}
        control = {t: (runs[t][CONTROL[0]] + runs[t][CONTROL[1]]) / 2 for t in complete}
        res = rule({t: 100.0 * (arm[t] - control[t]) / control[t] for t in complete})
        for t, v in res["tasks"].items():
            v["mae_two_seed_mean"] = {"imkt_clean": round(float(arm[t].mean()), 4), "mlm": round(float(control[t].mean()), 4)}
            print(f"{t.removeprefix('matbench_'):12s} imKT clean view {arm[t].mean():.4g}  MLM-only {control[t].mean():.4g}"
                  f"  change {v['mean']:+.1f}% ± {v['se']:.1f}")
        print(f"pooled {res['pooled_mean']:+.2f} ± {res['pooled_se']:.2f} over {res['folds']} folds -> the rule "
              f"{'holds: imKT helps with few labels' if res['holds'] else 'does not hold'}")
        out["imkt_clean vs mlm (two-seed means)"] = res
    beside: dict = {}
    for t in TASKS:
        row = {}
        if runs[t]["imkt"] is not None and runs[t]["mlm"] is not None:
            row["imkt (shipped) vs mlm"] = paired(runs[t]["imkt"], runs[t]["mlm"])
        if runs[t]["scratch"] is not None:
            for b in BESIDE:
                if runs[t][b] is not None:
                    row[f"{b} vs scratch"] = paired(runs[t][b], runs[t]["scratch"])
        if row:
            beside[t] = row
            print(f"{t.removeprefix('matbench_'):12s} beside the rule (%):",
                  {k: (v["mean_pct"], v["se_pct"]) for k, v in row.items()})
    out["beside the rule"] = beside
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
