"""LLM4Mat-Bench (10 datasets, 65 property tasks) from the official train/validation/test CSVs.

The user downloads the official data (``data/<dataset>/{train,validation,test}.csv``) and passes the
dataset folder, or its parent (any alias the official scripts use, e.g. ``jarvis`` / ``jarvis_dft``).
Composition input only (the formula column), with the official cleaning of the LLM-Prop/MatBERT
training code, per task:

* rows with a missing formula are dropped; test rows are deduplicated on the material id;
* GNoME: ``inf`` targets become NaN;
* rows with a NaN target are dropped;
* classification = the property column has bool/object dtype; ``Direct``/``Indirect`` columns map to
  1/0 after dropping ``Null`` rows, bool columns map True/False to 1/0.

Every drop is counted in ``llm4mat_metadata.json`` and the card. Unparseable formulas or
non-numeric regression targets are *bad input* (error naming file, row and reason, or a report).
Output: one config per property, splits ``train``/``validation``/``test``, columns
``id, formula, target`` (+ ``cif_structure`` when present, for structure embeddings).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .common import (
    BadInputError,
    Rejects,
    canonicalize_formulas,
    numeric_targets,
    write_card,
    write_json,
    write_parquet,
)
from .tables import read_table

__all__ = ["DATASETS", "ALIASES", "SPLITS", "resolve_dataset", "dataset_folder", "build_llm4mat", "load_llm4mat_task",
           "n_tasks"]

SPLITS = ("train", "validation", "test")

# Property tasks per dataset, as listed by the official LLM4Mat-Bench code (65 in total).
DATASETS: dict[str, list[str]] = {
    "mp": [
        "band_gap", "volume", "is_gap_direct", "formation_energy_per_atom", "energy_above_hull",
        "energy_per_atom", "is_stable", "density", "density_atomic", "efermi",
    ],
    "jarvis_dft": [
        "formation_energy_peratom", "optb88vdw_bandgap", "slme", "spillage", "optb88vdw_total_energy", "mepsx",
        "max_efg", "avg_elec_mass", "dfpt_piezo_max_eij", "dfpt_piezo_max_dij", "dfpt_piezo_max_dielectric",
        "n-Seebeck", "n-powerfact", "p-Seebeck", "p-powerfact", "exfoliation_energy", "bulk_modulus_kv",
        "shear_modulus_gv", "mbj_bandgap", "ehull",
    ],
    "gnome": [
        "Formation_Energy_Per_Atom", "Decomposition_Energy_Per_Atom", "Bandgap", "Corrected_Energy", "Volume",
        "Density",
    ],
    "hmof": ["max_co2_adsp", "min_co2_adsp", "lcd", "pld", "void_fraction", "surface_area_m2g", "surface_area_m2cm3"],
    "cantor_hea": ["Ef_per_atom", "e_above_hull", "volume_per_atom", "e_per_atom"],
    "jarvis_qe_tb": ["energy_per_atom", "indir_gap", "f_enp", "final_energy"],
    "oqmd": ["bandgap", "e_form"],
    "qmof": ["energy_total", "bandgap", "lcd", "pld"],
    "snumat": [
        "Band_gap_HSE", "Band_gap_GGA", "Band_gap_GGA_optical", "Band_gap_HSE_optical", "Direct_or_indirect",
        "Direct_or_indirect_HSE", "SOC",
    ],
    "omdb": ["bandgap"],
}  # fmt: skip
ALIASES: dict[str, str] = {
    **{k: k for k in DATASETS},
    "jarvis": "jarvis_dft",
    "hea": "cantor_hea",
    "qe_tb": "jarvis_qe_tb",
    "materials_project": "mp",
}
FORMULA_COLUMNS = ("formula_pretty", "formula", "reduced_formula", "pretty_formula", "composition")
_ID_COLUMNS = ("material_id", "id", "jid", "mof_id", "qmof_id", "name", "MOFname", "mat_id", "ID")
_DIRECT = {"Direct": 1.0, "Indirect": 0.0}
_BOOLS = {True: 1.0, False: 0.0, "True": 1.0, "False": 0.0, "true": 1.0, "false": 0.0}


def n_tasks() -> int:
    """Number of property tasks in the registry (65)."""
    return sum(len(v) for v in DATASETS.values())


def resolve_dataset(name: str) -> str:
    """Canonical dataset name for ``name`` or any official alias."""
    key = name.strip().lower().replace("-", "_")
    if key not in ALIASES:
        raise ValueError(f"unknown LLM4Mat-Bench dataset {name!r}; choose one of {sorted(ALIASES)}")
    return ALIASES[key]


def dataset_folder(source: str | Path, dataset: str) -> Path:
    """The folder holding ``train/validation/test.csv``: ``source`` itself or ``source/<alias>``."""
    source = Path(source)
    canon = resolve_dataset(dataset)
    candidates = [source] + [source / a for a, c in ALIASES.items() if c == canon]
    for folder in candidates:
        if all((folder / f"{s}.csv").is_file() for s in SPLITS):
            return folder
    raise FileNotFoundError(
        f"no train.csv, validation.csv and test.csv for LLM4Mat-Bench dataset {canon!r} in {source} "
        f"or its subfolders {[a for a, c in ALIASES.items() if c == canon]}"
    )


def pick_column(columns: list[str], options: tuple[str, ...]) -> str | None:
    return next((c for c in options if c in columns), None)


def _clean_task(
    frame: pd.DataFrame, prop: str, dataset: str, is_classification: bool, path: Path, ids: pd.Series, rejects: Rejects
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Official cleaning of one property column: (kept positions, targets, drop counts)."""
    raw = frame[prop]
    dropped: dict[str, int] = {}
    keep = np.ones(len(frame), dtype=bool)
    if is_classification:
        if prop in ("Direct_or_indirect", "Direct_or_indirect_HSE"):
            null = (raw.astype(str) == "Null").to_numpy()
            dropped["null_label"] = int(null.sum())
            keep &= ~null
            mapped = raw.map(_DIRECT)
        else:
            mapped = raw.map(lambda v: _BOOLS.get(v, v) if isinstance(v, (bool, np.bool_, str)) else v)
        values, bad = numeric_targets(mapped.where(raw.notna()), allow_nan=True)
        bad.update({int(i): f"class label {raw.iloc[i]!r} is not one of True/False/Direct/Indirect/0/1"
                    for i in np.flatnonzero(~np.isin(values, (0.0, 1.0)) & ~np.isnan(values))})  # fmt: skip
        bad.update({int(i): f"class label {raw.iloc[i]!r} is not one of True/False/Direct/Indirect"
                    for i in np.flatnonzero(np.isnan(values) & raw.notna().to_numpy() & keep)})  # fmt: skip
    else:
        values, bad = numeric_targets(raw, allow_nan=True)
        if dataset == "gnome":
            inf = np.isinf(values)
            dropped["inf_to_nan"] = int(inf.sum())
            values = np.where(inf, np.nan, values)
        else:
            bad.update({int(i): f"infinite target {values[i]}" for i in np.flatnonzero(np.isinf(values))})
    bad = {i: r for i, r in bad.items() if keep[i]}
    if bad:
        rows = sorted(bad)
        rejects.add(path, rows, ids.iloc[rows].tolist(), [f"{prop}: {bad[r]}" for r in rows], stage=prop)
        keep[rows] = False
    nan = np.isnan(values) & keep
    dropped["nan_label"] = int(nan.sum())
    keep &= ~nan
    return np.flatnonzero(keep), values, dropped


def _read_splits(folder: Path, canon: str, props: list[str], rejects: Rejects) -> dict[str, pd.DataFrame]:
    """The three official CSVs with ``_id`` / ``_formula`` columns; rows with a missing or unparseable
    formula dropped (unparseable ones go to ``rejects``); test rows deduplicated on the id column."""
    frames: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        path = folder / f"{split}.csv"
        frame = read_table(path).frame
        cols = list(frame.columns)
        fcol = pick_column(cols, FORMULA_COLUMNS)
        if fcol is None:
            raise BadInputError(f"{path}: missing formula column (looked for {list(FORMULA_COLUMNS)})")
        missing = [p for p in props if p not in cols]
        if missing:
            avail = [c for c in cols if c not in (fcol, "structure", "description", "cif_structure", *_ID_COLUMNS)]
            raise BadInputError(f"{path}: missing property column(s) {missing}; available: {', '.join(avail)}")
        icol = pick_column(cols, _ID_COLUMNS)
        ids = frame[icol].astype(str) if icol else pd.Series([f"{canon}-{split}-{i}" for i in range(len(frame))])
        no_formula = frame[fcol].isna().to_numpy()
        canon_f, bad = canonicalize_formulas(frame[fcol].where(~no_formula, "H"))
        if bad:
            rows = sorted(bad)
            rejects.add(path, rows, ids.iloc[rows].tolist(), [bad[r] for r in rows], stage="formula")
        ok = ~no_formula
        ok[list(bad)] = False
        duplicate = (ids.duplicated() & pd.Series(ok)).to_numpy() if split == "test" and icol else np.zeros(len(frame), bool)
        ok &= ~duplicate  # the official evaluation scores each test material once
        frame = frame.assign(_id=ids.to_numpy(), _formula=frame[fcol].astype(str)).loc[ok].reset_index(drop=True)
        frame.attrs.update(path=path, dropped_missing_formula=int(no_formula.sum()), formula_column=fcol, id_column=icol,
                           dropped_duplicate_id=int(duplicate.sum()))
        frames[split] = frame
    return frames


def _task_frames(
    frames: dict[str, pd.DataFrame], prop: str, canon: str, rejects: Rejects, keep_cif: bool
) -> tuple[str, dict[str, pd.DataFrame], dict[str, dict[str, int]]]:
    """One property task: (task type, ``{split: frame of id, formula, target[, cif_structure]}``, drop counts)."""
    is_cls = frames["train"][prop].dtype == bool or frames["train"][prop].dtype == object
    out: dict[str, pd.DataFrame] = {}
    drops: dict[str, dict[str, int]] = {}
    for split, frame in frames.items():
        keep, values, dropped = _clean_task(frame, prop, canon, is_cls, frame.attrs["path"], frame["_id"], rejects)
        data = {
            "id": frame["_id"].to_numpy()[keep],
            "formula": frame["_formula"].to_numpy()[keep],
            "target": values[keep].astype(np.int64 if is_cls else np.float64),
        }
        if keep_cif and "cif_structure" in frame.columns:
            data["cif_structure"] = frame["cif_structure"].to_numpy()[keep]
        out[split] = pd.DataFrame(data)
        dropped["missing_formula"] = frame.attrs["dropped_missing_formula"]
        if split == "test":
            dropped["duplicate_id"] = frame.attrs["dropped_duplicate_id"]
        drops[split] = dropped
    return ("classification" if is_cls else "regression"), out, drops


def load_llm4mat_task(
    source: str | Path, dataset: str, prop: str, on_bad: str = "report", keep_cif: bool = False
) -> tuple[str, dict[str, pd.DataFrame], Rejects]:
    """One LLM4Mat-Bench task, in memory, with exactly the preprocessing :func:`build_llm4mat` publishes:
    ``(task type, {"train","validation","test": frame of id, formula, target}, rejected rows)``.
    The evaluation harness scores these frames."""
    canon = resolve_dataset(dataset)
    folder = dataset_folder(source, canon)
    rejects = Rejects(on_bad)
    task_type, frames, _ = _task_frames(_read_splits(folder, canon, [prop], rejects), prop, canon, rejects, keep_cif)
    return task_type, frames, rejects


def build_llm4mat(
    source: str | Path,
    dataset: str,
    out: str | Path,
    properties: list[str] | None = None,
    on_bad: str = "error",
    keep_cif: bool = True,
) -> dict[str, Any]:
    """Build one LLM4Mat-Bench dataset folder (one config per property task); returns the metadata."""
    start = time.perf_counter()
    canon = resolve_dataset(dataset)
    folder = dataset_folder(source, canon)
    out = Path(out)
    props = list(properties or DATASETS[canon])
    unknown = [p for p in props if p not in DATASETS[canon]]
    if unknown:
        raise ValueError(f"{unknown} are not LLM4Mat-Bench tasks of {canon!r}; tasks: {DATASETS[canon]}")
    rejects = Rejects(on_bad)
    meta: dict[str, Any] = {"benchmark": "llm4mat_bench", "dataset": canon, "source": str(folder), "tasks": {}}
    frames = _read_splits(folder, canon, props, rejects)
    configs: dict[str, dict[str, str]] = {}
    for prop in tqdm(props, desc=f"llm4mat {canon} tasks"):
        task_type, task, drops = _task_frames(frames, prop, canon, rejects, keep_cif)
        info: dict[str, Any] = {"task_type": task_type, "splits": {}}
        for split, data in task.items():
            rel = f"{prop}/{split}.parquet"
            write_parquet(data, out / rel)
            configs.setdefault(prop, {})[split] = rel
            info["splits"][split] = {"rows": len(data), "dropped": drops[split]}
        meta["tasks"][prop] = info
    meta["formula_column"] = frames["train"].attrs["formula_column"]
    meta["id_column"] = frames["train"].attrs["id_column"]
    meta["rejected_rows"] = len(rejects)
    meta["build_seconds"] = round(time.perf_counter() - start, 2)
    rejects.write(out)
    write_json(meta, out / "llm4mat_metadata.json")
    write_card(out, configs, pretty_name=f"LLM4Mat-Bench {canon} (composition input)", body=_card_body(meta),
               default_config=props[0])  # fmt: skip
    return meta


def _card_body(meta: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| `{p}` | {t['task_type']} | "
        + " / ".join(str(t["splits"][s]["rows"]) for s in SPLITS)
        + " | "
        + "; ".join(f"{s}: " + ", ".join(f"{k}={v}" for k, v in t["splits"][s]["dropped"].items() if v) for s in SPLITS
                    if any(t["splits"][s]["dropped"].values()))  # fmt: skip
        + " |"
        for p, t in meta["tasks"].items()
    )
    return f"""
# LLM4Mat-Bench — `{meta["dataset"]}` (composition input)

Built by `python -m crossmat.dataset_builders llm4mat` (CrossMat) from the official CSVs in `{Path(meta["source"]).name}/`.
One config per property task; splits `train`, `validation`, `test` (the official ones). Columns: `id`
(official `{meta["id_column"]}`), `formula` (official `{meta["formula_column"]}`), `target` (float; 0/1 int for
classification), and `cif_structure` when the source has it (used for structure embeddings).

```python
from datasets import load_dataset
ds = load_dataset("<this folder or repo>", "{next(iter(meta["tasks"]))}", split="train")
```

Official cleaning per task (rows with a missing formula dropped; GNoME inf -> NaN; NaN labels dropped;
Direct/Indirect -> 1/0 after dropping `Null`; True/False -> 1/0). Dropped rows are counted below;
rows rejected as bad input: {meta["rejected_rows"]} (see `rejected_rows.csv` if any).

| task | type | rows train / validation / test | dropped by official cleaning |
|---|---|---|---|
{rows}

## Provenance and licence
LLM4Mat-Bench (Rubungo et al.), data downloaded by the user from the authors' distribution. Each
source database keeps its licence (Materials Project: CC BY 4.0; JARVIS: NIST public data; GNoME:
CC BY 4.0; OQMD: CC BY 4.0; check the LLM4Mat-Bench repository for the others) before redistributing.

## Citation
```bibtex
@article{{rubungo2024llm4matbench,
  title={{LLM4Mat-Bench: Benchmarking Large Language Models for Materials Property Prediction}},
  author={{Rubungo, Andre Niyongabo and Li, Kangming and Hattrick-Simpers, Jason and Dieng, Adji Bousso}},
  journal={{arXiv preprint arXiv:2411.00177}}, year={{2024}}
}}
```
"""
