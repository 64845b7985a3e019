"""Shared pieces of every builder: row validation with rejection reports, parquet writes, dataset cards."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from crossmat.tokenization import FormulaError, canonical_formula

__all__ = [
    "BadInputError",
    "Rejects",
    "canonicalize_formulas",
    "describe_write_error",
    "numeric_targets",
    "size_category",
    "write_parquet",
    "write_card",
    "write_json",
]

ON_BAD = ("error", "report")
_SIZE_BOUNDS = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"))


def size_category(n_rows: int) -> str:
    """The Hub ``size_categories`` value for a dataset of ``n_rows`` rows (e.g. 9,000 -> ``1K<n<10K``)."""
    for bound, label in _SIZE_BOUNDS:
        if n_rows < bound:
            return label
    return "n>1B"
REJECTS_FILE = "rejected_rows.csv"


class BadInputError(ValueError):
    """Invalid input rows; the message names the file, row and reason."""


_WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}
# what torch's zip writer (caffe2 inline_container) raises when a write fails: it never names the cause
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "inline_container", "iostream error", "file write failed")


def describe_write_error(exc: BaseException, where: str | Path) -> str | None:
    """One line for a failed write under ``where`` (full disk, read-only or forbidden folder), or None when
    ``exc`` is not such a failure (then it should propagate). Torch's writer errors do not say why they
    failed; the free space under ``where`` is reported with them."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        target = f" {exc.filename}" if exc.filename else f" under {where}"
        return f"cannot write{target}: {_WRITE_ERRNOS[exc.errno]} ({exc.strerror})"
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
        probe = Path(where)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            return f"writing a file under {where} failed ({str(exc).splitlines()[0][:120]}); is the disk full?"
        cause = "the disk is full" if free < 64 * 2**20 else "is the disk full or the folder not writable?"
        return (f"writing a file under {where} failed: {cause} ({free / 2**20:.1f} MiB free; torch reported "
                f"{str(exc).splitlines()[0][:120]!r})")
    return None


@dataclass
class Rejects:
    """Collects rejected rows. ``on_bad='error'`` raises at the first one; ``'report'`` keeps them for a CSV."""

    on_bad: str = "error"
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad not in ON_BAD:
            raise ValueError(f"on_bad must be one of {ON_BAD}, got {self.on_bad!r}")

    def add(self, file: object, rows: Sequence[int], ids: Sequence[object], reasons: Sequence[str], stage: str = "") -> None:
        """Record rejected rows (``rows`` are 0-based data-row numbers in ``file``)."""
        if len(rows) == 0:
            return
        if self.on_bad == "error":
            n = len(rows)
            more = f" (and {n - 1} more rows; pass --on-bad report to write them all to {REJECTS_FILE})" if n > 1 else ""
            raise BadInputError(f"{file}: row {rows[0]} (id {ids[0]!r}): {reasons[0]}{more}")
        for r, i, why in zip(rows, ids, reasons, strict=True):
            self.rows.append({"file": str(file), "row": int(r), "id": str(i), "stage": stage, "reason": why})

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, out_dir: str | Path) -> Path | None:
        """Write ``rejected_rows.csv`` next to the output (only when rows were rejected)."""
        if not self.rows:
            return None
        path = Path(out_dir) / REJECTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.rows).to_csv(path, index=False)
        return path


def _canonical_uncached(formula: object) -> tuple[str | None, str | None]:
    try:
        with warnings.catch_warnings():  # pymatgen warns about noble gases without electronegativity
            warnings.simplefilter("ignore", UserWarning)
            return canonical_formula(formula), None
    except FormulaError as err:
        return None, f"unparseable formula: {err.reason}"


@lru_cache(maxsize=1 << 20)
def _canonical_or_reason(formula: str) -> tuple[str | None, str | None]:
    return _canonical_uncached(formula)


def canonicalize_formulas(formulas: Iterable[object]) -> tuple[np.ndarray, dict[int, str]]:
    """Canonical formula per entry (each distinct string parsed once) and ``{position: reason}`` for failures."""
    values = pd.Series(list(formulas), dtype=object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    canon: list[str | None] = []
    reasons: list[str | None] = []
    for u in uniques:
        c, why = _canonical_or_reason(u) if isinstance(u, str) else _canonical_uncached(u)
        canon.append(c)
        reasons.append(why)
    canon_arr = np.array([*canon, None], dtype=object)
    reason_arr = np.array([*reasons, "missing formula"], dtype=object)
    out = canon_arr[codes]  # code -1 -> the trailing None / "missing formula"
    why = reason_arr[codes]
    bad = {int(i): str(why[i]) for i in np.flatnonzero(pd.isna(out))}
    return out, bad


def numeric_targets(values: pd.Series, allow_nan: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """Float targets and ``{position: reason}`` for non-numeric / NaN / infinite values."""
    raw = values.reset_index(drop=True)
    as_num = pd.to_numeric(raw, errors="coerce").astype(float).to_numpy()
    bad: dict[int, str] = {}
    not_numeric = np.flatnonzero(np.isnan(as_num) & raw.notna().to_numpy())
    for i in not_numeric:
        bad[int(i)] = f"non-numeric target {raw.iloc[i]!r}"
    if not allow_nan:
        for i in np.flatnonzero(raw.isna().to_numpy()):
            bad[int(i)] = "missing (NaN) target"
        for i in np.flatnonzero(np.isinf(as_num)):
            bad[int(i)] = f"infinite target {as_num[i]}"
    return as_num, bad


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Atomic parquet write (tmp file + rename), so an interrupted run never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    """Atomic, pretty JSON write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_card(
    folder: str | Path,
    configs: dict[str, dict[str, str | list[str]]],
    *,
    pretty_name: str,
    body: str,
    license: str = "other",
    tags: Sequence[str] = ("materials", "chemistry", "crossmat"),
    task_categories: Sequence[str] = ("tabular-regression", "tabular-classification"),
    extra: dict[str, Any] | None = None,
    default_config: str | None = None,
) -> Path:
    """Write ``README.md``: YAML header (``configs:`` with per-split ``data_files``) + markdown body."""
    meta: dict[str, Any] = {
        "pretty_name": pretty_name,
        "license": license,
        "tags": list(tags),
        "task_categories": list(task_categories),
    }
    if extra:
        meta.update(extra)
    entries = []
    for name, splits in configs.items():
        entry: dict[str, Any] = {
            "config_name": name,
            "data_files": [{"split": s, "path": p} for s, p in splits.items()],
        }
        if name == default_config:
            entry["default"] = True
        entries.append(entry)
    meta["configs"] = entries
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    path = Path(folder) / "README.md"
    tmp = path.with_name(f"README.md.tmp{os.getpid()}")
    tmp.write_text(f"---\n{header}---\n\n{body.strip()}\n")
    os.replace(tmp, path)
    return path


def report_line(rejects: Rejects, out_dir: str | Path) -> str:
    """Human summary of rejected rows (written by the CLI)."""
    path = rejects.write(out_dir)
    return f"{len(rejects)} rejected rows written to {path}" if path else "no rows rejected"
