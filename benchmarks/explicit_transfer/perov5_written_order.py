"""Does the formula *as written* say which cation sits on the A site of a perov_5 perovskite?

Every perov_5 crystal is a 5-atom ABX3 cell. For each row this script builds the two ideal cubic arrangements that its
written formula allows (A at the corner, B at the body centre, the anions on the face centres, in written order), one
with the first written element on A and one with the second, and asks the CDVAE/DiffCSP StructureMatcher
(stol 0.5, angle_tol 10, ltol 0.3) which of them is the row's real, DFT-relaxed structure. No template, model or
target is used; the structures are only read to describe the benchmark.

    PYTHONPATH=. python benchmarks/explicit_transfer/perov5_written_order.py [--train-sample 2000]
    # -> perov5_written_order.json / .txt

Read-outs per split: the share of rows whose structure matches the written order, the swapped order, both, or neither
(a relaxed cell too distorted for the ideal cubic one); for the test split also by where the row's composition has
its other entry (its *twin*: the same metals in the other site order).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
from pymatgen.core import Lattice, Structure
from tqdm.auto import tqdm

from crossmat.dataset_builders.paths import data_dir
from crossmat.explicit_transfer.csp_metrics import csp_matcher
from crossmat.explicit_transfer.data import PEROV5_FILES, composition_key

SITES = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]  # A, B, X, X, X


def written_species(formula: str) -> list[str]:
    """The formula's species in written order, each repeated by its count ('AgAsON2' -> Ag As O N N)."""
    out: list[str] = []
    for el, n in re.findall(r"([A-Z][a-z]?)(\d*)", formula):
        out += [el] * (int(n) if n else 1)
    return out


def cubic(a_site: str, b_site: str, anions: list[str]) -> Structure:
    """The ideal cubic ABX3 cell (the matcher scales volumes, so 4 Å is only a start)."""
    return Structure(Lattice.cubic(4.0), [a_site, b_site, *anions], SITES)


def classify(formula: str, cif: str, matcher) -> str:
    sp = written_species(formula)
    if len(sp) != 5:
        return "not ABX3 as written"
    real = Structure.from_str(cif, fmt="cif")
    written = matcher.fit(cubic(sp[0], sp[1], sp[2:]), real)
    swapped = matcher.fit(cubic(sp[1], sp[0], sp[2:]), real)
    return {(True, False): "written order", (False, True): "swapped order", (True, True): "both (A and B alike)",
            (False, False): "neither (distorted)"}[(written, swapped)]


def shares(labels: pd.Series) -> dict:
    counts = labels.value_counts()
    return {"rows": int(len(labels)), **{k: {"rows": int(v), "share": round(float(v) / len(labels), 4)}
                                         for k, v in counts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-sample", type=int, default=2000, help="seeded train rows to check (0: all 11,356)")
    args = ap.parse_args()
    matcher = csp_matcher()
    frames = {s: pd.read_csv(data_dir() / "perov_5" / f) for s, f in PEROV5_FILES.items()}
    if args.train_sample:
        frames["train"] = frames["train"].sample(n=args.train_sample, random_state=0)
    out: dict = {}
    labels = {}
    for split in ("test", "val", "train"):
        df = frames[split]
        labels[split] = pd.Series([classify(f, c, matcher) for f, c in
                                   tqdm(list(zip(df.formula, df.cif, strict=True)), desc=split, mininterval=30)],
                                  index=df.index)
        out[split] = shares(labels[split])
    test = frames["test"].assign(label=labels["test"], key=composition_key(frames["test"].formula))
    where = {"test": set(), "val": set(composition_key(frames["val"].formula)),
             "train": set(composition_key(pd.read_csv(data_dir() / "perov_5" / PEROV5_FILES["train"]).formula))}
    twin_in_test = test.groupby("key").formula.transform("count") > 1
    group = pd.Series("no twin", index=test.index)
    group[test.key.isin(where["val"])] = "twin in val"
    group[test.key.isin(where["train"])] = "twin in train"
    group[twin_in_test] = "twin in test"
    out["test by twin"] = {g: shares(test.label[group == g]) for g in ("twin in train", "twin in val", "twin in test",
                                                                       "no twin")}
    here = Path(__file__).with_suffix("")
    here.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["which ideal cubic arrangement of the written formula is the real structure (StructureMatcher, CSP settings)"]
    for name, block in out.items():
        if name == "test by twin":
            for g, b in block.items():
                lines.append(f"test, {g:14s} {b['rows']:5d} rows: " + ", ".join(
                    f"{k} {v['share']:.1%}" for k, v in b.items() if k != "rows"))
        else:
            lines.append(f"{name:20s} {block['rows']:5d} rows: " + ", ".join(
                f"{k} {v['share']:.1%}" for k, v in block.items() if k != "rows"))
    here.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
