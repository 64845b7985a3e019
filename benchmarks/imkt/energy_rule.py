"""The pre-registered two-seed rule for the energy teacher (benchmarks/imkt/SECTION.md, "The structure model's
predictions as the teacher", written before any run of the arm). Per task and fold an arm's error is the mean of its
two pretraining seeds (42 and 7); changes are per fold, 100 (a - b) / b, mean ± SE over folds, pooled over the
screening tasks that have all four records:
  1. imKT-energy vs MLM-only: pooled <= -3%, beyond 2 SE, and no task worse by more than 2 SE (branch_rule.rule);
     a task's own difference is read as one only if it is also larger than half the larger seed-to-seed change;
  2. futility: once phonons, jdft2d and steels are complete, a pooled change >= 0 stops the arm there;
  3. confirmation (only after 1 holds): the same two seeds on the other five tasks, then issue 23's criterion over
     every task with all four records: >= 8 tasks, pooled change vs MLM-only <= -3%, better (mean change < 0) on more
     tasks than worse, and the mean over tasks of the change vs scratch <= -10% (scratch: the same-code rerun
     crossmat_default_from_scratch where there is one, else the crossmat_default record).
For reference (not part of the rule): imKT-energy against the CHGNet-embedding imKT backbone (seed 42, same code).
``--arm imkt_energy_clean`` applies the same rule to the clean-view arm (SECTION.md, "Alignment on the clean
formula", records crossmat_default_from_imkt_energy_clean[_seed7]) and also reports it against the masked-view
energy arm (two-seed means, paired per fold; not part of the rule). ``--arm imkt_clean`` (SECTION.md, "The CHGNet
teacher on the clean formula") applies it to the shipped CHGNet-embedding recipe with the clean view, and reports it
against that recipe's masked view (records crossmat_default_from_imkt_rerun and _imkt_seed7; not part of the rule).

Usage: PYTHONPATH=. python benchmarks/imkt/energy_rule.py [--arm imkt_energy_clean | imkt_clean] [--controls A B]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.imkt.aux_rule import arm_errors as folds
from benchmarks.imkt.branch_rule import rule
from benchmarks.imkt.compare_arms import paired

TASKS = ["matbench_phonons", "matbench_jdft2d", "matbench_steels", "matbench_dielectric", "matbench_expt_gap"]
FUTILITY_TASKS = TASKS[:3]
CONFIRM = ["matbench_expt_is_metal", "matbench_glass", "matbench_log_kvrh", "matbench_log_gvrh", "matbench_perovskites"]
# records crossmat_default_from_<name>: the arms by run_transfer.sh, the MLM-only controls by run_keep.sh rerun
SEEDS = {"arm": ("imkt_energy", "imkt_energy_seed7"), "mlm": ("mlm_rerun", "mlm_seed7_rerun")}
REFERENCE = "imkt_rerun"
# the same teacher with the alignment read from the masked MLM pass (reported beside a clean-view arm's rule)
MASKED_VIEW = {"imkt_energy_clean": SEEDS["arm"], "imkt_clean": ("imkt_rerun", "imkt_seed7")}


def criterion(runs: dict, done: list[str]) -> dict:
    """Issue 23's bar over every task with all four records (rule step 3); two-seed means, paired per fold."""
    mean = {t: {name: (r[0] + r[1]) / 2 for name, r in runs[t].items()} for t in done}
    rel = {t: 100.0 * (mean[t]["arm"] - mean[t]["mlm"]) / mean[t]["mlm"] for t in done}
    vs_mlm = rule(rel)
    better = sum(v["mean"] < 0 for v in vs_mlm["tasks"].values())
    vs_scratch = {}
    for t in done:
        base = folds(t, "scratch")
        base = folds(t, "crossmat_default") if base is None else base
        if base is not None:
            vs_scratch[t] = round(float((100.0 * (mean[t]["arm"] - base) / base).mean()), 2)
    scratch_mean = float(np.mean(list(vs_scratch.values()))) if vs_scratch else float("nan")
    holds = (len(done) >= 8 and vs_mlm["pooled_mean"] <= -3.0 and better > len(done) - better
             and len(vs_scratch) == len(done) and scratch_mean <= -10.0)
    res = {"tasks": done, "vs_mlm": vs_mlm, "tasks_better": better, "tasks_worse": len(done) - better,
           "vs_scratch_pct": vs_scratch, "vs_scratch_mean_pct": round(scratch_mean, 2), "holds": bool(holds)}
    print(f"issue criterion over {len(done)} tasks: vs MLM-only pooled {vs_mlm['pooled_mean']:+.2f} ± "
          f"{vs_mlm['pooled_se']:.2f}, better on {better} / worse on {len(done) - better}; vs scratch mean "
          f"{scratch_mean:+.2f}% {vs_scratch} -> {'holds' if holds else 'does not hold (yet)'}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", default="imkt_energy", help="the arm's seed-42 record name (imkt_energy_clean, imkt_clean: clean views)")
    ap.add_argument("--controls", nargs=2, default=list(SEEDS["mlm"]), metavar=("SEED42", "SEED7"),
                    help="the MLM-only control records (default: mlm_rerun mlm_seed7_rerun; the imkt_clean arm, run on "
                         "a machine where they do not reproduce: mlm_avx512_rerun mlm_seed7_avx512_rerun)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    seeds = {"mlm": tuple(args.controls), "arm": (args.arm, f"{args.arm}_seed7")}
    runs = {t: {name: [folds(t, s) for s in pair] for name, pair in seeds.items()} for t in TASKS + CONFIRM}
    done = [t for t in TASKS + CONFIRM if all(r is not None for arm in runs[t].values() for r in arm)]
    complete = [t for t in TASKS if t in done]
    out: dict = {"complete_tasks": complete}
    if not complete:
        print("no screening task has all four records yet")
    else:
        mean = {t: {name: (r[0] + r[1]) / 2 for name, r in runs[t].items()} for t in complete}
        rel = {t: 100.0 * (mean[t]["arm"] - mean[t]["mlm"]) / mean[t]["mlm"] for t in complete}
        res = rule(rel)
        seed_gap = {t: {name: round(float((100.0 * (r[1] - r[0]) / r[0]).mean()), 2) for name, r in runs[t].items()}
                    for t in complete}  # fmt: skip
        for t, v in res["tasks"].items():
            half_gap = max(abs(g) for g in seed_gap[t].values()) / 2
            v["seed7_vs_seed42_pct"] = seed_gap[t]
            v["beyond_2se_and_half_seed_gap"] = bool(abs(v["mean"]) > max(2 * v["se"], half_gap))
            v["mae_two_seed_mean"] = {name: round(float(m.mean()), 4) for name, m in mean[t].items()}
        res["futility_stop"] = (all(t in complete for t in FUTILITY_TASKS)
                                and float(np.concatenate([rel[t] for t in FUTILITY_TASKS]).mean()) >= 0)  # fmt: skip
        out["arm vs mlm"] = res
        for t, v in res["tasks"].items():
            print(f"{t.removeprefix('matbench_'):12s} {args.arm} {v['mae_two_seed_mean']['arm']:.4g}  mlm "
                  f"{v['mae_two_seed_mean']['mlm']:.4g}  change {v['mean']:+.1f}% ± {v['se']:.1f}  seed 7 vs 42 "
                  f"{v['seed7_vs_seed42_pct']}  {'clear' if v['beyond_2se_and_half_seed_gap'] else 'inside the spread'}")
        print(f"{args.arm} vs mlm, pooled {res['pooled_mean']:+.2f} ± {res['pooled_se']:.2f} over {res['folds']} folds -> "
              f"rule 1 {'holds' if res['holds'] else 'does not hold'}; futility stop: {res['futility_stop']}")
    if args.arm in MASKED_VIEW:
        view = {}
        for t in done:
            masked = [folds(t, s) for s in MASKED_VIEW[args.arm]]
            if all(r is not None for r in masked):
                view[t] = paired(sum(runs[t]["arm"]) / 2, sum(masked) / 2)
        if view:
            print(f"{args.arm} vs the same teacher's masked view {MASKED_VIEW[args.arm]} (two-seed means, %):",
                  {t.removeprefix("matbench_"): (v["mean_pct"], v["se_pct"]) for t, v in view.items()})
        out["vs_masked_view"] = view
    if any(t in done for t in CONFIRM):
        out["issue criterion"] = criterion(runs, done)
    ref = {}
    for t in TASKS:
        a, b = runs[t]["arm"][0], folds(t, REFERENCE)
        if a is not None and b is not None:
            ref[t] = {k: v for k, v in paired(a, b).items() if k in ("mean_pct", "se_pct")}
    if ref:
        print(f"reference, {args.arm} seed 42 vs CHGNet-embedding imKT (%):", ref)
    out["arm_seed42_vs_imkt_pct"] = ref
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
