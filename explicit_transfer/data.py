"""perov_5 loading (read-only, from ``CROSSMAT_DATA_DIR``)."""

from __future__ import annotations

import pandas as pd
from pymatgen.core import Structure

from dataset_builders.paths import data_dir

__all__ = ["load_perov5", "structures_from_cifs"]


def load_perov5(split: str = "val", limit: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """perov_5 split (``val`` or ``test``) as a DataFrame with a parsed ``structure`` column."""
    path = data_dir() / "perov_5" / f"{split}.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"perov_5 split {split!r} not found at {path}; set CROSSMAT_DATA_DIR")
    df = pd.read_csv(path)
    if limit is not None and limit < len(df):
        df = df.sample(n=limit, random_state=seed) if seed is not None else df.head(limit)
    df = df.reset_index(drop=True)
    df["structure"] = structures_from_cifs(df["cif"].tolist())
    return df


def structures_from_cifs(cifs: list[str]) -> list[Structure]:
    """Parse CIF strings (the dataset's own, known-good CIFs)."""
    return [Structure.from_str(c, fmt="cif") for c in cifs]
