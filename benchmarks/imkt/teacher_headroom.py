"""How much does a structure teacher know that a fine-tuned formula model does not? (issue 23, item 2)

imKT can only transfer what the teacher's structure embedding says about a task beyond what the formula model
already learns from the labels. This script measures that headroom directly, without pretraining anything:

1. ``structures``: the ground-state Materials Project structure (lowest CHGNet energy per atom, the polymorph the
   CHGNet alignment set uses) of every formula of the given MatBench tasks that has one, as one CSV
   (``material_id, formula, cif``), split in ``--parts`` files so that several processes can embed it
   (``python -m crossmat.dataset_builders embeddings --source PART --encoder ...``). No target enters.
2. ``measure``: for a fine-tuned record (its out-of-fold test predictions, ``predictions.csv`` of each official
   fold), the residual ``r = y - prediction`` of every row whose formula has an MP structure is regressed on
   ``[prediction, feature set]`` with a robust linear model (Huber) and with gradient-boosted trees on the absolute
   error, cross-fitted over the official folds: the correction of fold ``i`` is fitted on the rows of the other four
   test folds only (their predictions are out-of-sample too), so no target of fold ``i`` is used for fold ``i``.
   The same correction from the prediction alone (a re-calibration) is the baseline; a feature set's *headroom* is
   the per-fold relative MAE change beyond it. Feature sets: the teachers (CHGNet and TensorNet embeddings, the 29
   pymatgen structure descriptors, together), two formula-only controls (the frozen MLM-only pooled embedding, the
   fraction-weighted mat2vec vector) and a positive control (``LABEL=ROOT@CONTROL``: another fine-tuned record's
   prediction, which holds residual information by construction). Also the teachers' direct probes of ``y``.
3. ``summary``: the table over each group of records (seeds) and the reading fixed before the measurement.

A teacher whose embedding cannot correct the fine-tuned MLM-only model even given the *real* structure has little a
formula student could carry over: its headroom bounds what aligning to it can add, for these read-outs.

    python benchmarks/imkt/teacher_headroom.py structures --tasks matbench_phonons ... --parts 2
    python -m crossmat.dataset_builders embeddings --source benchmarks/_work/imkt/headroom/structures_part0.csv.gz \
        --encoder matgl-tensornet --output-dir benchmarks/_work/imkt/headroom/tensornet_part0 --num-threads 1
    (the same for part 1 and for --encoder descriptors, output descriptors_part<k>)
    PYTHONPATH=. python benchmarks/imkt/teacher_headroom.py measure --tasks ... --records mlm42=ROOT@ROOT_SEED7 ...
    python benchmarks/imkt/teacher_headroom.py summary
    (CHGNet's own predictions as a teacher: ``chgnet-predictions --tasks ... --part K --parts N`` per process, then
    ``measure --teachers chgnet_predictions``; the DFT-transport teacher needs no structures: ``measure --teachers transport --features mat2vec_formula
    mlm_formula transport mlm_formula+transport``, from matminer's MP transport database)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

WORK = Path("benchmarks/_work/imkt/headroom")
CHGNET_PER_FORMULA = Path("benchmarks/_work/imkt/embeddings/mp_structures/per_formula/chgnet.parquet")
ALPHAS = np.logspace(-2, 5, 15)


def _canonical(formulas: pd.Series) -> pd.Series:
    from crossmat.tokenization import canonical_formula

    return formulas.map(canonical_formula)


def _task_formulas(tasks: list[str]) -> set[str]:
    """The canonical formulas of every row of the given MatBench tasks (no target read)."""
    from crossmat.dataset_builders.matbench import load_task_frame

    return set().union(*(set(_canonical(load_task_frame(task)["formula"])) for task in tasks))


def structures(args: argparse.Namespace) -> None:
    from crossmat.dataset_builders.paths import data_dir

    wanted = _task_formulas(args.tasks)
    if CHGNET_PER_FORMULA.exists():
        ground = pd.read_parquet(CHGNET_PER_FORMULA, columns=["id", "formula"])
        ids = set(ground.loc[_canonical(ground["formula"]).isin(wanted).to_numpy(), "id"])
    else:  # the same rule (lowest CHGNet energy per atom) from the chgnet-predictions stage's energies
        ids = set(_ground_predictions()["material_id"])
        print(f"{CHGNET_PER_FORMULA} absent: ground states from the chgnet-predictions stage ({len(ids)} formulas)")
    mp = pd.read_csv(data_dir() / "mp_structures" / "structures.csv.gz", usecols=["material_id", "formula", "cif"])
    chosen = mp[mp["material_id"].isin(ids) & _canonical(mp["formula"]).isin(wanted).to_numpy()].copy()
    # balance the parts by cell size (embedding time grows with the number of sites)
    chosen["_sites"] = chosen["cif"].str.count("\n")
    chosen = chosen.sort_values("_sites", kind="stable").reset_index(drop=True)
    WORK.mkdir(parents=True, exist_ok=True)
    for part in range(args.parts):
        rows = chosen.iloc[part :: args.parts][["material_id", "formula", "cif"]]
        rows.to_csv(WORK / f"structures_part{part}.csv.gz", index=False)
        print(f"part {part}: {len(rows)} structures")
    print(f"{len(chosen)} ground-state structures of {len(wanted)} task formulas ({', '.join(args.tasks)})")
    for encoder, name in (("matgl-tensornet", "tensornet"), ("descriptors", "descriptors")):
        for part in range(args.parts):
            print(f"python -m crossmat.dataset_builders embeddings --source {WORK}/structures_part{part}.csv.gz "
                  f"--encoder {encoder} --output-dir {WORK}/{name}_part{part} --num-threads 1 --on-bad report")


TRANSPORT_LOG = ("sigma_p", "sigma_n", "kappa_p", "kappa_n", "PF_p", "PF_n", "m_p", "m_n")


def _transport_table() -> pd.DataFrame:
    """The DFT-transport teacher: canonical formula -> 10 BoltzTraP quantities of matminer's MP transport database
    (log10 of the eight positive ones, the two Seebeck coefficients / 1000), averaged over the formula's entries."""
    from crossmat.dataset_builders.corpus import transport_formulas

    raw = transport_formulas()
    features = pd.DataFrame({c: np.log10(raw[c].to_numpy(np.float64)) for c in TRANSPORT_LOG})
    features["S_p"], features["S_n"] = raw["S_p"] / 1000, raw["S_n"] / 1000
    features["key"] = _canonical(raw["formula"]).to_numpy()
    table = features.groupby("key").mean()
    return pd.DataFrame({"formula": table.index, "embedding": list(table.to_numpy())}, index=table.index)


def chgnet_predictions(args: argparse.Namespace) -> None:
    """CHGNet's own predictions (energy per atom, site magnetic moments) for part ``--part`` of ``--parts`` of every
    MP structure whose formula is a formula of the given tasks; one parquet per chunk of 256 structures, so a rerun
    resumes after the last finished chunk."""
    import torch
    from chgnet.model import CHGNet
    from pymatgen.core import Structure

    from crossmat.dataset_builders.paths import data_dir

    torch.set_num_threads(1)
    folder = WORK / f"chgnet_predictions_part{args.part}"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = _task_formulas(args.tasks)
    mp = pd.read_csv(data_dir() / "mp_structures" / "structures.csv.gz", usecols=["material_id", "formula", "cif"])
    mp = mp[_canonical(mp["formula"]).isin(wanted).to_numpy()].copy()
    mp["_sites"] = mp["cif"].str.count("\n")
    mp = mp.sort_values("_sites", kind="stable").iloc[args.part :: args.parts].reset_index(drop=True)
    print(f"part {args.part}/{args.parts}: {len(mp)} MP structures of {len(wanted)} task formulas", flush=True)
    model = CHGNet.load(verbose=False)
    failed, t0 = 0, time.time()
    for start in range(0, len(mp), 256):
        out = folder / f"chunk_{start:06d}.parquet"
        if out.exists():
            continue
        chunk = mp.iloc[start : start + 256]
        structs = [Structure.from_str(c, fmt="cif") for c in chunk["cif"]]
        # large cells make large graphs: keep a batch to about 1,500 CIF lines (sites) so that memory stays bounded
        batch = max(1, min(32, 1500 // int(chunk["_sites"].max())))
        try:
            preds = model.predict_structure(structs, task="em", batch_size=batch)
        except Exception:  # noqa: BLE001 - one structure CHGNet cannot graph fails the batch: retry one by one
            preds = []
            for mid, st in zip(chunk["material_id"], structs, strict=True):
                try:
                    preds.append(model.predict_structure(st, task="em"))
                except Exception as exc:  # noqa: BLE001 - reported, never dropped silently
                    print(f"  {mid}: CHGNet failed: {exc}", flush=True)
                    failed += 1
                    preds.append(None)
        rows = []
        for (mid, formula), pred in zip(chunk[["material_id", "formula"]].itertuples(index=False), preds, strict=True):
            if pred is None:
                continue
            m = np.abs(np.asarray(pred["m"], dtype=np.float64).ravel())
            rows.append({"material_id": mid, "formula": formula, "energy_per_atom": float(pred["e"]),
                         "abs_magmom_mean": float(m.mean()), "abs_magmom_max": float(m.max()),
                         "abs_magmom_std": float(m.std()), "magnetic_site_fraction": float((m > 0.5).mean())})
        pd.DataFrame(rows).to_parquet(out)
        print(f"  {start + len(chunk)}/{len(mp)} structures, {time.time() - t0:.0f} s", flush=True)
    print(f"part {args.part} done under {folder}: {failed} structure(s) failed this run")


def _ground_predictions() -> pd.DataFrame:
    """The chgnet-predictions stage's rows, one per canonical formula (``key``): its lowest-energy MP polymorph."""
    paths = sorted(WORK.glob("chgnet_predictions_part*/chunk_*.parquet"))
    if not paths:
        raise SystemExit(f"no CHGNet predictions under {WORK}: run the chgnet-predictions stage first")
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    frame["key"] = _canonical(frame["formula"]).to_numpy()
    return frame.sort_values(["key", "energy_per_atom", "material_id"]).drop_duplicates("key")


def _predictions_table() -> pd.DataFrame:
    """The CHGNet-predictions teacher: per formula, its lowest-energy MP polymorph's energy per atom, that energy minus
    elemental references fitted by least squares on element fractions (a formation-energy proxy) and four statistics
    of |site magnetic moment|."""
    from pymatgen.core import Composition

    ground = _ground_predictions().set_index("key")
    fractions = pd.DataFrame([Composition(k).fractional_composition.get_el_amt_dict() for k in ground.index]).fillna(0.0)
    refs, *_ = np.linalg.lstsq(fractions.to_numpy(), ground["energy_per_atom"].to_numpy(), rcond=None)
    ground["formation_proxy"] = ground["energy_per_atom"].to_numpy() - fractions.to_numpy() @ refs
    columns = ["energy_per_atom", "formation_proxy", "abs_magmom_mean", "abs_magmom_max", "abs_magmom_std",
               "magnetic_site_fraction"]
    return pd.DataFrame({"formula": ground.index, "embedding": list(ground[columns].to_numpy())}, index=ground.index)


def _teacher_table(name: str) -> pd.DataFrame:
    """canonical formula -> embedding: ``chgnet`` from the MP ground states of the alignment build, ``transport``
    from matminer's MP transport database (no structure needed), any other teacher (``tensornet``,
    ``descriptors``) from the parts the ``structures`` step's commands embedded."""
    if name == "transport":
        return _transport_table()
    if name == "chgnet_predictions":
        return _predictions_table()
    if name == "chgnet":
        table = pd.read_parquet(CHGNET_PER_FORMULA, columns=["formula", "embedding"])
    else:
        paths = sorted(WORK.glob(f"{name}_part*/data/*/*.parquet"))
        if not paths:
            raise SystemExit(f"no {name} embeddings under {WORK}: run the embeddings commands of the structures step")
        table = pd.concat([pd.read_parquet(p, columns=["formula", "embedding"]) for p in paths], ignore_index=True)
    table["key"] = _canonical(table["formula"])
    return table.drop_duplicates("key").set_index("key")


def _one_record(task_root: Path) -> Path:
    records = sorted(p.parent for p in task_root.glob("*/fold_0"))
    if len(records) != 1:
        raise SystemExit(f"{task_root}: expected one record folder, found {len(records)}")
    return records[0]


def _read_record(folder: Path) -> pd.DataFrame:
    """The out-of-fold test predictions of a 5-fold record, one row per test row, with its fold."""
    frames = []
    for fold in range(5):
        path = folder / f"fold_{fold}" / "predictions.csv"
        if not path.exists():
            raise SystemExit(f"{path} is missing: the record is incomplete")
        frames.append(pd.read_csv(path).assign(fold=fold))
    return pd.concat(frames, ignore_index=True)


def _regressor(kind: str):
    """The correction model: ``ridge`` (squared loss, alpha by inner CV), ``huber`` (linear, robust to the heavy
    residual tails that make a squared-loss fit raise the MAE) or ``gbm`` (gradient-boosted trees on the absolute
    error, early-stopped on a tenth of the fitting rows: the non-linear read-out)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import HuberRegressor, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
    if kind == "huber":
        return make_pipeline(StandardScaler(), HuberRegressor(alpha=1.0, max_iter=2000))
    if kind == "gbm_l2":  # the direct probes of y, whose range an absolute-error boosting climbs too slowly
        return HistGradientBoostingRegressor(learning_rate=0.1, max_iter=1000, early_stopping=True,
                                             validation_fraction=0.1, n_iter_no_change=30, random_state=0)
    if kind == "gbm":
        return HistGradientBoostingRegressor(loss="absolute_error", learning_rate=0.05, max_iter=500,
                                             early_stopping=True, validation_fraction=0.1, n_iter_no_change=30,
                                             random_state=0)
    raise ValueError(f"unknown regressor {kind!r}")


def _fold_means(values: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """The mean of ``values`` in each of the 5 official folds."""
    return np.array([values[folds == f].mean() for f in range(5)])


def _passes(cell: dict) -> bool:
    """The reading's bar for one task: headroom <= -3% and beyond 2 SE."""
    return cell["change_pct"] <= -3 and cell["change_pct"] + 2 * cell["se_pct"] < 0


def _cross_fit(kind: str, x: np.ndarray, r: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """The correction of each fold's residuals, fitted on the other folds' rows only."""
    correction = np.zeros_like(r)
    for fold in np.unique(folds):
        train = folds != fold
        correction[~train] = _regressor(kind).fit(x[train], r[train]).predict(x[~train])
    return correction


def measure(args: argparse.Namespace) -> None:
    import sys

    from benchmarks.imkt.probes import embed, load_encoders

    teachers = {name: _teacher_table(name) for name in args.teachers}
    encoders, _ = load_encoders(args.imkt_backbone, args.mlm_backbone)
    results: dict[str, dict] = {}
    probes_done: dict[str, dict] = {}
    formula_blocks: dict[str, dict[str, pd.DataFrame]] = {}  # per task: the frozen formula features, embedded once
    lines: list[str] = []
    for spec in args.records:
        label, roots = spec.split("=", 1)
        root, _, control_root = roots.partition("@")
        for task in args.tasks:
            if not Path(root, task).is_dir():
                print(f"{label}: no {task} record under {root}, skipped", flush=True)
                continue
            record = _one_record(Path(root, task))
            frame = _read_record(record)
            keys = _canonical(frame["formula"])
            covered = np.logical_and.reduce([keys.isin(t.index).to_numpy() for t in teachers.values()])
            sub, keys = frame[covered].reset_index(drop=True), keys[covered].reset_index(drop=True)
            r = (sub["target"] - sub["prediction"]).to_numpy(np.float64)
            folds = sub["fold"].to_numpy()
            before = _fold_means(np.abs(r), folds)
            if task not in formula_blocks:
                unique = sorted(set(sub["formula"]))
                vectors = embed(encoders, unique)
                formula_blocks[task] = {name: pd.DataFrame(vectors[src], index=unique)
                                        for name, src in (("mlm_formula", "mlm"), ("mat2vec_formula", "mat2vec"))}
            blocks = {name: table.loc[sub["formula"]].to_numpy() for name, table in formula_blocks[task].items()}
            for name, table in teachers.items():
                blocks[name] = np.stack(table.loc[keys, "embedding"].to_numpy())
            features = list(args.features)
            if control_root:
                # a feature known to hold residual information: another fine-tuned model's out-of-fold prediction
                # of the same rows (the ensembling gain), so a null result is not the procedure's blindness
                other = _read_record(_one_record(Path(control_root, task))).set_index("id")["prediction"]
                blocks["other_model"] = (other.loc[sub["id"]].to_numpy() - sub["prediction"].to_numpy())[:, None]
                features.append("other_model")
            if task not in probes_done:
                # the teachers' and the formula encoder's own knowledge of the target on these rows (GBM on y)
                y = sub["target"].to_numpy(np.float64)
                probe = {}
                for feature in ("mlm_formula", *teachers, "mlm_formula+" + "+".join(teachers)):
                    x = np.concatenate([blocks[b] for b in feature.split("+")], axis=1).astype(np.float64)
                    err = np.abs(y - _cross_fit("gbm_l2", x, y, folds))
                    probe[feature] = float(_fold_means(err, folds).mean())
                    line = f"{'probe':11s} {task:20s} gbm   {feature:30s} MAE of y from the features alone {probe[feature]:.4g}"
                    print(line, flush=True)
                    lines.append(line)
                probes_done[task] = probe
            entry: dict[str, object] = {"record": str(record), "rows": len(frame), "covered_rows": int(covered.sum()),
                                        "mae_covered_before": float(before.mean())}
            pred = sub["prediction"].to_numpy(np.float64)[:, None]
            for kind in args.regressors:
                # the correction model given the prediction alone (a re-calibration): what the procedure itself
                # gains or costs, so that a feature set's headroom is what it adds beyond that
                calibrated = np.abs(r - _cross_fit(kind, pred, r, folds))
                calib = _fold_means(calibrated, folds)
                entry[f"{kind}:calibration"] = {"mae_after": float(calib.mean()),
                                                "per_fold_pct": [round(float(c), 3) for c in 100 * (calib - before) / before]}
                for feature in features:
                    x = np.concatenate([pred] + [blocks[b] for b in feature.split("+")], axis=1).astype(np.float64)
                    after_rows = np.abs(r - _cross_fit(kind, x, r, folds))
                    after = _fold_means(after_rows, folds)
                    change = 100 * (after - before) / before
                    beyond = 100 * (after - calib) / calib
                    se, se_b = (float(c.std(ddof=1) / np.sqrt(5)) for c in (change, beyond))
                    entry[f"{kind}:{feature}"] = {
                        "mae_after": float(after.mean()), "change_pct": float(change.mean()), "se_pct": se,
                        "per_fold_pct": [round(float(c), 3) for c in change],
                        "beyond_calibration_pct": float(beyond.mean()), "beyond_calibration_se_pct": se_b,
                        "beyond_calibration_per_fold_pct": [round(float(c), 3) for c in beyond]}
                    line = (f"{label:11s} {task:20s} {kind:5s} {feature:30s} rows {int(covered.sum()):4d}/{len(frame):4d}"
                            f"  MAE {before.mean():.4g} -> {after.mean():.4g}  {change.mean():+6.1f}% ± {se:.1f}"
                            f"  (beyond re-calibration {beyond.mean():+6.1f}% ± {se_b:.1f})")
                    print(line, flush=True)
                    lines.append(line)
            results.setdefault(label, {})[task] = entry
    out = Path(args.output)
    payload = {"generated": time.strftime("%Y-%m-%d %H:%M"), "command": "python " + " ".join(sys.argv),
               "protocol": __doc__.split("\n\n")[1:3], "results": results,
               "probes_gbm_mae": probes_done}
    out.write_text(json.dumps(payload, indent=1) + "\n")
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


def _pooled(per_fold: list[list[float]]) -> tuple[float, float]:
    """Mean ± SE over folds of the per-fold mean across records (seeds)."""
    folds = np.mean(np.array(per_fold, dtype=float), axis=0)
    return float(folds.mean()), float(folds.std(ddof=1) / np.sqrt(len(folds)))


def summary(args: argparse.Namespace) -> None:
    """The headroom table and the reading fixed before the measurement (SECTION.md): a teacher is worth another
    pretraining arm only if, over the MLM-only records, its headroom is at least 3% beyond 2 SE on at least three of
    the four tasks and larger than the formula-only controls' there. Each feature set is read through its most
    favourable correction model (the smaller of the re-calibration-adjusted changes), so a teacher fails only if
    every read-out fails."""
    data = json.loads(Path(args.input).read_text())
    results = data["results"]
    groups = {name: [label for label in results if label.rstrip("0123456789") == name] for name in args.groups}
    tasks = list(next(iter(results.values())))
    any_entry = results[groups[args.groups[0]][0]][tasks[0]]
    kinds = sorted({k.split(":", 1)[0] for k in any_entry if ":" in k})
    features = [k.split(":", 1)[1] for k in any_entry if k.startswith(kinds[0] + ":") and not k.endswith("calibration")]
    lines = ["Headroom beyond re-calibration: relative MAE change (%) of the fine-tuned model's out-of-fold predictions "
             "after a cross-fitted correction from the feature set, minus what the correction model gains from the "
             "prediction alone; mean ± SE over the 5 folds of the per-fold mean over the group's records (seeds); "
             "the better of the correction models (" + ", ".join(kinds) + "). Negative = the features know more.", ""]
    verdict: dict[str, dict] = {}
    for group, labels in groups.items():
        lines.append(f"## {group} ({', '.join(labels)})")
        lines.append("| features | " + " | ".join(t.removeprefix("matbench_") for t in tasks) + " |")
        lines.append("|---|" + "---|" * len(tasks))
        calib_cells = []
        for task in tasks:
            present = [lb for lb in labels if task in results[lb]]
            if not present:
                calib_cells.append("–")
                continue
            best = min((_pooled([results[lb][task][f"{k}:calibration"]["per_fold_pct"] for lb in present]) + (k,)
                        for k in kinds), key=lambda c: c[0])
            calib_cells.append(f"{best[0]:+.1f} ± {best[1]:.1f} ({best[2]})")
        lines.append("| re-calibration alone (vs the raw predictions) | " + " | ".join(calib_cells) + " |")
        for feature in features:
            cells, passes, table = [], 0, {}
            for task in tasks:
                present = [lb for lb in labels if task in results[lb]]
                if not present:
                    cells.append("–")
                    continue
                best = min((_pooled([results[lb][task][f"{k}:{feature}"]["beyond_calibration_per_fold_pct"] for lb in present])
                            + (k,) for k in kinds), key=lambda c: c[0])
                table[task] = {"change_pct": best[0], "se_pct": best[1], "read_out": best[2]}
                cells.append(f"{best[0]:+.1f} ± {best[1]:.1f} ({best[2]})")
                passes += _passes(table[task])
            verdict.setdefault(group, {})[feature] = {"tasks": table, "tasks_passing": passes}
            lines.append(f"| {feature} | " + " | ".join(cells) + " |")
        lines.append("")
    base = verdict.get(args.groups[0], {})
    formula_best = {t: min(v["tasks"][t]["change_pct"] for f, v in base.items() if "formula" in f and "+" not in f
                           and t in v["tasks"]) for t in tasks}
    lines.append(f"Reading on {args.groups[0]} (fixed before the measurement): a teacher passes on a task if its headroom "
                 "is <= -3% beyond 2 SE and below the formula-only controls'; it is worth an arm if it passes on >= 3 tasks.")
    for feature, v in base.items():
        if feature == "other_model":
            lines.append(f"  positive control (another seed's prediction): better beyond 2 SE on {v['tasks_passing']} tasks")
            continue
        if "formula" in feature and "+" not in feature:
            continue
        n = sum(1 for t, c in v["tasks"].items() if _passes(c) and c["change_pct"] < formula_best[t])
        v["tasks_passing_with_controls"] = n
        lines.append(f"  {feature}: passes on {n} of {len(tasks)} tasks -> {'worth an arm' if n >= 3 else 'not worth an arm'}")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).write_text(text)
    Path(args.output).with_suffix(".json").write_text(json.dumps(verdict, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    s = sub.add_parser("structures")
    s.add_argument("--tasks", nargs="+", required=True)
    s.add_argument("--parts", type=int, default=2)
    c = sub.add_parser("chgnet-predictions")
    c.add_argument("--tasks", nargs="+", required=True)
    c.add_argument("--part", type=int, default=0)
    c.add_argument("--parts", type=int, default=1)
    m = sub.add_parser("measure")
    m.add_argument("--records", nargs="+", required=True, help="LABEL=ROOT[@CONTROL]: the record ROOT/<task>/<record>/fold_*/; CONTROL, another record "
                   "of the same tasks whose predictions are a positive-control feature")
    m.add_argument("--tasks", nargs="+", required=True)
    m.add_argument("--features", nargs="+", default=["mat2vec_formula", "mlm_formula", "chgnet", "tensornet", "descriptors",
                                                       "chgnet+tensornet+descriptors",
                                                       "mlm_formula+chgnet+tensornet+descriptors"])
    m.add_argument("--regressors", nargs="+", default=["huber", "gbm"], choices=["ridge", "huber", "gbm"])
    m.add_argument("--teachers", nargs="+", default=["chgnet", "tensornet", "descriptors"])
    m.add_argument("--imkt-backbone", default="crossmat-imkt-mp-small")
    m.add_argument("--mlm-backbone", default="benchmarks/_work/imkt/backbones/mlm")
    m.add_argument("--output", default="benchmarks/imkt/teacher_headroom.json")
    t = sub.add_parser("summary")
    t.add_argument("--input", default="benchmarks/imkt/teacher_headroom.json")
    t.add_argument("--groups", nargs="+", default=["mlm", "imkt", "imkt_clean"],
                   help="record-label prefixes whose records (seeds) are averaged; the first is the reading's reference")
    t.add_argument("--output", default="benchmarks/imkt/teacher_headroom_summary.txt")
    args = ap.parse_args()
    {"structures": structures, "chgnet-predictions": chgnet_predictions, "measure": measure,
     "summary": summary}[args.stage](args)


if __name__ == "__main__":
    main()
