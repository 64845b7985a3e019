"""The pre-registered rule for the fine-tuning structure auxiliary (benchmarks/imkt/SECTION.md, "a structure
auxiliary on the task's own compounds", written before any run). Changes are per fold, 100 (a - b) / b, mean ± SE
over folds, pooled over the screening tasks that have both records:
  1. the auxiliary helps: imKT+aux vs imKT (same backbone, no auxiliary), and MLM+aux vs MLM;
  2. cross-modal transfer beats MLM-only: imKT+aux vs MLM-only;
each needs pooled <= -3%, beyond 2 SE, and no task worse by more than 2 SE (branch_rule.rule).

Usage: PYTHONPATH=. python benchmarks/imkt/aux_rule.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.imkt.branch_rule import rule
from benchmarks.imkt.compare_arms import errors

TASKS = ["matbench_phonons", "matbench_jdft2d", "matbench_dielectric", "matbench_expt_gap"]


def arm_errors(task: str, arm: str) -> np.ndarray | None:
    """Per-fold errors of one record (None without it)."""
    found = errors(task, arm)
    return None if found is None else found[0]


# the plain records crossmat_default_from_{imkt,mlm} came from older code that no longer reproduces them (jdft2d fold
# 0: 32.72 today against the record's 35.45), so, as the rule says, the controls are the same runs with this code
COMPARISONS = {"imkt+aux vs imkt": ("imkt_aux", "imkt_rerun"), "mlm+aux vs mlm": ("mlm_aux", "mlm_rerun"),
               "imkt+aux vs mlm": ("imkt_aux", "mlm_rerun")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict = {}
    for name, (a, b) in COMPARISONS.items():
        pairs = {t: (arm_errors(t, a), arm_errors(t, b)) for t in TASKS}
        rel = {t: 100.0 * (x - y) / y for t, (x, y) in pairs.items() if x is not None and y is not None}
        if not rel:
            print(f"{name:28s} no task has both records yet")
            continue
        out[name] = res = rule(rel)
        cells = "  ".join(f"{t.removeprefix('matbench_')} {v['mean']:+.1f} ± {v['se']:.1f}" for t, v in res["tasks"].items())
        print(f"{name:28s} pooled {res['pooled_mean']:+.2f} ± {res['pooled_se']:.2f} over {res['folds']} folds"
              f" -> {'holds' if res['holds'] else 'does not hold'}   [{cells}]")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
