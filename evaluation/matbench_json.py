"""Results in the ``matbench`` package's ``MatbenchBenchmark`` JSON format (v0.6 layout), readable by
``MatbenchBenchmark.from_file``. Written without the package (it pins scikit-learn 1.0 / scipy 1.7 and
does not install next to this project); :func:`check_matbench_dict` re-checks every rule ``from_dict``
and ``MatbenchTask.validate`` enforce, including the sha256 hash."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MATBENCH_VERSION = "0.6"
BENCHMARK_NAME = "matbench_v0.1"
REG_METRICS = ("mae", "rmse", "mape", "max_error")
CLF_METRICS = ("accuracy", "balanced_accuracy", "f1", "rocauc")
_BENCH_KEYS = ("@module", "@class", "version", "benchmark_name", "tasks", "user_metadata", "datestamp", "hash")


def _immutify(d: Mapping[str, Any]) -> dict[str, Any]:
    """Deterministic nested form used for hashing (sorted keys, lists as tuples, numpy as python)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            out[k] = tuple(v.tolist())
        elif isinstance(v, list):
            out[k] = tuple(v)
        elif isinstance(v, Mapping):
            out[k] = _immutify(v)
        elif hasattr(v, "dtype"):
            out[k] = v.item()
        else:
            out[k] = v
    return dict(sorted(out.items(), key=lambda kv: kv[0]))


def hash_dictionary(d: Mapping[str, Any]) -> str:
    """sha256 of the immutified dict, as ``matbench.util.hash_dictionary``."""
    return hashlib.sha256(json.dumps(_immutify(d)).encode("utf-8")).hexdigest()


def task_results(
    ids_per_fold: list[list[str]],
    predictions_per_fold: list[np.ndarray],
    scores_per_fold: list[Mapping[str, float]],
    params_per_fold: list[Mapping[str, Any]] | None = None,
    uncertainty_per_fold: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The ``results`` mapping of one task: ``fold_k -> {data, parameters, scores, uncertainty}``;
    ``uncertainty`` is the per-sample std (``{id: std}``) when the model gives one, else ``None``."""
    out = {}
    for k, (ids, preds, scores) in enumerate(zip(ids_per_fold, predictions_per_fold, scores_per_fold, strict=True)):
        if len(ids) != len(preds):
            raise ValueError(f"fold {k}: {len(preds)} predictions for {len(ids)} test ids")
        params = dict(params_per_fold[k]) if params_per_fold else {}
        out[f"fold_{k}"] = {
            "data": {str(i): float(p) for i, p in zip(ids, preds, strict=True)},
            "parameters": _immutify(_jsonable(params)) if params else {},
            "scores": {m: float(v) for m, v in scores.items()},
            "uncertainty": None if uncertainty_per_fold is None else {
                str(i): float(u) for i, u in zip(ids, uncertainty_per_fold[k], strict=True)},
        }
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def benchmark_dict(tasks: Mapping[str, Mapping[str, Any]], user_metadata: Mapping[str, Any] | None = None) -> dict:
    """A full ``MatbenchBenchmark.as_dict()``-style dict from ``{task_name: results}``."""
    d = {
        "@module": "matbench.bench",
        "@class": "MatbenchBenchmark",
        "version": MATBENCH_VERSION,
        "tasks": _immutify(
            {
                name: {
                    "@module": "matbench.task",
                    "@class": "MatbenchTask",
                    "benchmark_name": BENCHMARK_NAME,
                    "dataset_name": name,
                    "results": dict(results),
                }
                for name, results in tasks.items()
            }
        ),
        "user_metadata": _jsonable(dict(user_metadata or {})),
        "benchmark_name": BENCHMARK_NAME,
        "datestamp": datetime.datetime.now(datetime.UTC).strftime("%Y.%m.%d %H:%M.%S"),
    }
    d["hash"] = hash_dictionary(d)
    return d


def write_benchmark(path: str | Path, d: Mapping[str, Any]) -> Path:
    """Write the dict as JSON (``MatbenchBenchmark.from_file`` reads plain JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


def check_matbench_dict(d: Mapping[str, Any], folds: Mapping[str, Mapping[str, list[str]]] | None = None,
                        task_types: Mapping[str, str] | None = None) -> None:
    """Raise ``ValueError`` unless ``d`` passes the checks ``MatbenchBenchmark.from_dict`` runs.

    ``folds``: optional ``{task: {"fold_k": [test ids]}}`` to check the recorded indices exactly;
    ``task_types``: optional ``{task: "regression" | "classification"}`` to check scores and data types."""
    keys = set(d)
    if keys != set(_BENCH_KEYS):
        raise ValueError(f"benchmark keys {sorted(keys)} != required {sorted(_BENCH_KEYS)}")
    body = {k: v for k, v in d.items() if k != "hash"}
    if hash_dictionary(body) != d["hash"]:
        raise ValueError("hash of dictionary does not match its reported value")
    for name, t in d["tasks"].items():
        if set(t) != {"@module", "@class", "benchmark_name", "dataset_name", "results"}:
            raise ValueError(f"task {name}: keys {sorted(t)}")
        if t["dataset_name"] != name or t["benchmark_name"] != d["benchmark_name"]:
            raise ValueError(f"task {name}: dataset/benchmark name mismatch")
        if sorted(t["results"]) != [f"fold_{k}" for k in range(5)]:
            raise ValueError(f"task {name}: folds {sorted(t['results'])} (all of fold_0..fold_4 required)")
        ttype = (task_types or {}).get(name)
        for fk, fr in t["results"].items():
            extra = set(fr) - {"data", "parameters", "scores", "uncertainty"}
            if extra or not {"data", "parameters", "scores"} <= set(fr):
                raise ValueError(f"task {name} {fk}: keys {sorted(fr)}")
            if ttype:
                metrics = REG_METRICS if ttype == "regression" else CLF_METRICS
                if set(fr["scores"]) != set(metrics):
                    raise ValueError(f"task {name} {fk}: scores {sorted(fr['scores'])} != {sorted(metrics)}")
            for m, v in fr["scores"].items():
                if not isinstance(v, float):
                    raise ValueError(f"task {name} {fk}: score {m} is not a float")
            for ix, v in fr["data"].items():
                if not isinstance(v, (float, bool)):
                    raise ValueError(f"task {name} {fk}: prediction {ix} is {type(v).__name__}")
                if ttype == "classification" and isinstance(v, float) and not 0.0 <= v <= 1.0:
                    raise ValueError(f"task {name} {fk}: probability {ix}={v} outside [0, 1]")
            if folds is not None and set(fr["data"]) != set(folds[name][fk]):
                raise ValueError(f"task {name} {fk}: recorded ids differ from the official test ids")
