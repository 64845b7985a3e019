"""The wide-encoder probe rule of benchmarks/imkt/SECTION.md ("A wider encoder", written before either backbone
finished): does capacity let alignment put more structure knowledge into the frozen encoder?

Reads the frozen probes of the small pair (``probes_scaling/full/probes.json``: imKT = the shipped backbone, MLM-only
seed 42) and of the wide pair (``probes_wide/probes.json``), prints both conditions and the verdict.

    PYTHONPATH=. python benchmarks/imkt/wide_rule.py [--json benchmarks/imkt/wide_rule.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _structure_gaps(probes: dict) -> dict[str, float]:
    """imKT minus MLM on formulas outside the corpus: CHGNet-embedding R² (section c), packing-fraction R² (b)."""
    chg = probes["chgnet_reconstruction"]["features"]
    pack = probes["structures"]["targets"]["packing_fraction"]["features"]
    return {"chgnet_r2": chg["imkt"]["not_in_corpus"]["r2"] - chg["mlm"]["not_in_corpus"]["r2"],
            "packing_r2": pack["imkt"]["not_in_corpus"]["r2"] - pack["mlm"]["not_in_corpus"]["r2"]}


def rule(small: dict, wide: dict) -> dict:
    gaps_small, gaps_wide = _structure_gaps(small), _structure_gaps(wide)
    cond1 = any(gaps_wide[k] > gaps_small[k] for k in gaps_small)
    tasks = {}
    for task, entry in wide["matbench"].items():
        higher_is_better = entry["metric"].lower() != "mae"
        a, b = entry["features"]["imkt"]["mean"], small["matbench"][task]["features"]["imkt"]["mean"]
        tasks[task] = {"imkt_wide": a, "imkt_small": b, "wide_better": (a > b) if higher_is_better else (a < b),
                       "metric": entry["metric"]}
    better = sum(t["wide_better"] for t in tasks.values())
    cond2 = better >= 6
    return {"structure_gap_small": gaps_small, "structure_gap_wide": gaps_wide, "condition_1": cond1,
            "matbench": tasks, "wide_better_on": better, "of": len(tasks), "condition_2": cond2,
            "verdict": "go on to the fine-tuning screening" if cond1 and cond2 else
                       "capacity is not what limits the transfer at this data scale: item 4 ends here"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", default=str(HERE / "probes_scaling" / "full" / "probes.json"))
    ap.add_argument("--wide", default=str(HERE / "probes_wide" / "probes.json"))
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    out = rule(json.loads(Path(args.small).read_text()), json.loads(Path(args.wide).read_text()))
    for k in ("chgnet_r2", "packing_r2"):
        print(f"imKT - MLM, {k} on unseen formulas: small {out['structure_gap_small'][k]:+.3f}, "
              f"wide {out['structure_gap_wide'][k]:+.3f}")
    print(f"condition 1 (the wide gap beats the small gap on either): {out['condition_1']}")
    for task, t in out["matbench"].items():
        print(f"  {task:24s} {t['metric']:18s} imKT wide {t['imkt_wide']:.4f}  imKT small {t['imkt_small']:.4f}"
              f"  {'wide better' if t['wide_better'] else ''}")
    print(f"condition 2 (imKT wide's frozen probes better on >= 6 of 10 tasks): {out['wide_better_on']} of "
          f"{out['of']} -> {out['condition_2']}")
    print(f"verdict: {out['verdict']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
