"""Can a formula student carry the DFT-transport teacher's headroom? (issue 23 item 2, beside the rule)

The transport teacher (matminer's MP transport database, ``teacher_headroom.py``'s ``transport``) holds a large
headroom on matbench_expt_gap, but only as a *lookup*: the DFT values of the very compound. imKT can only give a
formula what a formula model learns to predict of the teacher on *other* formulas. This measures that directly:

1. A student: gradient-boosted trees from the frozen formula features (fraction-weighted mat2vec + the frozen
   MLM-only pooled embedding) to each of the 10 transport features, trained on every transport formula that is not a
   formula of an evaluated MatBench task (the backbones' leakage rule, ``tasks.sh``). Its accuracy (R^2) is read on a
   seeded 10% of those formulas held out from its training.
2. The student's predicted transport features of every row of each task (no lookup; every row has them) go through
   the same cross-fitted headroom measurement as the teachers (``teacher_headroom.py``): the correction of fold i's
   residuals is fitted on the other folds' rows only, and the headroom is the MAE change beyond re-calibration.

    PYTHONPATH=. python benchmarks/imkt/transport_student.py --records mlm42=ROOT@CONTROL mlm7=ROOT@CONTROL
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.imkt.teacher_headroom import (  # noqa: E402
    _canonical,
    _cross_fit,
    _fold_means,
    _one_record,
    _read_record,
    _transport_table,
)

TEACHER_COLUMNS = ("log10 sigma_p", "log10 sigma_n", "log10 kappa_p", "log10 kappa_n", "log10 PF_p", "log10 PF_n",
                   "log10 m_p", "log10 m_n", "S_p/1000", "S_n/1000")


def _student(x_train: np.ndarray, y_train: np.ndarray):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(learning_rate=0.1, max_iter=500, early_stopping=True, validation_fraction=0.1,
                                         n_iter_no_change=20, random_state=0).fit(x_train, y_train)


def main() -> None:
    from benchmarks.imkt.probes import TASKS as EXCLUDED_TASKS  # the backbones' leakage rule (tasks.sh)
    from benchmarks.imkt.probes import embed, load_encoders
    from crossmat.dataset_builders.matbench import load_task_frame

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", nargs="+", required=True, help="LABEL=ROOT@CONTROL, as teacher_headroom.py measure")
    ap.add_argument("--tasks", nargs="+", default=["matbench_expt_gap", "matbench_dielectric", "matbench_phonons",
                                                  "matbench_jdft2d"])
    ap.add_argument("--regressors", nargs="+", default=["huber", "gbm"])
    ap.add_argument("--imkt-backbone", default="crossmat-imkt-mp-small")
    ap.add_argument("--mlm-backbone", default="benchmarks/_work/imkt/backbones/mlm")
    ap.add_argument("--output", default="benchmarks/imkt/transport_student.json")
    args = ap.parse_args()
    t0 = time.time()

    teacher = _transport_table()
    excluded: set[str] = set()
    for task in EXCLUDED_TASKS:
        excluded |= set(_canonical(load_task_frame(task)["formula"]))
    pool = teacher[~teacher.index.isin(excluded)]
    encoders, _ = load_encoders(args.imkt_backbone, args.mlm_backbone)
    encoders.pop("imkt"), encoders.pop("scratch")

    def features(formulas: list[str]) -> np.ndarray:
        vectors = embed({"imkt": encoders["mlm"]}, formulas)  # embed() names its reference encoder "imkt"
        return np.concatenate([vectors["mat2vec"], vectors["imkt"]], axis=1).astype(np.float64)

    x_pool = features(list(pool.index))
    y_pool = np.stack(pool["embedding"].to_numpy())
    rng = np.random.default_rng(0)
    held = rng.random(len(pool)) < 0.1
    r2 = {}
    for j, name in enumerate(TEACHER_COLUMNS):
        fitted = _student(x_pool[~held], y_pool[~held, j])
        pred = fitted.predict(x_pool[held])
        r2[name] = float(1 - ((y_pool[held, j] - pred) ** 2).sum() / ((y_pool[held, j] - y_pool[held, j].mean()) ** 2).sum())
    print(f"student trained on {int((~held).sum())} transport formulas outside every evaluated task "
          f"({len(teacher) - len(pool)} excluded); held-out R^2: " + ", ".join(f"{k} {v:.3f}" for k, v in r2.items()),
          flush=True)
    students = [_student(x_pool, y_pool[:, j]) for j in range(len(TEACHER_COLUMNS))]

    lines: list[str] = []
    results: dict[str, dict] = {}
    predicted: dict[str, pd.DataFrame] = {}
    for spec in args.records:
        label, roots = spec.split("=", 1)
        root, _, control_root = roots.partition("@")
        for task in args.tasks:
            frame = _read_record(_one_record(Path(root, task)))
            if task not in predicted:
                unique = sorted(set(frame["formula"]))
                x = features(unique)
                predicted[task] = pd.DataFrame(np.stack([s.predict(x) for s in students], axis=1), index=unique)
                # how well the student reproduces the teacher on this task's rows that have a transport entry
                keys = _canonical(pd.Series(unique))
                have = keys.isin(teacher.index).to_numpy()
                truth = np.stack(teacher.loc[keys[have], "embedding"].to_numpy())
                agree = [float(np.corrcoef(truth[:, j], predicted[task].to_numpy()[have, j])[0, 1])
                         for j in range(len(TEACHER_COLUMNS))]
                results.setdefault("student_vs_teacher_corr", {})[task] = dict(zip(TEACHER_COLUMNS, agree, strict=True))
            r = (frame["target"] - frame["prediction"]).to_numpy(np.float64)
            folds = frame["fold"].to_numpy()
            before = _fold_means(np.abs(r), folds)
            pred = frame["prediction"].to_numpy(np.float64)[:, None]
            blocks = {"student_transport": predicted[task].loc[frame["formula"]].to_numpy()}
            other = _read_record(_one_record(Path(control_root, task))).set_index("id")["prediction"]
            blocks["other_model"] = (other.loc[frame["id"]].to_numpy() - frame["prediction"].to_numpy())[:, None]
            entry: dict[str, object] = {"rows": len(frame), "mae_before": float(before.mean())}
            for kind in args.regressors:
                calib = _fold_means(np.abs(r - _cross_fit(kind, pred, r, folds)), folds)
                for feature, block in blocks.items():
                    after = _fold_means(np.abs(r - _cross_fit(kind, np.concatenate([pred, block], axis=1), r, folds)), folds)
                    beyond = 100 * (after - calib) / calib
                    se = float(beyond.std(ddof=1) / np.sqrt(5))
                    entry[f"{kind}:{feature}"] = {"mae_after": float(after.mean()), "beyond_calibration_pct": float(beyond.mean()),
                                                  "beyond_calibration_se_pct": se,
                                                  "beyond_calibration_per_fold_pct": [round(float(b), 3) for b in beyond]}
                    line = (f"{label:6s} {task:20s} {kind:5s} {feature:18s} rows {len(frame):5d}  MAE {before.mean():.4g}"
                            f" -> {after.mean():.4g}  beyond re-calibration {beyond.mean():+6.1f}% ± {se:.1f}")
                    print(line, flush=True)
                    lines.append(line)
            results.setdefault(label, {})[task] = entry
    payload = {"generated": time.strftime("%Y-%m-%d %H:%M"), "command": "python " + " ".join(sys.argv),
               "protocol": __doc__.split("\n\n")[1:3], "student_heldout_r2": r2, "results": results,
               "seconds": round(time.time() - t0, 1)}
    out = Path(args.output)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    out.with_suffix(".txt").write_text("student held-out R^2: " + json.dumps(r2) + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
