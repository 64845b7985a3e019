"""The alignment-set scaling curve (issue 23 item 4): how much structure knowledge and how much fine-tuned accuracy
the imKT backbone gains as the number of formulas with a CHGNet target grows, at a fixed MLM corpus.

Points (same 31,584 formulas, encoder, steps, seed and recipe; only the number of rows with an alignment target
changes; ``build_data.sh alignment_scaling`` + ``pretrain.sh imkt_targets10k|imkt_targets20k``):
  0       the MLM-only backbone (``pretrain.sh mlm``) and the same with another pretraining seed (``mlm_seed7``):
          their difference is the backbone-seed spread every other point is read against
  10,000  ``imkt_targets10k`` (nested seeded subset, the other formulas MLM-only rows)
  20,000  ``imkt_targets20k``
  31,584  ``imkt`` (every formula has a target; the shipped ``crossmat-imkt-mp-small``)

Reads: the pretraining logs' final validation line (``logs/pretrain_<arm>.log``), the frozen probes
(``probes_scaling/<point>/probes.json``, one ``probes.py`` run per imKT backbone; the MLM point is the ``mlm``
feature of those runs) and the fine-tuned records (``crossmat_default_from_<arm>.json``, paired per fold against
MLM-only). Writes ``scaling_curve.json`` and prints a markdown table.

    PYTHONPATH=. python benchmarks/imkt/scaling_curve.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from benchmarks.imkt.compare_arms import errors, paired

HERE = Path(__file__).resolve().parent
POINTS = [(0, "mlm"), (0, "mlm_seed7"), (10000, "imkt_targets10k"), (20000, "imkt_targets20k"), (31584, "imkt"),
          (31584, "imkt_seed7")]
# arm -> (probes run folder under probes_scaling/, feature in that run)
PROBE_RUN = {"mlm": ("full", "mlm"), "mlm_seed7": ("mlm_seed7", "mlm"), "imkt_targets10k": ("targets10k", "imkt"),
             "imkt_targets20k": ("targets20k", "imkt"), "imkt": ("full", "imkt"),
             "imkt_seed7": ("imkt_seed7", "imkt")}
TASKS = ("matbench_steels", "matbench_jdft2d", "matbench_phonons", "matbench_expt_gap")
STRUCT = ("volume_per_atom", "density", "packing_fraction", "log10_nsites_primitive", "mean_nn_distance")
# The shipped backbone's pretraining log was lost with an earlier machine; its card keeps the validation metrics.
SHIPPED_CARD = HERE.parents[1] / "modeling" / "pretrained_models" / "crossmat-imkt-mp-small" / "README.md"


def validation(arm: str) -> dict:
    """The last ``validation:`` line of the arm's pretraining log (the shipped card for ``imkt``), as numbers."""
    log = HERE / "logs" / f"pretrain_{arm}.log"
    if not log.is_file() and arm == "imkt":
        rows = re.findall(r"\| validation (\w+) \| ([-\d.]+) \|", SHIPPED_CARD.read_text())
        return {**{k: float(v) for k, v in rows}, "source": "the shipped model card"}
    if not log.is_file():
        return {}
    lines = [ln for ln in log.read_text().splitlines() if "validation:" in ln]
    if not lines:
        return {}
    out: dict = {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.]+)", lines[-1])}
    out["source"] = str(log.relative_to(HERE))
    return out


def probe_numbers(run: dict, feature: str) -> dict:
    """MatBench probe means, structure-descriptor R2 and CHGNet reconstruction of one feature of one probes run."""
    out: dict = {"matbench": {t: round(v["features"][feature]["mean"], 4) for t, v in run["matbench"].items()}}
    targets = run.get("structures", {}).get("targets", {})
    out["structure_r2_not_in_corpus"] = {
        k: round(targets[k]["features"][feature]["not_in_corpus"]["r2"], 4) for k in STRUCT if k in targets}
    if "crystal_system" in targets:
        out["crystal_system_accuracy_not_in_corpus"] = round(
            targets["crystal_system"]["features"][feature]["not_in_corpus"]["accuracy"], 4)
    rec = run.get("chgnet_reconstruction")
    if isinstance(rec, dict):
        f = rec["features"][feature]
        out["chgnet_r2"] = {k: round(f[k]["r2"], 4) for k in ("all", "not_in_corpus")}
        out["chgnet_cosine"] = {k: round(f[k]["cosine"], 4) for k in ("all", "not_in_corpus")}
    return out


def seed_comparison() -> dict:
    """imKT against MLM-only with two pretraining seeds each (42 and 7): the seed-to-seed change inside each arm
    (paired per fold) is the noise the arm difference has to exceed; the arm difference uses the per-fold mean
    of the two seeds of each arm."""
    out: dict = {}
    for task in TASKS:
        runs = {arm: errors(task, arm) for arm in ("mlm", "mlm_seed7", "imkt", "imkt_seed7")}
        if any(r is None for r in runs.values()):
            continue
        e = {arm: r[0] for arm, r in runs.items()}
        mlm, imkt = (e["mlm"] + e["mlm_seed7"]) / 2, (e["imkt"] + e["imkt_seed7"]) / 2
        arm = paired(imkt, mlm)
        seed_mlm, seed_imkt = paired(e["mlm_seed7"], e["mlm"]), paired(e["imkt_seed7"], e["imkt"])
        noise = max(abs(seed_mlm["mean_pct"]), abs(seed_imkt["mean_pct"])) / 2  # a 2-seed mean halves a seed gap
        out[task] = {"mlm_two_seed_mean": round(float(mlm.mean()), 4), "imkt_two_seed_mean": round(float(imkt.mean()), 4),
                     "seed7_vs_seed42_mlm": seed_mlm, "seed7_vs_seed42_imkt": seed_imkt,
                     "imkt_vs_mlm_two_seeds": arm,
                     "verdict": arm["verdict"] if abs(arm["mean_pct"]) > noise else "inside the seed spread"}
    if len(out) == len(TASKS):
        out["average_imkt_vs_mlm_pct"] = round(float(np.mean([v["imkt_vs_mlm_two_seeds"]["mean_pct"]
                                                              for v in out.values()])), 2)  # fmt: skip
    return out


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def main() -> None:
    runs = {arm: (json.loads(p.read_text()), feature) for arm, (name, feature) in PROBE_RUN.items()
            if (p := HERE / "probes_scaling" / name / "probes.json").is_file()}  # fmt: skip
    result: dict = {"points": [], "tasks": list(TASKS), "note": __doc__.split("\n\n")[1]}
    for n, arm in POINTS:
        point: dict = {"targets": n, "arm": arm, "pretraining_validation": validation(arm)}
        if arm in runs:
            point["probes"] = probe_numbers(*runs[arm])
        fine = {}
        for task in TASKS:
            mine, ref = errors(task, arm), errors(task, "mlm")
            if mine is None:
                continue
            fine[task] = {"mean": round(float(mine[0].mean()), 4), "std": round(mine[2], 4)}
            if arm != "mlm" and ref is not None:
                fine[task]["vs_mlm"] = paired(mine[0], ref[0])
        if arm != "mlm" and len(fine) == len(TASKS) and all("vs_mlm" in v for v in fine.values()):
            point["fine_tuned_average_vs_mlm_pct"] = round(float(np.mean([v["vs_mlm"]["mean_pct"] for v in fine.values()])), 2)
        point["fine_tuned"] = fine
        result["points"].append(point)
    result["seeds"] = seed_comparison()
    (HERE / "scaling_curve.json").write_text(json.dumps(result, indent=1) + "\n")
    head = "| targets | val MLM loss | masked acc. | align cos | CHGNet R2 (unseen) | packing R2 (unseen) | " + \
        " | ".join(t.removeprefix("matbench_") for t in TASKS) + " | avg vs MLM |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for p in result["points"]:
        v, pr = p["pretraining_validation"], p.get("probes", {})
        cells = [f"{p['targets']:,}" + (" (seed 7)" if p["arm"].endswith("_seed7") else ""),
                 *(_num(x) for x in (v.get("mlm_loss"), v.get("masked_accuracy"), v.get("alignment_cosine"),
                                     pr.get("chgnet_r2", {}).get("not_in_corpus"),
                                     pr.get("structure_r2_not_in_corpus", {}).get("packing_fraction")))]
        for task in TASKS:
            f = p["fine_tuned"].get(task)
            cells.append("—" if f is None else f"{f['mean']:.4g}" + (
                f" ({f['vs_mlm']['mean_pct']:+.1f}% ± {f['vs_mlm']['se_pct']:.1f})" if "vs_mlm" in f else ""))
        cells.append(f"{p['fine_tuned_average_vs_mlm_pct']:+.1f}%" if "fine_tuned_average_vs_mlm_pct" in p else "—")
        print("| " + " | ".join(cells) + " |")
    if result["seeds"]:
        print("\n| task | MLM seed 7 vs 42 | imKT seed 7 vs 42 | MLM, 2-seed mean | imKT, 2-seed mean | imKT vs MLM | verdict |")
        print("|---|---|---|---|---|---|---|")
        for task, v in result["seeds"].items():
            if task.startswith("average"):
                continue
            pct = [v[k] for k in ("seed7_vs_seed42_mlm", "seed7_vs_seed42_imkt", "imkt_vs_mlm_two_seeds")]
            print(f"| {task.removeprefix('matbench_')} | " + " | ".join(
                f"{x['mean_pct']:+.1f}% ± {x['se_pct']:.1f}" for x in pct[:2]) +
                f" | {v['mlm_two_seed_mean']:.4g} | {v['imkt_two_seed_mean']:.4g} | "
                f"{pct[2]['mean_pct']:+.1f}% ± {pct[2]['se_pct']:.1f} | {v['verdict']} |")


if __name__ == "__main__":
    main()
