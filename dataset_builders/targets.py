"""The one decision between regression and classification from target values (user tables: training data
and ``evaluate --benchmark csv``).

Numbers are regression targets; a single column holding only 0/1, booleans or the words ``true``/``false``,
``yes``/``no`` (any case) is a binary classification target, and so is a column of exactly two text labels
(:func:`two_labels`). Missing cells (NaN, :data:`NA_VALUES`) stay missing. Anything else raises
:class:`TaskTypeError` naming the column, the first bad row and example values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .tables import NA_VALUES

__all__ = ["BINARY_WORDS", "TARGET_TRANSFORMS", "TASK_TYPES", "TaskTypeError", "apply_labels", "decide_task_type", "target_values",
           "transform_targets", "two_labels"]

TASK_TYPES = ("auto", "regression", "classification")
TARGET_TRANSFORMS = ("log10", "log10_abs")  # a recipe's data.target_transform, evaluate's --target-transform
BINARY_WORDS = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}
_NEEDS = "regression needs numbers, classification needs 0/1, true/false or yes/no labels"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_HINTS = (  # (pattern every bad cell matches, what it most likely is)
    (r"[-+]?\d+,\d+", "commas in the numbers? write 2.709 (or 2709), not 2,709"),
    (rf"{_NUMBER}\s*[^\d\s.,+-].*", "units in the cells? keep only the number, and name the unit with --unit"),
    (rf"[<>≤≥~]=?\s*{_NUMBER}", "bounds or approximations ('<0.1') are not values: drop those rows or give a number"),
)


def _hint(bad: list[Any]) -> str:
    """What the bad target cells most likely are, when they all look alike; else empty."""
    cells = [v.strip() for v in bad if isinstance(v, str)]
    if len(cells) < len(bad):
        return ""
    for pattern, hint in _HINTS:
        if all(re.fullmatch(pattern, c) for c in cells):
            return f" ({hint})"
    return ""


def transform_targets(values: np.ndarray, transform: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(transformed values, cells where the transform is undefined)`` of a regression target array (any shape):
    ``log10`` of positive values, ``log10_abs`` of non-zero ones; undefined cells become NaN, missing ones stay NaN
    and are not counted as undefined."""
    values = np.asarray(values, dtype=np.float64)
    if transform is None:
        return values, np.zeros(values.shape, dtype=bool)
    if transform not in TARGET_TRANSFORMS:
        raise ValueError(f"target transform must be one of {TARGET_TRANSFORMS}, got {transform!r}")
    finite = np.isfinite(values)
    defined = finite & ((values > 0) if transform == "log10" else (values != 0))
    out = np.full(values.shape, np.nan)
    out[defined] = np.log10(np.abs(values[defined]))
    return out, finite & ~defined


class TaskTypeError(ValueError):
    """Target values that fit neither regression nor (binary) classification, or not the requested one."""


def target_values(values: Any, column: str, where: str = "") -> tuple[np.ndarray, bool]:
    """``(float64 values, whether any cell was a word or boolean label)`` of one target column: numbers as they
    are, booleans and true/false/yes/no (any case) as 1/0, missing cells as NaN. Raises :class:`TaskTypeError`
    for any other cell (the column, first bad row and up to five distinct bad values)."""
    s = pd.Series(values).reset_index(drop=True)
    if s.dtype == bool:
        return s.to_numpy(dtype=np.float64), True
    if pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=np.float64), False
    num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
    rest = np.flatnonzero(np.isnan(num) & s.notna().to_numpy())
    words = False
    bad: dict[int, Any] = {}
    mapping: dict[Any, float] = {}
    for i in rest:
        v = s.iloc[i]
        key = v if isinstance(v, (bool, np.bool_, str)) else repr(v)
        if key not in mapping:
            if isinstance(v, (bool, np.bool_)):
                mapping[key] = float(v)
            elif isinstance(v, str) and v.strip().lower() in BINARY_WORDS:
                mapping[key] = BINARY_WORDS[v.strip().lower()]
            elif isinstance(v, str) and v.strip() in NA_VALUES:
                mapping[key] = np.nan
            else:
                mapping[key] = -np.inf  # marker: not a target value
        value = mapping[key]
        if value == -np.inf:
            bad[int(i)] = v
        else:
            num[i] = value
            words |= not np.isnan(value)
    if bad:
        first = next(iter(bad))
        examples = list(dict.fromkeys(map(repr, bad.values())))[:5]
        raise TaskTypeError(f"{where}target column {column!r} is not numeric (row {first} holds {bad[first]!r}); "
                            f"{len(bad)} such row(s), e.g. {', '.join(examples)}{_hint(list(bad.values()))}: {_NEEDS}")
    return num, words


def decide_task_type(
    columns: Mapping[str, Any], task_type: str = "auto", where: str = ""
) -> tuple[str, np.ndarray]:
    """``(regression | classification, float64 matrix rows x columns)`` for the target ``columns``.

    ``auto``: one column of only 0/1 (or true/false, yes/no, booleans) is classification, numbers are
    regression; word labels mixed with other numbers, or in several columns, raise. An explicit
    ``task_type`` is checked against the values."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"task type must be one of {TASK_TYPES}, got {task_type!r}")
    if not columns:
        raise TaskTypeError(f"{where}no target column")
    arrays, word_columns = [], []
    for name, values in columns.items():
        y, words = target_values(values, name, where)
        arrays.append(y)
        if words:
            word_columns.append(name)
    y = np.stack(arrays, axis=1)
    finite = np.unique(y[np.isfinite(y)])
    binary = bool(finite.size) and set(finite.tolist()) <= {0.0, 1.0}
    requested = task_type
    if task_type == "auto":
        task_type = "classification" if len(columns) == 1 and binary else "regression"
    name = next(iter(columns))
    if task_type == "classification":
        if len(columns) != 1:
            raise TaskTypeError(f"{where}classification needs one target column, got {list(columns)}")
        if not binary:
            others = [float(v) for v in finite.tolist() if v not in (0.0, 1.0)][:5]
            raise TaskTypeError(f"{where}classification needs 0/1, true/false or yes/no labels in target column "
                                f"{name!r}; it holds {others}" if others else
                                f"{where}target column {name!r} holds no labels")
    elif word_columns:
        col = word_columns[0]
        numbers = [float(v) for v in np.unique(y[:, list(columns).index(col)]) if np.isfinite(v) and v not in (0.0, 1.0)][:5]
        if numbers:
            raise TaskTypeError(f"{where}target column {col!r} mixes true/false/yes/no labels with numbers {numbers}")
        raise TaskTypeError(f"{where}target column {col!r} holds true/false/yes/no labels: " + (
            "regression needs numbers" if requested == "regression" else
            "a classification target needs exactly one target column"))
    return task_type, y


def two_labels(columns: list[pd.Series], target: str, positive_label: str | None = None,
               option: str = "--positive-label", task_type: str = "auto") -> tuple[str, str] | None:
    """``(class 0, class 1)`` when the target column (all its splits) holds exactly two distinct text labels
    (``metal`` / ``insulator``), else ``None`` and the column is read as before (numbers, 0/1, true/false, yes/no).
    Class 1 is ``positive_label``, or the label that sorts last. Raises :class:`TaskTypeError` when
    ``positive_label`` is given but the column does not hold exactly two text labels, one of them that one, and
    when ``task_type`` is ``regression`` for such a column (``option`` names the setting in the message)."""
    values = pd.concat(columns, ignore_index=True)
    values = values[values.notna()]
    text = values.astype(str).str.strip()
    text = text[~text.isin(NA_VALUES)]
    if values.dtype == bool or pd.api.types.is_numeric_dtype(values):
        other = text.iloc[:0]
    else:
        plain = pd.to_numeric(text, errors="coerce").notna() | text.str.lower().isin(BINARY_WORDS)
        other = text[~plain]
    labels = sorted(set(other))
    if len(labels) != 2 or len(other) != len(text) or (positive_label is not None and positive_label not in labels):
        if positive_label is None:
            return None  # not two text labels: target_values reads the column or names its first bad row
        shown = ", ".join(map(repr, labels[:5])) or "no text labels"
        raise TaskTypeError(f"{option} {positive_label!r}: target column {target!r} must hold exactly two text labels, "
                            f"one of them {positive_label!r}; it holds {shown}"
                            + ("" if len(other) == len(text) else " and numbers or true/false values"))
    if task_type == "regression":
        raise TaskTypeError(f"task type regression: target column {target!r} holds the text labels "
                            f"{labels[0]!r}, {labels[1]!r}, not numbers")
    if positive_label == labels[0]:
        labels.reverse()
    return labels[0], labels[1]


def apply_labels(values: pd.Series, labels: tuple[str, str]) -> pd.Series:
    """``values`` with each of the two text labels replaced by its class (``labels[0]`` -> 0.0, ``labels[1]`` -> 1.0);
    other cells unchanged."""
    classes = {labels[0]: 0.0, labels[1]: 1.0}
    return values.map(lambda v: classes.get(v.strip(), v) if isinstance(v, str) else v)
