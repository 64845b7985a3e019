"""Bring-your-own-data benchmark (``--benchmark csv``): the user's train / (validation) / test files, one
target column, CrossMat and the baselines on the same split in the same run.

Rows with a missing formula or target, or a formula the tokenizer cannot read (unknown element, stray
character), are left out and reported (``rejected_rows.txt`` and a warning with the first of them), never
dropped silently; a target that is not a number fails naming the file and row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from crossmat.dataset_builders.tables import TableError, formula_column_hint, missing_column_hint, read_table
from crossmat.dataset_builders.targets import (
    TARGET_TRANSFORMS,
    TASK_TYPES,
    TaskTypeError,
    apply_labels,
    class_labels,
    decide_task_type,
    target_values,
    transform_targets,
)

from .tasks import BenchmarkDataError, TaskInfo, carve_validation

CSV = "csv"
MIN_TRAINING_ROWS = 2  # one row leaves nothing to learn from once a validation row is set aside
__all__ = ["CSV", "TARGET_TRANSFORMS", "TASK_TYPES", "load_own_data", "score_own", "seen_compositions", "unreadable_formulas"]


def _read(path: Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(f"--{what} {path}: no such file")
    try:
        return read_table(path).frame
    except TableError as err:
        raise BenchmarkDataError(str(err)) from None


def unreadable_formulas(formulas: pd.Series, skip: np.ndarray | None = None) -> np.ndarray:
    """Per row, why the tokenizer rejects its formula ("" when it reads it or the row is skipped anyway)."""
    from crossmat.tokenization import CrossMatTokenizerFast, FormulaError

    check = np.ones(len(formulas), dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
    values = formulas.to_numpy(dtype=object)[check]
    _, first, inverse = np.unique(values.astype(str), return_index=True, return_inverse=True)  # each formula once
    reasons = np.full(len(first), "", dtype=object)
    for k, formula in enumerate(values[first]):
        try:
            CrossMatTokenizerFast.prepare_formula(formula)
        except FormulaError as err:
            reasons[k] = f"formula {_shown(formula)}: {err.reason}"
    why = np.full(len(formulas), "", dtype=object)
    why[check] = reasons[inverse]
    return why


def _shown(value: object, limit: int = 40) -> str:
    """``repr`` of a cell, cut to ``limit`` characters (a CIF or JSON structure in the formula column is pages long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _composition_keys(formulas: pd.Series) -> pd.Series:
    """Per row, its composition as element fractions (Fe2O3 = Fe4O6 = Fe0.4O0.6), each unique formula parsed once."""
    from crossmat.tokenization.formula import parse_formula

    unique = pd.unique(formulas.astype(str))
    keys = {f: tuple(sorted((el.symbol, round(float(a), 6)) for el, a in parse_formula(f).fractional_composition.items()))
            for f in unique}
    return formulas.astype(str).map(keys)


def seen_compositions(test: pd.Series, seen: pd.Series) -> tuple[int, int]:
    """``(rows, compositions)``: how many test rows, and distinct compositions, are also among ``seen``'s (the
    training and validation rows). Their errors measure how well the model recalls a known compound more than how
    it predicts a new one."""
    test_keys = _composition_keys(test)
    hit = test_keys.isin(set(_composition_keys(seen)))
    return int(hit.sum()), int(test_keys[hit].nunique())


def load_own_data(
    train: Path,
    test: Path,
    target: str,
    validation: Path | None = None,
    *,
    formula_column: str = "formula",
    id_column: str | None = None,
    task_type: str = "auto",
    unit: str | None = None,
    name: str | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    positive_label: str | None = None,
    target_transform: str | None = None,
) -> tuple[TaskInfo, dict[str, pd.DataFrame], list[str]]:
    """``(task, {"train","validation","test"} frames with columns id, formula, target, rejected-row messages)``.

    Without ``validation`` a seeded ``validation_fraction`` of the training rows (stratified for
    classification) is held out for model selection. ``task_type='auto'``: 0/1 or boolean targets are
    classification, anything else regression; so is a column of text labels, and whole numbers with
    ``task_type='classification'`` (:func:`dataset_builders.targets.class_labels`: of two labels ``positive_label``
    is class 1, default the label that sorts last; ``TaskInfo.labels`` names the classes in order).
    ``target_transform`` (``log10``, ``log10_abs``): every split's target is transformed, so every predictor is
    trained and scored on that scale; ``TaskInfo.target`` becomes ``log10(<column>)``; rows where it is undefined
    are left out and reported."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"task type must be one of {TASK_TYPES}, got {task_type!r}")
    files = {"train": train, "validation": validation, "test": test}
    raws: dict[str, pd.DataFrame] = {}
    for split, path in files.items():
        if path is None:
            continue
        raw = _read(path, split)
        for col in (formula_column, target, *([id_column] if id_column else [])):
            if col not in raw.columns:
                hint = missing_column_hint(col, list(raw.columns), formula_column, raw)
                raise BenchmarkDataError(f"{path}: no column {col!r}{hint}; columns are {list(raw.columns)}")
        raws[split] = raw
    try:
        labels = class_labels([raw[target] for raw in raws.values()], target, positive_label, task_type=task_type)
    except TaskTypeError as err:
        raise BenchmarkDataError(str(err)) from None
    frames: dict[str, pd.DataFrame] = {}
    rejected: list[str] = []
    raw_targets: list[pd.Series] = []
    for split, raw in raws.items():
        path = files[split]
        if labels is not None:
            raw = raw.assign(**{target: apply_labels(raw[target], labels)})
        ids = raw[id_column].astype(str) if id_column else pd.Series([f"{split}-{i}" for i in range(len(raw))])
        try:
            values, _ = target_values(raw[target], target, f"{path}: ")
        except TaskTypeError as err:
            raise BenchmarkDataError(str(err)) from None
        values, undefined = transform_targets(values, target_transform)
        frame = pd.DataFrame({"id": ids.to_numpy(), "formula": raw[formula_column].to_numpy(),
                              "target": values})
        no_formula = frame["formula"].isna().to_numpy()
        no_target = ~np.isfinite(frame["target"].to_numpy()) & ~undefined
        unreadable = unreadable_formulas(frame["formula"], no_formula | no_target | undefined)
        drop = no_formula | no_target | undefined | (unreadable != "")
        raw_targets.append(raw[target][~drop])
        undefined_reason = f"target {'<= 0' if target_transform == 'log10' else '0'} has no {target_transform}"
        why = [unreadable[i] or (undefined_reason if undefined[i] and not no_formula[i] else "")
               or _missing_reason(no_formula[i], frame["target"].iloc[i]) for i in np.flatnonzero(drop)]
        rejected += [f"{Path(path).name} row {i} ({frame['id'].iloc[i]}): {w}"
                     for i, w in zip(np.flatnonzero(drop), why, strict=True)]
        frames[split] = frame[~drop].reset_index(drop=True)
        if frames[split].empty:
            raise BenchmarkDataError(_no_usable_rows(path, split, raw, formula_column, no_target, unreadable,
                                                     undefined, target_transform))
    try:
        task_type, _ = decide_task_type({target: pd.concat(raw_targets, ignore_index=True)},
                                        "classification" if labels else task_type)
    except TaskTypeError as err:
        raise BenchmarkDataError(str(err)) from None
    if task_type == "classification":
        if target_transform:
            raise BenchmarkDataError(f"{train}: --target-transform {target_transform} applies to a numeric target, and "
                                     f"{target!r} is a classification target")
        for f in frames.values():
            f["target"] = f["target"].astype(np.int64)
    if "validation" not in frames:
        train_df = frames["train"]
        strat = train_df["target"].to_numpy() if task_type == "classification" else None
        fit, val = carve_validation(np.arange(len(train_df)), validation_fraction, seed, strat)
        frames["train"], frames["validation"] = train_df.iloc[fit].reset_index(drop=True), train_df.iloc[val].reset_index(drop=True)
    _check_training_rows(frames, train, task_type, labels)
    if target_transform:  # the model, its card and every score are on this scale, and say so
        target, unit = f"{target_transform}({target})", unit and f"{target_transform}({unit})"
    info = TaskInfo(CSV, name or target, task_type, target, unit, n=sum(len(f) for f in frames.values()), labels=labels)
    return info, {k: frames[k] for k in ("train", "validation", "test")}, rejected


def _no_usable_rows(path: Path, split: str, raw: pd.DataFrame, formula_column: str, no_target: np.ndarray,
                    unreadable: np.ndarray, undefined: np.ndarray, transform: str | None) -> str:
    """Why every row of a file was left out, and what would fix it."""
    bad_formula = unreadable != ""
    if len(raw) and bad_formula.all():  # the formula column does not hold formulas
        return (f"{path}: no row of column {formula_column!r} reads as a formula (row 0: {unreadable[0]})"
                f"{formula_column_hint(raw, formula_column)}")
    hint = ("; test rows are scored, so they need targets: to predict rows without one, run this on files with "
            "targets, then crossmat predict --model <output-dir>/crossmat/fold_0/model --input "
            f"{Path(path).name} --output predictions.csv") if split == "test" and no_target.all() else ""
    counts = [f"{int(no_target.sum())} without a target", f"{int(bad_formula.sum())} with a formula CrossMat cannot read",
              *([f"{int(undefined.sum())} whose target has no {transform}"] if transform else [])]
    return f"{path}: no rows with both a formula and a target ({len(raw)} row(s): {', '.join(counts)}){hint}"


def _missing_reason(no_formula: bool, target: float) -> str:
    """Why a row without a readable formula/target pair is left out."""
    reasons = ["missing formula"] if no_formula else []
    if np.isnan(target):
        reasons.append("missing target")
    elif not np.isfinite(target):
        reasons.append(f"target is {target} (not a finite number)")
    return " and ".join(reasons)


def _check_training_rows(frames: dict[str, pd.DataFrame], train: Path, task_type: str,
                         labels: tuple[str, ...] | None) -> None:
    """Enough training rows to fit anything, and two classes or more of a classification task among them."""
    fit = frames["train"]
    if len(fit) < MIN_TRAINING_ROWS:
        raise BenchmarkDataError(
            f"{train}: {len(fit)} usable training row(s) after the validation rows were set aside; at least "
            f"{MIN_TRAINING_ROWS} are needed")
    if task_type == "classification":
        present = sorted(set(fit["target"].tolist()))
        if len(present) < 2:
            name = labels[present[0]] if labels else present[0]
            raise BenchmarkDataError(f"{train}: every training row is of class {name!r}; a classifier needs rows of "
                                     "two classes or more")


def score_own(task_type: str, predictions, references, labels=None) -> dict[str, float]:
    """MAE, RMSE, R², max error (regression) or balanced accuracy, ROC-AUC, accuracy, F1 (classification;
    predictions are P(class 1) of a binary task, the rows x classes probabilities of a task of more classes, whose
    label metrics score ``labels``, the predicted classes, default the most probable), through the harness's
    ``evaluate`` metric modules plus R²."""
    from .scores import score

    multiclass = task_type == "classification" and np.ndim(predictions) == 2
    out = score(CSV if multiclass else "matbench", task_type, predictions, references,
                **({"labels": labels} if multiclass and labels is not None else {}))
    if task_type == "regression":
        y = np.asarray(references, dtype=np.float64)
        p = np.asarray(predictions, dtype=np.float64)
        var = float(((y - y.mean()) ** 2).sum())
        out["r2"] = 1.0 - float(((y - p) ** 2).sum()) / var if var > 0 else float("nan")
    return out
