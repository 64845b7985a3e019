"""A lead outside issue 23: would a lookup of the compound's DFT transport data help the default route?

``teacher_headroom.py`` found that matminer's MP transport database, looked up for the very compound, corrects a
fine-tuned model's experimental band gaps by about a sixth on the rows that have an entry, while a formula student of
the same data carries none of it (``transport_student.py``). A route could only fit such a correction on its own
validation rows (the default route holds out 10% of the training rows). This simulates that size on the default
route's committed out-of-fold test predictions, without retraining anything:

for each official fold i, a seeded draw of the *other* folds' rows, as many as fold i's validation carve-out would
hold (10% of its training rows), fits a correction of the residual from ``[prediction,
transport features]`` (``--regressor``: Huber or gradient-boosted trees) on the drawn rows that have a
transport entry, and the same correction from ``[prediction]``
alone; fold i's rows with an entry get the correction, the others keep their prediction. Reported: the MAE change
over all of fold i's rows and over its covered rows, against the raw and the re-calibrated predictions, mean ± SE
over folds, averaged over 5 draws; and the same with every other fold's covered row (the headroom measurement's
size). No target of fold i is used for fold i.

    PYTHONPATH=. python benchmarks/imkt/transport_lookup_route.py --record benchmarks/matbench/runs/default_route_ens2_e100 \
        --regressor gbm --output benchmarks/imkt/transport_lookup_route_gbm.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.imkt.teacher_headroom import _canonical, _one_record, _read_record, _regressor, _transport_table


def _corrected(kind: str, x_fit: np.ndarray, r_fit: np.ndarray, x_apply: np.ndarray) -> np.ndarray:
    return _regressor(kind).fit(x_fit, r_fit).predict(x_apply)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", required=True, help="ROOT with ROOT/<task>/<record>/fold_*/predictions.csv")
    ap.add_argument("--tasks", nargs="+", default=["matbench_expt_gap", "matbench_dielectric", "matbench_phonons",
                                                  "matbench_jdft2d"])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--regressor", default="huber", choices=["huber", "gbm"],
                    help="the correction model: robust linear, or gradient-boosted trees on the absolute error (the "
                         "read-out that found the headroom)")
    ap.add_argument("--output", default="benchmarks/imkt/transport_lookup_route.json")
    args = ap.parse_args()
    teacher = _transport_table()
    results: dict[str, dict] = {}
    lines: list[str] = []
    for task in args.tasks:
        frame = _read_record(_one_record(Path(args.record, task)))
        keys = _canonical(frame["formula"])
        covered = keys.isin(teacher.index).to_numpy()
        feats = np.zeros((len(frame), 10))
        feats[covered] = np.stack(teacher.loc[keys[covered], "embedding"].to_numpy())
        pred = frame["prediction"].to_numpy(np.float64)
        r = frame["target"].to_numpy(np.float64) - pred
        folds = frame["fold"].to_numpy()
        x_full, x_pred = np.column_stack([pred, feats]), pred[:, None]
        entry: dict[str, object] = {"rows": len(frame), "covered_rows": int(covered.sum())}
        for size in ("validation", "all_other_folds"):
            changes = {k: [] for k in ("all_vs_raw", "all_vs_recalibrated", "covered_vs_raw", "covered_vs_recalibrated")}
            fit_sizes: list[int] = []
            for draw in range(args.draws if size == "validation" else 1):
                rng = np.random.default_rng(draw)
                per = {k: [] for k in changes}
                for fold in range(5):
                    test, others = folds == fold, np.flatnonzero(folds != fold)
                    if size == "validation":  # the carve-out of fold i's training rows: 10% of them
                        others = rng.choice(others, size=round(0.1 * len(others)), replace=False)
                    fit = others[covered[others]]
                    fit_sizes.append(len(fit))
                    apply = test & covered
                    with_teacher, recal = np.abs(r[test]), np.abs(r[test])
                    idx = np.flatnonzero(test)
                    sel = covered[idx]
                    with_teacher[sel] = np.abs(r[apply] - _corrected(args.regressor, x_full[fit], r[fit], x_full[apply]))
                    recal[sel] = np.abs(r[apply] - _corrected(args.regressor, x_pred[fit], r[fit], x_pred[apply]))
                    raw = np.abs(r[test])
                    per["all_vs_raw"].append(100 * (with_teacher.mean() - raw.mean()) / raw.mean())
                    per["all_vs_recalibrated"].append(100 * (with_teacher.mean() - recal.mean()) / recal.mean())
                    per["covered_vs_raw"].append(100 * (with_teacher[sel].mean() - raw[sel].mean()) / raw[sel].mean())
                    per["covered_vs_recalibrated"].append(100 * (with_teacher[sel].mean() - recal[sel].mean())
                                                          / recal[sel].mean())
                for k in changes:
                    changes[k].append(per[k])
            cell = {}
            for k, v in changes.items():
                folds_mean = np.mean(np.array(v), axis=0)  # per fold, averaged over draws
                cell[k] = {"change_pct": float(folds_mean.mean()), "se_pct": float(folds_mean.std(ddof=1) / np.sqrt(5)),
                           "per_fold_pct": [round(float(c), 3) for c in folds_mean]}
            cell["fitting_rows_with_entry_per_fold"] = int(round(np.mean(fit_sizes)))  # over folds and draws
            entry[size] = cell
            line = (f"{task:20s} fit on {size:16s} (about {cell['fitting_rows_with_entry_per_fold']:5d} rows with an entry): "
                    + "  ".join(f"{k} {c['change_pct']:+.1f}% ± {c['se_pct']:.1f}" for k, c in cell.items()
                                if isinstance(c, dict)))
            print(line, flush=True)
            lines.append(line)
        results[task] = entry
    payload = {"generated": time.strftime("%Y-%m-%d %H:%M"), "command": "python " + " ".join(sys.argv),
               "protocol": __doc__.split("\n\n")[1:3], "results": results}
    out = Path(args.output)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
