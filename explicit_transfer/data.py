"""perov_5 loading (read-only, from ``CROSSMAT_DATA_DIR``) and perov_5 template libraries for the generators."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from pymatgen.core import Structure

from crossmat.dataset_builders.paths import data_dir
from crossmat.dataset_builders.tables import read_table

__all__ = ["PEROV5_FILES", "TEMPLATE_SPLITS", "composition_key", "load_perov5", "map_rows_to_structures",
           "perov5_templates", "structures_from_cifs"]

# split -> file under <data>/perov_5; ``train`` holds structures only (id, formula, cif; no targets)
PEROV5_FILES = {"train": "train_structures.csv.gz", "val": "val.csv.gz", "test": "test.csv.gz"}
# splits a generator may learn from; ``test`` is never a template source (it would leak the answers)
TEMPLATE_SPLITS = ("train", "val")


def load_perov5(split: str = "val", limit: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """perov_5 split (``train``, ``val`` or ``test``) as a DataFrame with a parsed ``structure`` column.

    Every split has ``material_id``, ``formula``, ``cif`` (``train``'s ``id`` column is renamed); only ``val`` and
    ``test`` carry targets (``heat_ref``, ...).
    """
    if split not in PEROV5_FILES:
        raise ValueError(f"unknown perov_5 split {split!r}; choose one of {sorted(PEROV5_FILES)}")
    path = data_dir() / "perov_5" / PEROV5_FILES[split]
    if not path.exists():
        raise FileNotFoundError(f"perov_5 split {split!r} not found at {path}; set CROSSMAT_DATA_DIR")
    df = read_table(path, text_columns=("cif",)).frame
    if "material_id" not in df.columns and "id" in df.columns:
        df = df.rename(columns={"id": "material_id"})
    if limit is not None and limit < len(df):
        df = df.sample(n=limit, random_state=seed) if seed is not None else df.head(limit)
    df = df.reset_index(drop=True)
    df["structure"] = structures_from_cifs(df["cif"].tolist())
    return df


def perov5_templates(
    split: str = "train",
    limit: int | None = None,
    seed: int | None = None,
    exclude_ids: Iterable[object] = (),
    frame: pd.DataFrame | None = None,
) -> list[tuple[str, Structure]]:
    """``(name, structure)`` template pairs from a perov_5 generator-training split, named ``perov5-<split>:<id>``.

    The standard CSP protocol learns from ``train`` only; ``val`` is allowed (earlier benchmarks), ``test`` is
    refused. ``exclude_ids`` drops rows by ``material_id``; ``frame`` reuses an already loaded split.
    """
    if split not in TEMPLATE_SPLITS:
        raise ValueError(f"perov_5 split {split!r} cannot be a template source; use one of {list(TEMPLATE_SPLITS)} "
                         "(test structures would leak the answers into the generator)")
    df = load_perov5(split, limit=limit, seed=seed) if frame is None else frame
    missing = {"material_id", "structure"} - set(df.columns)
    if missing:
        raise ValueError(f"template frame lacks column(s) {sorted(missing)}; pass a load_perov5() result")
    drop = {str(i) for i in exclude_ids}
    return [(f"perov5-{split}:{m}", s) for m, s in zip(df.material_id, df.structure, strict=True) if str(m) not in drop]


def structures_from_cifs(cifs: list[str]) -> list[Structure]:
    """Parse CIF strings (the dataset's own, known-good CIFs)."""
    return [Structure.from_str(c, fmt="cif") for c in cifs]


def composition_key(formulas: pd.Series) -> pd.Series:
    """Alphabetical composition per formula (site order and spelling removed), computed once per distinct string."""
    from pymatgen.core import Composition

    keys = {f: Composition(f).alphabetical_formula.replace(" ", "") for f in formulas.unique()}
    return formulas.map(keys)


def map_rows_to_structures(rows: pd.DataFrame, structures: pd.DataFrame, target: str = "e_form",
                           reference: str = "heat_all", tol: float = 0.005) -> pd.DataFrame:
    """One-to-one pairs of a labelled table without structures and a labelled structure table.

    A row and a structure pair up when they share ``key`` (see :func:`composition_key`) and
    ``|rows[target] - structures[reference]| < tol``, and neither matches anything else in the given tables.
    Returns ``row`` / ``structure`` index pairs. Pass only the rows whose labels may be used (e.g. the
    training folds): the rule sees nothing else, so held-out labels cannot steer which structures are used.
    """
    for frame, col, what in ((rows, target, "rows"), (structures, reference, "structures")):
        missing = {"key", col} - set(frame.columns)
        if missing:
            raise ValueError(f"{what} table lacks column(s) {sorted(missing)}")
    pairs = rows[["key", target]].reset_index(names="row").merge(
        structures[["key", reference]].reset_index(names="structure"), on="key")
    pairs = pairs[(pairs[target] - pairs[reference]).abs() < tol]
    once = pairs.row.map(pairs.row.value_counts()).eq(1) & pairs.structure.map(pairs.structure.value_counts()).eq(1)
    return pairs.loc[once, ["row", "structure"]].reset_index(drop=True)
