"""Metric computation through the ``evaluate`` library, using the local metric modules in
``evaluation/metrics/`` (the Hub metric scripts cannot be downloaded offline)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
MODULES = {
    ("matbench", "regression"): "matbench_regression",
    ("matbench", "classification"): "matbench_classification",
    ("llm4mat", "regression"): "llm4mat_regression",
    ("llm4mat", "classification"): "llm4mat_classification",
    ("csv", "classification"): "multiclass_classification",  # your own files of three classes or more
}


@cache
def load_metric(name: str):
    """``evaluate.load`` of a local metric module by name (e.g. ``"matbench_regression"``)."""
    import evaluate

    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"no local metric module {path / (name + '.py')}")
    return evaluate.load(str(path))


def score(benchmark: str, task_type: str, predictions, references, **options) -> dict[str, float]:
    """All metrics of ``benchmark`` for one set of test predictions (probabilities for classification: P(class 1), or
    rows x classes for a task of more classes); ``options``: the metric module's other inputs (``labels``: the
    predicted classes of a task of more classes)."""
    key = (benchmark, task_type)
    if key not in MODULES:
        raise ValueError(f"no metrics for benchmark {benchmark!r} with task type {task_type!r}")
    preds = np.asarray(predictions, dtype=np.float64)
    refs = np.asarray(references)
    if preds.shape[:1] != refs.shape:
        raise ValueError(f"{preds.shape[0]} predictions for {refs.shape[0]} references")
    if preds.ndim != (2 if MODULES[key] == "multiclass_classification" else 1):
        raise ValueError(f"predictions of shape {preds.shape}: {key} takes "
                         + ("one row of class probabilities per reference" if preds.ndim == 1 else "one value per reference"))
    if task_type == "classification":
        refs = refs.astype(np.int64)
    else:
        refs = refs.astype(np.float64)
    return load_metric(MODULES[key]).compute(predictions=preds.tolist(), references=refs.tolist(), **options)


def fold_summary(values: list[float]) -> dict[str, float]:
    """mean, std (population, as ``matbench``/numpy), min, max of per-fold values."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max())}
