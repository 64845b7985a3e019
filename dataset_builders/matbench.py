"""MatBench v0.1: all 13 tasks with the official 5-fold protocol, as a Hugging Face dataset folder.

Layout written by :func:`build_matbench`::

    <out>/README.md                       dataset card (YAML ``configs:`` = one config per task)
    <out>/matbench_metadata.json          task metadata, row counts, source files and their sha256
    <out>/<task>/train_fold{k}.parquet    every row whose official test fold is not k
    <out>/<task>/test_fold{k}.parquet     the official test rows of fold k

Columns: ``id`` (official MatBench id), ``formula`` (as published), ``target`` (float; int 0/1 for
classification), ``test_fold`` (0-4). Rows keep the official order.

Sources: a local folder with ``<task>.csv.gz`` (``id,formula,<official target column>,test_fold``, the
layout of ``../shared/data/matbench_v0.1``) or the official ``<task>.json.gz`` files, or ``"official"``
(download the URLs listed in matminer's dataset metadata). For the official json files the folds are
recomputed with the MatBench protocol (``KFold``/``StratifiedKFold``, 5 splits, shuffled,
``random_state=18012019``), which reproduces ``matbench_v0.1_validation.json`` exactly.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Composition
from sklearn.model_selection import KFold, StratifiedKFold
from tqdm.auto import tqdm

from .common import (
    BadInputError,
    Rejects,
    canonicalize_formulas,
    numeric_targets,
    size_category,
    write_card,
    write_json,
    write_parquet,
)
from .download import download, sha256sum
from .paths import cache_dir, matbench_dir
from .tables import read_table

__all__ = [
    "TASKS",
    "N_FOLDS",
    "FOLD_RANDOM_STATE",
    "task_info",
    "official_url",
    "official_folds",
    "load_task_frame",
    "build_matbench",
    "split_names",
]

N_FOLDS = 5
FOLD_RANDOM_STATE = 18012019

# Official MatBench v0.1 metadata (matbench package, matbench_v0.1_dataset_metadata.json).
_INFO: dict[str, dict[str, Any]] = {
    "matbench_dielectric": dict(n=4764, target="n", task_type="regression", input_type="structure", unit="unitless", mad=0.808534704217072),
    "matbench_expt_gap": dict(n=4604, target="gap expt", task_type="regression", input_type="composition", unit="eV", mad=1.1432002429044061),
    "matbench_expt_is_metal": dict(n=4921, target="is_metal", task_type="classification", input_type="composition", unit=None, mad=None),
    "matbench_glass": dict(n=5680, target="gfa", task_type="classification", input_type="composition", unit=None, mad=None),
    "matbench_jdft2d": dict(n=636, target="exfoliation_en", task_type="regression", input_type="structure", unit="meV/atom", mad=67.20200406491116),
    "matbench_log_gvrh": dict(n=10987, target="log10(G_VRH)", task_type="regression", input_type="structure", unit="log10(GPa)", mad=0.29313828328604646),
    "matbench_log_kvrh": dict(n=10987, target="log10(K_VRH)", task_type="regression", input_type="structure", unit="log10(GPa)", mad=0.2896736342937069),
    "matbench_mp_e_form": dict(n=132752, target="e_form", task_type="regression", input_type="structure", unit="eV/atom", mad=1.0059220443295362),
    "matbench_mp_gap": dict(n=106113, target="gap pbe", task_type="regression", input_type="structure", unit="eV", mad=1.3271449960162496),
    "matbench_mp_is_metal": dict(n=106113, target="is_metal", task_type="classification", input_type="structure", unit=None, mad=None),
    "matbench_perovskites": dict(n=18928, target="e_form", task_type="regression", input_type="structure", unit="eV/unit cell", mad=0.5659924184827462),
    "matbench_phonons": dict(n=1265, target="last phdos peak", task_type="regression", input_type="structure", unit="cm^-1", mad=323.78696979348734),
    "matbench_steels": dict(n=312, target="yield strength", task_type="regression", input_type="composition", unit="MPa", mad=229.37426857330706),
}
TASKS: tuple[str, ...] = tuple(sorted(_INFO))


def task_info(task: str) -> dict[str, Any]:
    """``n``, ``target`` (official column), ``task_type``, ``input_type``, ``unit``, ``mad`` of a task."""
    _check_task(task)
    return dict(_INFO[task], task=task)


def split_names() -> list[str]:
    """``train_fold0, test_fold0, ..., train_fold4, test_fold4``."""
    return [f"{kind}_fold{k}" for k in range(N_FOLDS) for kind in ("train", "test")]


def _check_task(task: str) -> None:
    if task not in _INFO:
        raise ValueError(f"unknown MatBench task {task!r}; choose one of {', '.join(TASKS)}")


def official_url(task: str) -> tuple[str, str | None]:
    """The download URL and sha256 of a task, read from matminer's dataset metadata."""
    _check_task(task)
    import matminer.datasets

    meta_path = Path(matminer.datasets.__file__).parent / "dataset_metadata.json"
    meta = json.loads(meta_path.read_text())[task]
    return meta["url"], meta.get("hash")


def official_folds(targets: np.ndarray, task_type: str) -> np.ndarray:
    """The official test fold (0-4) of every row, by the MatBench v0.1 splitting protocol."""
    n = len(targets)
    if task_type == "classification":
        splitter = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=FOLD_RANDOM_STATE)
        splits = splitter.split(np.zeros(n), targets)
    else:
        splits = KFold(n_splits=N_FOLDS, shuffle=True, random_state=FOLD_RANDOM_STATE).split(np.zeros(n))
    folds = np.empty(n, dtype=np.int64)
    for k, (_, test) in enumerate(splits):
        folds[test] = k
    return folds


_BOOLS = {True: 1.0, False: 0.0, "True": 1.0, "False": 0.0, "true": 1.0, "false": 0.0}


def _formula_from_obj(obj: Any) -> str:
    """Reduced formula of a composition string, a monty Composition dict or a Structure dict."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict) and "sites" in obj:
        counts: Counter[str] = Counter()
        for site in obj["sites"]:
            for sp in site["species"]:
                counts[sp["element"]] += sp.get("occu", 1.0)
        return Composition(counts).reduced_formula
    if isinstance(obj, dict):
        return Composition({k: v for k, v in obj.items() if not k.startswith("@")}).reduced_formula
    raise TypeError(f"cannot read a composition from {type(obj).__name__}")


def _read_official_json(path: Path, task: str) -> pd.DataFrame:
    """Parse an official ``<task>.json.gz`` (pandas split orient: index, columns, data)."""
    info = _INFO[task]
    with gzip.open(path, "rt") as f:
        raw = json.load(f)
    if not isinstance(raw, dict) or set(raw) != {"index", "columns", "data"}:
        raise BadInputError(f"{path}: not a MatBench json file (expected keys index, columns, data)")
    cols = list(raw["columns"])
    if info["target"] not in cols:
        raise BadInputError(f"{path}: missing target column {info['target']!r} (has {cols})")
    in_col = "composition" if "composition" in cols else "structure"
    if in_col not in cols:
        raise BadInputError(f"{path}: missing input column 'composition' or 'structure' (has {cols})")
    ti, ii = cols.index(info["target"]), cols.index(in_col)
    formulas = []
    for r, row in enumerate(tqdm(raw["data"], desc=f"parse {path.name}", leave=False)):
        try:
            formulas.append(_formula_from_obj(row[ii]))
        except Exception as exc:  # malformed structure/composition entry
            raise BadInputError(f"{path}: row {r} (id {raw['index'][r]!r}): cannot read {in_col}: {exc}") from None
    targets = pd.Series([row[ti] for row in raw["data"]], dtype=object)
    frame = pd.DataFrame({"id": raw["index"], "formula": formulas, info["target"]: targets})
    num, _ = numeric_targets(frame[info["target"]], allow_nan=True)
    tt = num if info["task_type"] == "regression" else np.where(np.isnan(num), -1, num).astype(np.int64)
    frame["test_fold"] = official_folds(tt, info["task_type"])
    return frame


def _resolve_source(task: str, source: str | Path | None, timeout: float) -> Path:
    if source is None:
        source = matbench_dir()
    if str(source) == "official" or str(source).startswith(("http://", "https://")):
        url, digest = official_url(task)
        if str(source) != "official":  # a mirror serving the official files: <base>/<task>.json.gz
            url, digest = f"{str(source).rstrip('/')}/{task}.json.gz", None
        hint = (
            "Download the MatBench files elsewhere and pass --source <folder> (a folder with <task>.json.gz or "
            "<task>.csv.gz files), or set CROSSMAT_DATA_DIR to a folder containing matbench_v0.1/."
        )
        return download(url, cache_dir() / "matbench_v0.1" / f"{task}.json.gz", sha256=digest, timeout=timeout, hint=hint)
    folder = Path(source)
    for name in (f"{task}.csv.gz", f"{task}.csv", f"{task}.json.gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no {task}.csv.gz, {task}.csv or {task}.json.gz in {folder}")


def load_task_frame(
    task: str,
    source: str | Path | None = None,
    rejects: Rejects | None = None,
    timeout: float = 60.0,
) -> pd.DataFrame:
    """Validated rows of one task: ``id, formula, target, test_fold`` in official order.

    ``source``: a folder, ``"official"``, a mirror base URL, or ``None`` (``$CROSSMAT_DATA_DIR/matbench_v0.1``).
    Bad rows raise :class:`BadInputError` naming file, row and reason, unless ``rejects`` has
    ``on_bad='report'`` (then they are recorded there and left out).
    """
    _check_task(task)
    info = _INFO[task]
    rejects = rejects if rejects is not None else Rejects("error")
    path = _resolve_source(task, source, timeout)
    if path.name.endswith(".json.gz"):
        frame = _read_official_json(path, task)
    else:
        frame = read_table(path, text_columns=("id", "formula")).frame
    missing = [c for c in ("id", "formula", info["target"], "test_fold") if c not in frame.columns]
    if missing:
        raise BadInputError(f"{path}: missing column(s) {missing}; expected id, formula, {info['target']!r}, test_fold")
    bad: dict[int, str] = {}
    _, bad_formula = canonicalize_formulas(frame["formula"])
    bad.update(bad_formula)
    raw_target = frame[info["target"]]
    if info["task_type"] == "classification":
        raw_target = raw_target.map(lambda v: _BOOLS.get(v, v) if isinstance(v, (bool, np.bool_, str)) else v)
    target, bad_target = numeric_targets(raw_target)
    bad.update(bad_target)
    if info["task_type"] == "classification":
        for i in np.flatnonzero(~np.isin(target, (0.0, 1.0))):
            bad.setdefault(int(i), f"classification target {frame[info['target']].iloc[i]!r} is not 0/1")
    folds = pd.to_numeric(frame["test_fold"], errors="coerce").to_numpy()
    for i in np.flatnonzero(~np.isin(folds, np.arange(N_FOLDS))):
        bad.setdefault(int(i), f"test_fold {frame['test_fold'].iloc[i]!r} is not an integer 0-4")
    if bad:
        rows = sorted(bad)
        rejects.add(path, rows, frame["id"].iloc[rows].tolist(), [bad[r] for r in rows], stage=task)
    keep = np.ones(len(frame), dtype=bool)
    keep[list(bad)] = False
    out = pd.DataFrame(
        {
            "id": frame["id"].astype(str).to_numpy()[keep],
            "formula": frame["formula"].astype(str).to_numpy()[keep],
            "target": target[keep].astype(np.int64 if info["task_type"] == "classification" else np.float64),
            "test_fold": folds[keep].astype(np.int64),
        }
    )
    out.attrs["source_file"] = str(path)
    return out


def build_matbench(
    source: str | Path | None,
    out: str | Path,
    tasks: list[str] | None = None,
    on_bad: str = "error",
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Build the MatBench dataset folder (see module docstring); returns the metadata written."""
    out = Path(out)
    tasks = list(tasks or TASKS)
    for t in tasks:
        _check_task(t)
    rejects = Rejects(on_bad)
    meta: dict[str, Any] = {"benchmark": "matbench_v0.1", "source": str(source or matbench_dir()), "tasks": {}}
    configs: dict[str, dict[str, str]] = {}
    start = time.perf_counter()
    for task in tqdm(tasks, desc="matbench tasks"):
        frame = load_task_frame(task, source, rejects, timeout=timeout)
        counts = {}
        for k in range(N_FOLDS):
            is_test = frame["test_fold"].to_numpy() == k
            for kind, mask in (("train", ~is_test), ("test", is_test)):
                rel = f"{task}/{kind}_fold{k}.parquet"
                write_parquet(frame.loc[mask].reset_index(drop=True), out / rel)
                configs.setdefault(task, {})[f"{kind}_fold{k}"] = rel
                counts[f"{kind}_fold{k}"] = int(mask.sum())
        src = Path(frame.attrs["source_file"])
        meta["tasks"][task] = {
            **task_info(task),
            "n_rows": len(frame),
            "split_sizes": counts,
            "source_file": src.name,
            "source_sha256": sha256sum(src),
        }
    meta["build_seconds"] = round(time.perf_counter() - start, 2)
    meta["rejected_rows"] = len(rejects)
    rejects.write(out)
    write_json(meta, out / "matbench_metadata.json")
    write_card(
        out,
        configs,
        pretty_name="MatBench v0.1 (compositions, official 5-fold splits)",
        body=_card_body(meta, len(rejects)),
        default_config=tasks[0],
        extra={"size_categories": [size_category(sum(m["n_rows"] for m in meta["tasks"].values()))],
               "source_datasets": ["matbench_v0.1"]},
    )
    return meta


def _card_body(meta: dict[str, Any], n_rejected: int) -> str:
    rows = "\n".join(
        f"| `{t}` | {m['task_type']} | `{m['target']}` | {m['unit'] or '-'} | {m['input_type']} | {m['n_rows']} |"
        for t, m in meta["tasks"].items()
    )
    rej = (
        f"**{n_rejected} rows were rejected** (see `rejected_rows.csv`); the splits are no longer the full official ones."
        if n_rejected
        else "No rows were rejected: ids, targets and folds are exactly the official ones."
    )
    return f"""
# MatBench v0.1 — compositions with the official 5-fold splits

Built by `python -m crossmat.dataset_builders matbench` (CrossMat). One config per task; split names
`train_fold0 … train_fold4` and `test_fold0 … test_fold4`. `train_fold{{k}}` holds every row whose official
test fold is not *k* (the MatBench protocol: report the metric mean ± std over the 5 test folds).

```python
from datasets import load_dataset
ds = load_dataset("<this folder or repo>", "matbench_expt_gap", split="train_fold0")
```

Columns: `id` (official MatBench id), `formula` (reduced formula as published; structure tasks give only
the composition, so polymorphs repeat a formula), `target` (float; 0/1 int for classification; the
official column name is listed below), `test_fold`.

| task | type | official target column | unit | official input | rows |
|---|---|---|---|---|---|
{rows}

{rej} Per-task sizes, source files and checksums: `matbench_metadata.json`.
Official metrics: MAE for regression, ROC-AUC for classification.

## Provenance and licence
Data: MatBench v0.1 (Dunn et al.), downloaded from the URLs in matminer's dataset metadata or read from
a local copy; folds from the `matbench` package protocol (KFold/StratifiedKFold, shuffle, random_state
18012019). The underlying datasets come from the Materials Project, JARVIS, and the experimental sources
cited by MatBench; each keeps its original licence (Materials Project data: CC BY 4.0). Check the
MatBench documentation before redistribution.

## Citation
```bibtex
@article{{dunn2020benchmarking,
  title={{Benchmarking materials property prediction methods: the Matbench test set and Automatminer reference algorithm}},
  author={{Dunn, Alexander and Wang, Qi and Ganose, Alex and Dopp, Daniel and Jain, Anubhav}},
  journal={{npj Computational Materials}}, volume={{6}}, pages={{138}}, year={{2020}}
}}
```
"""
