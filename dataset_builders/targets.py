"""The one decision between regression and classification from target values (user tables: training data
and ``evaluate --benchmark csv``).

Numbers are regression targets; a single column holding only 0/1, booleans or the words ``true``/``false``,
``yes``/``no`` (any case) is a binary classification target, and a column of text labels (``metal`` /
``insulator``; ``cubic`` / ``hexagonal`` / ... for several classes) is a classification target of that many
classes (:func:`class_labels`); so are whole numbers when classification is asked for. Missing cells (NaN,
:data:`NA_VALUES`) stay missing. Anything else raises :class:`TaskTypeError` naming the column, the first bad row
and example values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .tables import NA_VALUES

__all__ = ["BINARY_WORDS", "MAX_CLASSES", "TARGET_TRANSFORMS", "TASK_TYPES", "TaskTypeError", "apply_labels", "class_labels",
           "decide_task_type", "target_values", "transform_targets"]

TASK_TYPES = ("auto", "regression", "classification")
TARGET_TRANSFORMS = ("log10", "log10_abs")  # a recipe's data.target_transform, evaluate's --target-transform
BINARY_WORDS = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}
MAX_CLASSES = 250  # the most classes a classification target may have (the 230 space groups fit)
_NEEDS = ("regression needs numbers, classification needs class labels (0/1, true/false, yes/no, or text labels that "
          "repeat, such as metal / insulator)")
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
    """Target values that fit neither regression nor classification, or not the requested one."""


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
    ``task_type`` is checked against the values: classification takes class indices (whole numbers >= 0; text
    labels and other whole numbers become indices first, :func:`class_labels`)."""
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
    indices = bool(finite.size) and bool(np.all((finite >= 0) & (finite == np.round(finite))))
    requested = task_type
    if task_type == "auto":
        task_type = "classification" if len(columns) == 1 and binary else "regression"
    name = next(iter(columns))
    if task_type == "classification":
        if len(columns) != 1:
            raise TaskTypeError(f"{where}classification needs one target column, got {list(columns)}")
        if not indices:
            others = [float(v) for v in finite.tolist() if v < 0 or v != round(v)][:5]
            raise TaskTypeError(f"{where}classification needs class labels in target column {name!r} (0/1, "
                                f"true/false, yes/no, text labels or whole numbers); it holds {others}" if others else
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


def class_labels(columns: list[pd.Series], target: str, positive_label: str | None = None,
                 option: str = "--positive-label", task_type: str = "auto") -> tuple[str, ...] | None:
    """The class names, in class order, of a classification target that is not already 0/1, read over all its
    splits (``columns``); ``None`` when the column is read as it is (numbers, 0/1, true/false, yes/no).

    * Text labels: every non-missing cell is a label that is not a number or true/false/yes/no, with 2 to
      :data:`MAX_CLASSES` distinct labels (three or more must repeat, on average at least twice, and must not look
      like numbers with units or bounds). Classes are the labels in sorted order; of two, ``positive_label`` is
      class 1, default the label that sorts last.
    * Whole numbers other than 0/1 (``1`` .. ``7``) when ``task_type`` is ``classification``: classes are the
      numbers in increasing order, named as written.

    Raises :class:`TaskTypeError` when ``positive_label`` is given but the column does not hold two labels, one of
    them that one, and when ``task_type`` is ``regression`` for a column of text labels (``option`` names the
    setting in the message)."""
    values = pd.concat(columns, ignore_index=True)
    values = values[values.notna()]
    text = values.astype(str).str.strip()
    text = text[~text.isin(NA_VALUES)]
    numbers = pd.to_numeric(text, errors="coerce")
    if values.dtype == bool or pd.api.types.is_numeric_dtype(values):
        other = text.iloc[:0]
    else:
        other = text[numbers.isna() & ~text.str.lower().isin(BINARY_WORDS)]
    labels: list[str] = sorted(set(other))
    if len(other) != len(text) or not 2 <= len(labels) <= MAX_CLASSES or (
            len(labels) > 2 and (2 * len(labels) > len(text) or _hint(list(labels)))):
        labels = []
    if labels and task_type == "regression":
        raise TaskTypeError(f"task type regression: target column {target!r} holds the text labels "
                            f"{', '.join(map(repr, labels[:5]))}, not numbers")
    if not labels and task_type == "classification" and values.dtype != bool and numbers.notna().all():
        whole = np.unique(numbers.to_numpy(dtype=np.float64))
        if (np.all(whole == np.round(whole)) and not set(whole.tolist()) <= {0.0, 1.0}
                and 2 <= len(whole) <= MAX_CLASSES):
            labels = [str(int(v)) for v in whole]
    if positive_label is not None and (len(labels) != 2 or positive_label not in labels):
        shown = ", ".join(map(repr, labels[:5])) or "no text labels"
        raise TaskTypeError(f"{option} {positive_label!r}: target column {target!r} must hold exactly two labels, "
                            f"one of them {positive_label!r}; it holds {shown}"
                            + ("" if len(other) == len(text) or labels else " and numbers or true/false values"))
    if not labels:
        return None  # target_values reads the column or names its first bad row
    if positive_label == labels[0]:
        labels.reverse()
    return tuple(labels)


def apply_labels(values: pd.Series, labels: tuple[str, ...]) -> pd.Series:
    """``values`` with each class name replaced by its class index (``labels[i]`` -> ``float(i)``; a whole number
    is matched by how it is written, ``3.0`` as ``'3'``); other cells unchanged."""
    index = {label: float(i) for i, label in enumerate(labels)}

    def one(v: Any) -> Any:
        if isinstance(v, str):
            return index.get(v.strip(), v)
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
                and np.isfinite(v) and float(v) == round(float(v)):
            return index.get(str(int(v)), v)
        return v

    return values.map(one)
