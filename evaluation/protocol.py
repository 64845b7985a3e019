"""The benchmark harness: official MatBench v0.1 5-fold protocol and the LLM4Mat-Bench test protocol,
every predictor (CrossMat variants and baselines) on the same folds in the same run.

Finished work is never lost: each (predictor, fold) writes ``<output>/<variant>/fold_<k>/predictions.csv``
and is skipped when rerun."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from crossmat.dataset_builders.tables import read_table
from crossmat.modeling.calibration import coverage_metrics
from crossmat.modeling.configuration_crossmat import INTERVAL_TAGS

from . import matbench_json
from .baselines import FoldData, FoldPrediction
from .own_data import CSV, load_own_data, score_own, seen_compositions, unreadable_formulas
from .records import hardware, write_record
from .scores import fold_summary, score
from .tasks import (
    LLM4MAT,
    MATBENCH,
    N_FOLDS,
    TaskInfo,
    carve_validation,
    fold_indices,
    load_llm4mat,
    load_matbench_frame,
    matbench_task,
)

logger = logging.getLogger(__name__)
BASELINE_NAMES = ("dummy", "rf_magpie")


STARTED_FILE = "fold_started.json"  # the settings and data a fold's training began with (in-fold resume)


class Predictor(Protocol):
    """A model under evaluation. One that sets ``resumable = True`` takes ``resume=True`` when an interrupted fold
    with the same settings and data is rerun, and continues from its newest checkpoint in ``workdir``."""

    name: str

    def fit_predict(self, data: FoldData, task: TaskInfo, workdir: Path, seed: int) -> FoldPrediction: ...


def _validate_tokens(frame: pd.DataFrame) -> list[str]:
    """Messages for rows whose formula the CrossMat tokenizer rejects (checked in one pass, up front)."""
    why = unreadable_formulas(frame["formula"])
    return [f"{rid}: {w}" for rid, w in zip(frame["id"], why, strict=True) if w]


def data_fingerprint(data: FoldData, task: TaskInfo) -> str:
    """Hash of what a fold learns from and is scored on: the task (target, type) and the id, formula and target of
    every training, validation and test row (vectorised, ``pandas.util.hash_pandas_object``)."""
    import hashlib

    digest = hashlib.sha256(f"{task.benchmark}|{task.name}|{task.target}|{task.task_type}".encode())
    for frame in (data.train, data.validation, data.test):
        rows = frame[["id", "formula", "target"]].astype({"id": str, "formula": str, "target": np.float64})
        digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def _run_fold(pred: Predictor, data: FoldData, task: TaskInfo, out: Path, seed: int) -> tuple[FoldPrediction, float]:
    """Run or resume one (predictor, fold); returns predictions and the seconds the fold took. A finished
    fold is reused only when the predictor's ``signature()`` (settings) and the fold's data (``data_fingerprint``:
    every training, validation and test row, the target and task type) are unchanged. A fold written before data
    fingerprints were recorded is reused for a MatBench task (fixed data, checked by its test ids) but not for a
    user's own files, which may have changed under the same row count."""
    fold_dir = out / pred.name / f"fold_{data.fold}"
    pred_path = fold_dir / "predictions.csv"
    meta_path = fold_dir / "fold.json"
    signature = pred.signature() if hasattr(pred, "signature") else None
    fingerprint = data_fingerprint(data, task)
    if pred_path.is_file() and meta_path.is_file():
        done = read_table(pred_path, text_columns=("id",)).frame
        meta = json.loads(meta_path.read_text())
        same = meta.get("signature", signature) == signature and (
            meta["data"] == fingerprint if "data" in meta else task.benchmark != CSV)
        if not same:
            logger.info("%s fold %d: settings or data changed since the finished run in %s: retraining", pred.name,
                        data.fold, fold_dir)
        if same and done["id"].astype(str).tolist() == data.test["id"].astype(str).tolist():
            logger.info("resume: %s fold %d already done", pred.name, data.fold)
            unc = done["uncertainty"].to_numpy(np.float64) if "uncertainty" in done else None
            columns = task.probability_columns
            if all(c in done for c in columns):
                values = done[columns or ["prediction"]].to_numpy(np.float64)
                labels = done["prediction"].to_numpy(np.int64) if columns else None
                return (FoldPrediction(values if columns else values[:, 0], meta["params"], unc, labels),
                        float(meta["seconds"]))
    fold_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    resume = False
    if getattr(pred, "resumable", False):
        started = fold_dir / STARTED_FILE
        marker = {"signature": signature, "data": fingerprint}
        resume = started.is_file() and json.loads(started.read_text()) == marker
        if resume:
            logger.info("%s fold %d: continuing the interrupted training in %s", pred.name, data.fold, fold_dir)
        started.write_text(json.dumps(marker))
        result = pred.fit_predict(data, task, fold_dir, seed, resume=resume)
    else:
        result = pred.fit_predict(data, task, fold_dir, seed)
    seconds = time.perf_counter() - t0
    p = np.asarray(result.predictions, dtype=np.float64)
    columns = task.probability_columns
    shape = (len(data.test), len(columns)) if columns else (len(data.test),)
    if p.shape != shape:
        raise ValueError(f"{pred.name} fold {data.fold}: predictions of shape {p.shape} for {len(data.test)} test rows"
                         + (f" of {len(columns)} classes" if columns else ""))
    if not np.isfinite(p).all():
        raise ValueError(f"{pred.name} fold {data.fold}: {int((~np.isfinite(p)).sum())} non-finite predictions")
    # a task of three classes or more: the predicted class (the predictor's, else the most probable), then every
    # class's probability
    labels = None
    if columns:
        labels = p.argmax(1) if result.labels is None else np.asarray(result.labels, dtype=np.int64).reshape(len(p))
    frame = data.test[["id", "formula", "target"]].assign(prediction=p if labels is None else labels)
    for i, column in enumerate(columns):
        frame[column] = p[:, i]
    if result.uncertainty is not None:
        frame["uncertainty"] = np.asarray(result.uncertainty, dtype=np.float64).reshape(len(p))
    frame.to_csv(pred_path, index=False)
    meta_path.write_text(json.dumps({"params": matbench_json._jsonable(result.params), "seconds": seconds,
                                      "signature": signature, "data": fingerprint,
                                      **({"resumed": True} if resume else {})}, indent=1))
    return FoldPrediction(p, result.params, result.uncertainty, labels), seconds


def uncertainty_calibration(uncertainty: Sequence[np.ndarray | None], predictions: Sequence[np.ndarray],
                            targets: Sequence[np.ndarray]) -> dict[str, float] | None:
    """How well a predicted std covers the test errors, over all folds: the fraction of rows with
    ``|error| <= 1 sigma`` and ``<= 2 sigma`` (a Gaussian would give 0.683 and 0.954), the mean sigma and the
    Spearman rank correlation between sigma and |error|. ``None`` when any fold has no uncertainty."""
    if not uncertainty or any(u is None for u in uncertainty):
        return None
    from scipy.stats import spearmanr

    sigma = np.concatenate([np.asarray(u, dtype=np.float64) for u in uncertainty])
    err = np.abs(np.concatenate(predictions) - np.concatenate(targets).astype(np.float64))
    return {"within_1_sigma": float((err <= sigma).mean()), "within_2_sigma": float((err <= 2 * sigma).mean()),
            "mean_sigma": float(sigma.mean()), "mean_abs_error": float(err.mean()),
            "spearman_sigma_error": float(spearmanr(sigma, err).statistic)}


def _one_split(task: TaskInfo, frames: dict[str, pd.DataFrame], seed: int, max_train_rows: int | None
               ) -> tuple[list[FoldData], pd.DataFrame]:
    """The one fold of a task with fixed train / validation / test rows (LLM4Mat-Bench, your own files): the
    training rows optionally subsampled (``max_train_rows``, seeded), a warning for a split of one class."""
    train = frames["train"]
    if max_train_rows is not None and len(train) > max_train_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(train), size=max_train_rows, replace=False))
        logger.warning("training on %d of the %d training rows (--max-train-rows)", max_train_rows, len(train))
        train = train.iloc[keep].reset_index(drop=True)
    for split in ("validation", "test"):
        classes = frames[split]["target"].unique() if task.task_type == "classification" else ()
        if len(classes) == 1:
            name = task.labels[int(classes[0])] if task.labels else int(classes[0])
            logger.warning("every %s row is of class %r: ROC-AUC is undefined there (nan) and balanced accuracy is "
                           "that class's recall; %s rows of two classes or more measure a classifier", split, name,
                           split)
    if task.task_type == "classification" and task.num_classes > 2:
        seen = set(pd.concat([train["target"], frames["validation"]["target"]]).astype(int).tolist())
        unseen = [label for i, label in enumerate(task.labels or ()) if i not in seen]
        if unseen:
            logger.warning("class(es) %s have no training or validation row: no model can learn them, and test rows "
                           "of them count as errors", ", ".join(map(repr, unseen)))
    return [FoldData(0, train, frames["validation"], frames["test"])], pd.concat([train, frames["validation"],
                                                                                frames["test"]], ignore_index=True)


def matbench_folds(task: TaskInfo, frame: pd.DataFrame, folds: Sequence[int], validation_fraction: float,
                   seed: int, max_train_rows: int | None = None) -> list[FoldData]:
    """Official folds; validation carved from each fold's training rows (stratified for classification);
    ``max_train_rows`` optionally subsamples the training rows (a declared protocol deviation)."""
    out = []
    for k in folds:
        train, test = fold_indices(frame["test_fold"], k)
        rng = np.random.default_rng(seed + k)
        if max_train_rows is not None and len(train) > max_train_rows:
            train = np.sort(rng.choice(train, size=max_train_rows, replace=False))
        labels = frame["target"].to_numpy()[train] if task.task_type == "classification" else None
        fit, val = carve_validation(train, validation_fraction, seed + k, labels)
        out.append(FoldData(k, frame.iloc[fit].reset_index(drop=True), frame.iloc[val].reset_index(drop=True),
                            frame.iloc[test].reset_index(drop=True)))
    return out


def run_benchmark(
    benchmark: str,
    task_name: str,
    predictors: Sequence[Predictor],
    output_dir: str | Path,
    *,
    folds: Sequence[int] | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    max_train_rows: int | None = None,
    results_dir: str | Path | None = None,
    command: str = "",
    data_root: Path | None = None,
    notes: str = "",
    own_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every predictor on the benchmark's folds; write predictions, summaries and the MatBench JSON
    under ``output_dir``, and one result record per predictor under ``results_dir`` only when it is given.
    ``benchmark='csv'`` reads the user's files: ``own_data`` holds the keyword arguments of
    :func:`evaluation.own_data.load_own_data` (train, test, target, ...). Returns the summary dict."""
    out = Path(output_dir)
    names = [p.name for p in predictors]
    if len(set(names)) != len(names):
        raise ValueError(f"predictor names must be unique, got {names}")
    # ---- everything that can fail before training ----
    rejected: list[str] = []
    if benchmark != MATBENCH:
        if folds is not None and [int(f) for f in folds] != [0]:
            raise ValueError(f"folds {list(folds)} asked for, but {benchmark} task {task_name!r} has one fixed split "
                             "(fold 0); --folds selects among MatBench's 5 official folds")
        folds = [0]
    if benchmark == MATBENCH:
        task = matbench_task(task_name)
        frame = load_matbench_frame(task_name, data_root)
        folds = list(range(N_FOLDS)) if folds is None else sorted(set(int(f) for f in folds))
        for f in folds:
            if not 0 <= f < N_FOLDS:
                raise ValueError(f"fold {f} out of range 0..{N_FOLDS - 1}")
        fold_data = matbench_folds(task, frame, folds, validation_fraction, seed, max_train_rows)
        all_rows = frame
    elif benchmark == LLM4MAT:
        task, frames, rejected = load_llm4mat(task_name, data_root)
        fold_data, all_rows = _one_split(task, frames, seed, max_train_rows)
    elif benchmark == CSV:
        if not own_data:
            raise ValueError("benchmark 'csv' needs own_data={'train': ..., 'test': ..., 'target': ...}")
        task, frames, rejected = load_own_data(**{"name": task_name, **own_data},
                                               validation_fraction=validation_fraction, seed=seed)
        if task.labels and task.num_classes == 2:
            logger.warning("target %r holds two labels: %r is class 0, %r is class 1, the positive class whose "
                           "probability is predicted (--positive-label chooses it)", task.target, *task.labels)
        elif task.labels:
            logger.warning("target %r holds %d classes: %s; every class's probability is predicted", task.target,
                           task.num_classes, ", ".join(f"{i} = {label!r}" for i, label in enumerate(task.labels)))
        fold_data, all_rows = _one_split(task, frames, seed, max_train_rows)
        seen = seen_compositions(frames["test"]["formula"],
                                 pd.concat([fold_data[0].train["formula"], frames["validation"]["formula"]]))
        if seen[0]:
            logger.warning("%d of %d test rows (%d distinct composition(s)) have a composition that is also among the training or "
                           "validation rows: their errors measure recall of known compounds more than prediction of "
                           "new ones (to measure new compounds, split the files by composition)", seen[0],
                           len(frames["test"]), seen[1])
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose 'matbench', 'llm4mat' or 'csv'")
    bad = _validate_tokens(all_rows)
    if bad:
        raise ValueError(f"{len(bad)} rows of {task_name} have formulas the tokenizer rejects: {bad[:10]}")
    for p in predictors:
        if hasattr(p, "check"):
            p.check(fold_data[0], task)
    out.mkdir(parents=True, exist_ok=True)
    if rejected:
        (out / "rejected_rows.txt").write_text("\n".join(rejected) + "\n")
        logger.warning("%d rows left out (see %s; first: %s)", len(rejected), out / "rejected_rows.txt", rejected[0])

    # ---- run ----
    per: dict[str, dict[str, Any]] = {}
    total = len(predictors) * len(fold_data)
    bar = tqdm(total=total, desc=f"{task_name}", unit="fold")
    for p in predictors:
        rows, preds, params, secs, uncs = [], [], [], [], []
        for fd in fold_data:
            bar.set_postfix_str(f"{p.name} fold {fd.fold}")
            res, s = _run_fold(p, fd, task, out, seed)
            refs = fd.test["target"].to_numpy()
            rows.append(score_own(task.task_type, res.predictions, refs, res.labels) if benchmark == CSV
                        else score(task.benchmark, task.task_type, res.predictions, refs))
            if res.uncertainty is not None and task.task_type == "regression":  # calibrated sigma: its coverage
                cal = res.params.get("calibration") or {}  # the fold's interval multipliers, when it has them
                multipliers = ([cal[f"interval_multiplier_{tag}"] for tag in INTERVAL_TAGS]
                               if all(f"interval_multiplier_{tag}" in cal for tag in INTERVAL_TAGS) else None)
                rows[-1].update(coverage_metrics(np.asarray(res.predictions) - refs, res.uncertainty, multipliers))
            preds.append(res.predictions)
            uncs.append(res.uncertainty)
            params.append(res.params)
            secs.append(s)
            bar.update(1)
        per[p.name] = {"scores": rows, "predictions": preds, "params": params, "seconds": secs, "uncertainty": uncs}
        held_out = [{k: prm[k] for k in ("validation", "calibration", "forest_blend", "same_composition") if k in prm} for prm in params]
        if any(held_out):
            per[p.name]["validation"] = held_out
    bar.close()

    metric = task.metric
    summary: dict[str, Any] = {
        "benchmark": benchmark, "task": task_name, "task_type": task.task_type, "metric": metric,
        **({"class_labels": list(task.labels)} if task.labels else {}),
        "folds": folds, "n_test": [len(fd.test) for fd in fold_data], "n_train": [len(fd.train) for fd in fold_data],
        "n_validation": [len(fd.validation) for fd in fold_data], "validation_fraction": validation_fraction,
        "max_train_rows": max_train_rows, "seed": seed, "rejected_rows": len(rejected),
        **({"test_rows_with_a_training_composition": seen[0]} if benchmark == CSV else {}), "hardware": hardware(),
        "command": command, "notes": notes, "variants": {},
    }
    table = []
    for name, r in per.items():
        metrics = sorted(r["scores"][0])
        summary["variants"][name] = {
            "per_fold": r["scores"],
            "summary": {m: fold_summary([s[m] for s in r["scores"]]) for m in metrics},
            "wall_seconds": float(sum(r["seconds"])),
            "fold_seconds": [float(x) for x in r["seconds"]],
        }
        if "validation" in r:  # CrossMat: metrics of the held-out validation rows and what they calibrated
            summary["variants"][name]["validation"] = r["validation"]
        calibration = uncertainty_calibration(r["uncertainty"], r["predictions"],
                                              [fd.test["target"].to_numpy() for fd in fold_data])
        if calibration is not None and task.task_type == "regression":
            summary["variants"][name]["uncertainty_calibration"] = calibration
        table += [{"variant": name, "fold": f, **s} for f, s in zip(folds, r["scores"], strict=True)]
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    pd.DataFrame(table).to_csv(out / "summary.csv", index=False)

    if benchmark == MATBENCH and folds == list(range(N_FOLDS)):
        for name, r in per.items():
            official = [{k: v for k, v in sc.items() if not k.startswith("coverage_")} for sc in r["scores"]]
            results = matbench_json.task_results(
                [fd.test["id"].astype(str).tolist() for fd in fold_data], r["predictions"], official, r["params"],
                r["uncertainty"] if all(u is not None for u in r["uncertainty"]) else None)
            d = matbench_json.benchmark_dict({task_name: results}, {"algorithm": name, "harness": "crossmat evaluate.py"})
            matbench_json.write_benchmark(out / name / "matbench_results.json", d)

    if results_dir is not None:
        baselines = {n: v for n, v in summary["variants"].items() if n in BASELINE_NAMES}
        for name, v in summary["variants"].items():
            folds_vals = [s[metric] for s in v["per_fold"]]
            record = {
                "task": task_name, "variant": name, "metric": metric, "folds": folds_vals,
                "mean": v["summary"][metric]["mean"], "std": v["summary"][metric]["std"],
                "baseline_same_run": {
                    b: {"mean": bv["summary"][metric]["mean"], "std": bv["summary"][metric]["std"],
                        "folds": [s[metric] for s in bv["per_fold"]]}
                    for b, bv in baselines.items() if b != name
                },
                "command": command, "hardware": summary["hardware"], "wall_seconds": v["wall_seconds"],
                "fold_ids": folds, "all_metrics": {m: s["mean"] for m, s in v["summary"].items()},
                "fold_seconds": v["fold_seconds"], "uncertainty_calibration": v.get("uncertainty_calibration"),
                "protocol": {"validation_fraction": validation_fraction, "max_train_rows": max_train_rows,
                             "n_train": summary["n_train"], "n_test": summary["n_test"], "seed": seed},
                "notes": notes,
            }
            write_record(Path(results_dir), benchmark, record)
    return summary
