"""Benchmark task registry and data access (MatBench v0.1 and LLM4Mat-Bench), with fold handling.

MatBench rows come from ``dataset_builders.matbench.load_task_frame`` (columns ``id, formula, target,
test_fold``); the official fold ``k`` tests on rows with ``test_fold == k`` and trains on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

N_FOLDS = 5
MATBENCH = "matbench"
LLM4MAT = "llm4mat"


class BenchmarkDataError(FileNotFoundError):
    """The benchmark data folder or file is missing or malformed."""


@dataclass(frozen=True)
class TaskInfo:
    """What the harness needs to know about one benchmark task."""

    benchmark: str
    name: str
    task_type: str  # "regression" | "classification"
    target: str
    unit: str | None = None
    input_type: str = "composition"
    n: int | None = None
    mad: float | None = None
    labels: tuple[str, ...] | None = None  # class names in class order (text labels, or whole numbers other than 0/1)

    @property
    def num_classes(self) -> int:
        """Classes of a classification task (2 unless ``labels`` names more)."""
        return len(self.labels) if self.labels else 2

    @property
    def probability_columns(self) -> list[str]:
        """The per-class probability columns of a fold's ``predictions.csv`` for a task of three classes or more
        (``probability_<class>``, as ``crossmat predict`` names them); none for regression and binary tasks, whose
        ``prediction`` column holds the value or P(class 1)."""
        if self.task_type != "classification" or self.num_classes <= 2:
            return []
        return [f"probability_{label}" for label in self.labels or ()]

    @property
    def metric(self) -> str:
        """The headline metric of the task. MatBench classification: the balanced accuracy of labels at the
        0.5 threshold, which is what the MatBench leaderboard's "ROC-AUC" column holds (every entry there
        equals its balanced accuracy); the ROC-AUC of probabilities is recorded beside it."""
        if self.benchmark == LLM4MAT:
            return "mad_mae" if self.task_type == "regression" else "official_auc_rounded"
        return "mae" if self.task_type == "regression" else "balanced_accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "mae"


def data_dir() -> Path:
    """The benchmark data root (``CROSSMAT_DATA_DIR``, default ``<repo>/../shared/data``)."""
    from crossmat.dataset_builders.paths import data_dir as _data_dir

    return _data_dir(must_exist=False)


def matbench_tasks() -> dict[str, TaskInfo]:
    """All MatBench v0.1 tasks by name (official metadata from ``dataset_builders.matbench``)."""
    from crossmat.dataset_builders.matbench import TASKS, task_info

    out = {}
    for name in TASKS:
        m = task_info(name)
        out[name] = TaskInfo(MATBENCH, name, m["task_type"], m["target"], m.get("unit"), m["input_type"], m["n"], m.get("mad"))
    return out


def matbench_task(name: str) -> TaskInfo:
    """One MatBench task, or ``ValueError`` listing the valid names."""
    tasks = matbench_tasks()
    if name not in tasks:
        raise ValueError(f"unknown MatBench task {name!r}; valid tasks: {', '.join(sorted(tasks))}")
    return tasks[name]


def load_matbench_frame(name: str, root: Path | None = None) -> pd.DataFrame:
    """``DataFrame(id, formula, target, test_fold)`` of one MatBench task, rows in official order, read by
    ``dataset_builders.matbench.load_task_frame`` from ``<root or data_dir()>/matbench_v0.1``."""
    from crossmat.dataset_builders.matbench import load_task_frame

    matbench_task(name)  # clear error for unknown names first
    folder = (root or data_dir()) / "matbench_v0.1"
    if not folder.is_dir():
        raise BenchmarkDataError(
            f"MatBench data folder {folder} does not exist. Set CROSSMAT_DATA_DIR (or --data-dir) to the folder "
            "holding matbench_v0.1/, or download the official files with dataset_builders."
        )
    try:
        frame = load_task_frame(name, source=folder)
    except FileNotFoundError as err:
        raise BenchmarkDataError(f"MatBench task {name}: {err}") from None
    return frame.reset_index(drop=True)


def fold_indices(test_fold: np.ndarray | pd.Series, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(train, test)`` of official fold ``fold``: test rows have ``test_fold == fold``."""
    tf = np.asarray(test_fold)
    if not 0 <= fold < N_FOLDS:
        raise ValueError(f"fold must be in 0..{N_FOLDS - 1}, got {fold}")
    bad = ~np.isin(tf, np.arange(N_FOLDS))
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise BenchmarkDataError(f"test_fold outside 0..{N_FOLDS - 1} in rows {rows}")
    test = np.flatnonzero(tf == fold)
    train = np.flatnonzero(tf != fold)
    return train, test


def carve_validation(train: np.ndarray, fraction: float, seed: int, labels: np.ndarray | None = None):
    """Split training positions into ``(fit, validation)``: a seeded random ``fraction`` (stratified by
    ``labels`` when given; every class of at least two rows keeps one in each part, so the validation rows that
    calibrate a classifier hold both classes) goes to validation. Test rows are never touched."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return train, train[:0]
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(len(train))
        n_val = max(1, round(fraction * len(train)))
        return np.sort(train[perm[n_val:]]), np.sort(train[perm[:n_val]])
    val_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_val = round(fraction * len(members))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_parts.append(rng.choice(members, size=n_val, replace=False))
    val_pos = np.concatenate(val_parts) if val_parts else np.array([], dtype=int)
    mask = np.zeros(len(train), dtype=bool)
    mask[val_pos] = True
    return train[~mask], train[mask]


# --- LLM4Mat-Bench --------------------------------------------------------------------------------


def llm4mat_dataset_dir(dataset: str, root: Path | None = None) -> Path:
    """Folder of one LLM4Mat-Bench dataset: ``<root>/llm4mat_bench/<dataset>`` or, for the bundled MP
    sample, ``<root>/llm4mat_bench_mp_sample``."""
    base = root or data_dir()
    for cand in (base / "llm4mat_bench" / dataset, base / f"llm4mat_bench_{dataset}_sample", base / dataset):
        if (cand / "test.csv").is_file():
            return cand
    raise BenchmarkDataError(
        f"LLM4Mat-Bench dataset {dataset!r} not found under {base} (looked for llm4mat_bench/{dataset}/test.csv "
        f"and llm4mat_bench_{dataset}_sample/test.csv). Download it from the LLM4Mat-Bench authors and point "
        "CROSSMAT_DATA_DIR (or --data-dir) at it."
    )


def parse_llm4mat_task(task: str) -> tuple[str, str]:
    """``"mp/band_gap"`` -> ``("mp", "band_gap")``."""
    if task.count("/") != 1 or not all(task.split("/")):
        raise ValueError(f"LLM4Mat-Bench task must be '<dataset>/<property>', e.g. 'mp/band_gap'; got {task!r}")
    ds, prop = task.split("/")
    return ds, prop


def load_llm4mat(task: str, root: Path | None = None) -> tuple[TaskInfo, dict[str, pd.DataFrame], list[str]]:
    """Official split frames ``{"train","validation","test"}`` with columns ``id, formula, target`` plus
    the list of rejected-row messages: exactly the preprocessing of the published dataset
    (:func:`dataset_builders.llm4mat.load_llm4mat_task`, the function ``build_llm4mat`` writes with)."""
    from crossmat.dataset_builders.common import BadInputError
    from crossmat.dataset_builders.llm4mat import load_llm4mat_task

    ds, prop = parse_llm4mat_task(task)
    folder = llm4mat_dataset_dir(ds, root)
    try:
        task_type, frames, rejects = load_llm4mat_task(folder, ds, prop, on_bad="report")
    except BadInputError as exc:
        raise ValueError(f"LLM4Mat-Bench task {task!r}: {exc}") from exc
    rejected = [f"{Path(r['file']).stem} row {r['row']} ({r['id']}): {r['reason']}" for r in rejects.rows]
    info = TaskInfo(LLM4MAT, task, task_type, prop, n=sum(len(f) for f in frames.values()))
    return info, frames, rejected
