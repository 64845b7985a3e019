"""The Materials Project structures of a set of MatBench tasks' formulas, as one CSV (``material_id, formula, cif``)
that ``python -m crossmat.dataset_builders embeddings --source`` embeds: the structure side of the fine-tuning
structure auxiliary (``train.structure_aux_weight``, issue 23). Every polymorph in ``mp_structures`` of every
formula of the tasks (all folds): a fold uses only the vectors of its training rows' formulas, looked up during
fine-tuning, so one table serves all folds. No target enters; the table is written outside the repository
(``--output``), since the structures are shared data read by path.

    python benchmarks/imkt/task_structures.py --tasks matbench_phonons matbench_jdft2d \
        --output benchmarks/_work/imkt/task_structures/structures.csv.gz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from crossmat.dataset_builders.matbench import load_task_frame
from crossmat.dataset_builders.paths import data_dir
from crossmat.tokenization import canonical_formula


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    wanted: dict[str, set[str]] = {t: set(map(canonical_formula, load_task_frame(t)["formula"])) for t in args.tasks}
    mp = pd.read_csv(data_dir() / "mp_structures" / "structures.csv.gz", usecols=["material_id", "formula", "cif"])
    mp["canonical"] = mp["formula"].map(canonical_formula)
    union = set().union(*wanted.values())
    subset = mp[mp["canonical"].isin(union)].reset_index(drop=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    subset[["material_id", "formula", "cif"]].to_csv(out, index=False)
    summary = {t: {"formulas": len(f), "with_mp_structure": len(f & set(subset["canonical"]))} for t, f in wanted.items()}
    summary["structures"] = len(subset)
    summary["distinct_formulas"] = int(subset["canonical"].nunique())
    (out.parent / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
