"""How matbench_perovskites rows map onto perov_5 structures, and what that allows for a fold-safe exKT run.

    python benchmarks/explicit_transfer/map_matbench_perovskites.py   # -> map_matbench_perovskites.log (stdout)

MatBench's composition-only copy has formula, e_form and the official test fold, but no structure. perov_5 has
the structures. Both come from Castelli et al. (2012). The script keys both by composition, compares row counts
per composition, matches e_form to perov_5's targets where perov_5 has them (val and test), and counts how many
test-fold rows share their composition with a training-fold row.
"""

from __future__ import annotations

import pandas as pd

from crossmat.dataset_builders.paths import data_dir
from crossmat.explicit_transfer.data import composition_key


def main() -> None:
    root = data_dir()
    mb = pd.read_csv(root / "matbench_v0.1" / "matbench_perovskites.csv.gz")
    labelled = pd.concat([pd.read_csv(root / "perov_5" / f"{s}.csv.gz", usecols=["material_id", "formula", "heat_all", "heat_ref"])
                          .assign(split=s) for s in ("val", "test")])  # fmt: skip
    train = pd.read_csv(root / "perov_5" / "train_structures.csv.gz", usecols=["id", "formula"]).assign(split="train")
    mb["key"], labelled["key"], train["key"] = (composition_key(x.formula) for x in (mb, labelled, train))
    every = pd.concat([labelled[["key", "split"]], train[["key", "split"]]])
    per_mb, per_p5 = mb.key.value_counts(), every.key.value_counts()
    print(f"matbench_perovskites: {len(mb)} rows, {mb.key.nunique()} compositions; perov_5: {len(every)} structures "
          f"({len(train)} train without targets, {len(labelled)} val+test with targets), {every.key.nunique()} compositions")
    same = per_mb.reindex(per_p5.index).fillna(0).eq(per_p5)
    print(f"compositions in both: {len(set(per_mb.index) & set(per_p5.index))}; with the same number of rows in both: "
          f"{same.sum()} of {len(per_p5)}")
    print(f"matbench rows whose composition occurs once (unambiguous row -> structure): {(mb.key.map(per_mb) == 1).sum()}")
    pairs = mb.merge(labelled, on="key")
    for col in ("heat_all", "heat_ref"):
        hit = pairs[(pairs.e_form - pairs[col]).abs() < 0.005]
        print(f"e_form vs perov_5 {col}: {hit.material_id.nunique()} of {len(labelled)} val+test structures have a "
              f"same-composition matbench row within 0.005 eV")
    hit = pairs[(pairs.e_form - pairs.heat_all).abs() < 0.005]
    one_to_one = hit[hit.id.map(hit.id.value_counts()).eq(1) & hit.material_id.map(hit.material_id.value_counts()).eq(1)]
    print(f"matbench rows mapped to exactly one val/test structure (composition + e_form = heat_all) and vice versa: "
          f"{len(one_to_one)}; by split: {one_to_one.split.value_counts().to_dict()}")
    for fold in range(5):
        test, rest = mb[mb.test_fold == fold], mb[mb.test_fold != fold]
        print(f"fold {fold}: {len(test)} test rows; share whose composition is also a training-fold row "
              f"(another arrangement): {test.key.isin(set(rest.key)).mean():.3f}")


if __name__ == "__main__":
    main()
