"""The pre-registered few-label rule (benchmarks/imkt/SECTION.md, "Few labels", written before any run): the default
recipe with 300 training rows per fold (records ``crossmat_default_from_<backbone>_n300`` by run_low_data.sh). Per
task and fold the clean-view imKT backbones' error is the mean of their two pretraining seeds, against the same mean
of the two MLM-only backbones; changes are per fold, 100 (a - b) / b, mean ± SE over folds, pooled over the tasks:
imKT helps with few labels if the pooled change is <= -3% beyond 2 SE and no task is worse by more than 2 SE
(branch_rule.rule). Beside the rule: the shipped imKT backbone (one seed) against MLM-only seed 42, and every
backbone against scratch.

The replication (SECTION.md, "Few labels, replication", also written before its runs) reads the same rule on five
other tasks (``--tasks replication``), with 1 - balanced accuracy as the error of the classification tasks, and
``--bar`` adds, beside the rule, issue 23's own bar over every task that has the four records: the mean per-task change
of imKT against MLM-only (at least 3% better), better on more tasks than worse, and imKT against scratch (at least
10% better on average).

Usage: PYTHONPATH=. python benchmarks/imkt/low_data_rule.py [--n 300] [--tasks first|replication|all] [--bar] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.imkt.aux_rule import arm_errors as folds
from benchmarks.imkt.branch_rule import rule
from benchmarks.imkt.compare_arms import paired

TASKS = ["matbench_phonons", "matbench_dielectric", "matbench_expt_gap", "matbench_log_kvrh"]
# every other task the backbones may be used on with more than 300 training rows per fold (steels has 249-250: its
# 300-row run is its full data; the mp_* tasks are outside the backbones' leakage rule)
REPLICATION = ["matbench_jdft2d", "matbench_log_gvrh", "matbench_expt_is_metal", "matbench_glass", "matbench_perovskites"]
TASK_SETS = {"first": TASKS, "replication": REPLICATION, "all": TASKS + REPLICATION}
ARM, CONTROL = ("imkt_clean", "imkt_clean_seed7"), ("mlm", "mlm_seed7")
BESIDE = ("imkt", "mlm", "mlm_seed7", "imkt_clean", "imkt_clean_seed7")


def issue_bar(runs: dict, complete: list[str]) -> dict:
    """Issue 23's "done when", read at this label count: the two-seed imKT mean against the two-seed MLM-only mean and
    against scratch, per task (mean over folds of the paired change), then over tasks."""
    per_task, vs_scratch = {}, {}
    for t in complete:
        arm = (runs[t][ARM[0]] + runs[t][ARM[1]]) / 2
        per_task[t] = paired(arm, (runs[t][CONTROL[0]] + runs[t][CONTROL[1]]) / 2)
        if runs[t]["scratch"] is not None:
            vs_scratch[t] = paired(arm, runs[t]["scratch"])
    changes = [v["mean_pct"] for v in per_task.values()]
    bar = {"tasks": len(changes), "mean_change_vs_mlm_pct": round(sum(changes) / len(changes), 2),
           "better_by_2se": sum(v["verdict"] == "better" for v in per_task.values()),
           "worse_by_2se": sum(v["verdict"] == "worse" for v in per_task.values()),
           "lower_mean": sum(c < 0 for c in changes), "higher_mean": sum(c > 0 for c in changes),
           "per_task_vs_mlm": per_task}
    if vs_scratch:
        bar["mean_change_vs_scratch_pct"] = round(sum(v["mean_pct"] for v in vs_scratch.values()) / len(vs_scratch), 2)
        bar["per_task_vs_scratch"] = vs_scratch
    bar["meets_bar"] = bool(bar["tasks"] >= 8 and bar["mean_change_vs_mlm_pct"] <= -3 and bar["lower_mean"] > bar["higher_mean"]
                            and bar.get("mean_change_vs_scratch_pct", 0.0) <= -10 and len(vs_scratch) == len(per_task))
    print(f"issue 23 bar over {bar['tasks']} tasks: imKT vs MLM-only {bar['mean_change_vs_mlm_pct']:+.2f}% on average, "
          f"lower on {bar['lower_mean']} / higher on {bar['higher_mean']} (beyond 2 SE: {bar['better_by_2se']} better, "
          f"{bar['worse_by_2se']} worse); vs scratch {bar.get('mean_change_vs_scratch_pct', 'n/a')}% over "
          f"{len(vs_scratch)} tasks -> {'met' if bar['meets_bar'] else 'not met'}")
    return bar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="training rows per fold of the records (run_low_data.sh N_TRAIN)")
    ap.add_argument("--tasks", choices=sorted(TASK_SETS), default="first",
                    help="the tasks the rule reads: the first four, the five of the replication, or all nine")
    ap.add_argument("--bar", action="store_true", help="also issue 23's bar over the tasks with the four records")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tasks = TASK_SETS[args.tasks]
    name = {b: f"{b}_n{args.n}" for b in (*ARM, *CONTROL, "imkt", "scratch")}
    runs = {t: {b: folds(t, n) for b, n in name.items()} for t in tasks}
    complete = [t for t in tasks if all(runs[t][b] is not None for b in (*ARM, *CONTROL))]
    out: dict = {"n_train": args.n, "tasks": tasks, "complete_tasks": complete}
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
    if args.bar and complete:
        out["issue 23 bar"] = issue_bar(runs, complete)
    beside: dict = {}
    for t in tasks:
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
