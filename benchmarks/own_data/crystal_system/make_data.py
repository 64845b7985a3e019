"""A real task of seven classes for the own-data route: the crystal system of a Materials Project crystal from its
formula alone (triclinic ... cubic, spglib at symprec 0.1 on the shared MP structures).

Only formulas that the shipped backbone never saw are used: the MP structures whose formula occurs in one of the ten
MatBench tasks the backbone's pretraining set left out (benchmarks/imkt/tasks.sh), so its structure alignment never
touched them. Formulas whose structures disagree on the crystal system (polymorphs) are left out and counted; each
kept formula is one row. Rows are shuffled (seed), cut to --max-rows, and split 80 / 10 / 10 into train / val / test
(every formula is in one file only). Writes train.csv, val.csv, test.csv (id, formula, crystal_system) and
data_stats.json into OUTDIR. Usage: python make_data.py OUTDIR [--max-rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pandas as pd
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from tqdm.auto import tqdm

from crossmat.dataset_builders.common import canonicalize_formulas
from crossmat.dataset_builders.corpus import exclusion_formulas
from crossmat.dataset_builders.paths import data_dir

EXCLUDED_TASKS = ("matbench_steels", "matbench_expt_gap", "matbench_expt_is_metal", "matbench_glass", "matbench_jdft2d",
                  "matbench_phonons", "matbench_dielectric", "matbench_log_gvrh", "matbench_log_kvrh",
                  "matbench_perovskites")


def crystal_system(cif: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SpacegroupAnalyzer(Structure.from_str(cif, fmt="cif"), symprec=0.1).get_crystal_system()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--max-rows", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    unseen: set[str] = set()
    for task in EXCLUDED_TASKS:
        unseen |= exclusion_formulas(f"matbench={task}")
    mp = pd.read_csv(data_dir() / "mp_structures" / "structures.csv.gz")
    canon, _ = canonicalize_formulas(mp["formula"])
    mp["canonical"] = canon
    pool = mp[mp["canonical"].isin(unseen)].reset_index(drop=True)
    systems = [crystal_system(c) for c in tqdm(pool["cif"], desc="spglib", mininterval=30)]
    pool["crystal_system"] = systems
    agree = pool.groupby("canonical")["crystal_system"].nunique() == 1
    kept = pool[pool["canonical"].map(agree)].drop_duplicates("canonical").reset_index(drop=True)
    rows = pd.DataFrame({"id": kept["material_id"], "formula": kept["formula"], "crystal_system": kept["crystal_system"]})
    rows = rows.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    if args.max_rows:
        rows = rows.iloc[: args.max_rows]
    n_test = n_val = len(rows) // 10
    args.outdir.mkdir(parents=True, exist_ok=True)
    rows.iloc[:n_test].to_csv(args.outdir / "test.csv", index=False)
    rows.iloc[n_test:n_test + n_val].to_csv(args.outdir / "val.csv", index=False)
    rows.iloc[n_test + n_val:].to_csv(args.outdir / "train.csv", index=False)
    stats = {
        "mp_structures": len(mp), "formulas_left_out_of_backbone_pretraining": len(unseen),
        "structures_with_such_a_formula": len(pool), "formulas": int(pool["canonical"].nunique()),
        "formulas_whose_polymorphs_disagree": int((~agree).sum()), "rows": len(rows), "seed": args.seed,
        "split": {"train": len(rows) - n_test - n_val, "val": n_val, "test": n_test},
        "classes": rows["crystal_system"].value_counts().to_dict(), "seconds": round(time.perf_counter() - start, 1),
    }
    (args.outdir / "data_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
