"""Fold-safe exKT on matbench_perovskites (official MatBench v0.1 5 folds): generate a structure for every test
formula from templates that only training-fold rows provide, predict e_form with a structure model trained only on
training-fold rows.

    bash benchmarks/explicit_transfer/run_matbench_perovskites.sh   # folds in two processes, then the summary pass
    python benchmarks/explicit_transfer/run_matbench_perovskites.py --folds 0   # one fold (finished folds are reused)

MatBench has formulas and targets but no structures; perov_5 has the same 18,928 Castelli materials with structures
(see map_matbench_perovskites.py). Per fold, a training-fold row gets a structure when exactly one perov_5 val/test
structure of its composition has ``heat_all`` within 0.005 eV of the row's ``e_form`` and that structure matches no
other training-fold row ("mapped rows", about 5,500 per fold). Test-fold targets are never used for mapping,
templates or training; the perov_5 ``train`` split is never used (it holds unlabelled structures, any of which may be
a test row's own). Arms, all scored on every test row:

* training-fold mean; composition lookup (mean e_form of the training rows of the same composition, else the mean):
  the composition-only references that need no structure;
* (a) predictor trained on the mapped rows' real structures, applied to the generated test structures (top-1);
* (b) predictor trained on generated structures of every training row (mapped rows get theirs from a generator
  built on the other half of the mapped rows, two-way, so a row never sees its own structure as a template; the
  other training rows from the full fold library, as test rows do), applied to the generated test structures.

The predictor is the exKT head of the perov_5 runs (MLP on frozen CHGNet crystal features). Per-fold outputs are
cached in ``benchmarks/_work/exkt_matbench_perovskites/fold<k>.json`` (a finished fold is not rerun).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))

from run_train_templates import load  # noqa: E402

from crossmat.dataset_builders.paths import data_dir  # noqa: E402
from crossmat.explicit_transfer import PrototypeGenerator, train_structure_predictor  # noqa: E402
from crossmat.explicit_transfer.data import composition_key, map_rows_to_structures  # noqa: E402
from crossmat.explicit_transfer.potentials import get_encoder  # noqa: E402

HERE = Path(__file__).parent
WORK = HERE.parent / "_work" / "exkt_matbench_perovskites"
TOL = 0.005  # eV; MatBench e_form has two decimals
GROUPS = ("composition in training folds", "composition not in training folds")


def chgnet_features(structures: list) -> np.ndarray:
    emb, _ = get_encoder("chgnet")(structures, batch_size=128)
    return np.asarray(emb, dtype=np.float32)


def load_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The MatBench task (formulas, e_form, folds) and the labelled perov_5 structures (val + test), both keyed by
    composition."""
    mb = pd.read_csv(data_dir() / "matbench_v0.1" / "matbench_perovskites.csv.gz")
    labelled = pd.concat([load("val"), load("test")], ignore_index=True)
    mb["key"], labelled["key"] = composition_key(mb.formula), composition_key(labelled.formula)
    return mb, labelled


def top1(gen: PrototypeGenerator, formulas: list[str]) -> list:
    batch = gen.generate(formulas, 1)
    if batch.failures:
        raise RuntimeError(f"{len(batch.failures)} formulas without a candidate; first: {batch.failures[0].to_dict()}")
    return [row[0].structure for row in batch]


def run_fold(fold: int, mb: pd.DataFrame, labelled: pd.DataFrame, epochs: int, seed: int) -> dict:
    t0 = time.time()
    train, test = mb[mb.test_fold != fold], mb[mb.test_fold == fold]
    mapped = map_rows_to_structures(train, labelled, tol=TOL)
    templates = [(f"matbench-train-row:{mb.id[r]}", labelled.structure[s]) for r, s in zip(mapped.row, mapped.structure, strict=True)]
    full = PrototypeGenerator(templates=templates)
    half = np.arange(len(templates)) % 2
    halves = [PrototypeGenerator(templates=[t for t, h in zip(templates, half, strict=True) if h != k]) for k in (0, 1)]
    timing: dict = {}
    t = time.time()
    test_structs = top1(full, test.formula.tolist())
    mapped_rows = set(mapped.row)
    gen_train: dict[int, object] = {}
    for k in (0, 1):  # each half of the mapped rows from the other half's templates
        rows = mapped.row[half == k].tolist()
        gen_train.update(zip(rows, top1(halves[k], mb.formula[rows].tolist()), strict=True))
    rest = [r for r in train.index if r not in mapped_rows]
    gen_train.update(zip(rest, top1(full, mb.formula[rest].tolist()), strict=True))
    timing["generation_s"] = time.time() - t
    t = time.time()
    f_test = chgnet_features(test_structs)
    f_gen_train = chgnet_features([gen_train[r] for r in train.index])
    f_real = chgnet_features([labelled.structure[s] for s in mapped.structure])
    timing["chgnet_features_s"] = time.time() - t
    y_train, y_test = train.e_form.to_numpy(), test.e_form.to_numpy()
    t = time.time()
    kw = {"target_name": "e_form", "target_unit": "eV/atom", "epochs": epochs, "seed": seed,
          "datasets": ["matbench_perovskites"]}
    real = train_structure_predictor(f_real, mb.e_form[mapped.row].to_numpy(), WORK / f"fold{fold}-real", **kw)
    gen = train_structure_predictor(f_gen_train, y_train, WORK / f"fold{fold}-generated", **kw)
    timing["predictor_training_s"] = time.time() - t
    lookup = train.groupby("key").e_form.mean()
    in_train = test.key.isin(lookup.index).to_numpy()
    preds = {
        "training-fold mean (no structure)": np.full(len(test), y_train.mean()),
        "composition lookup (no structure)": test.key.map(lookup).fillna(y_train.mean()).to_numpy(),
        "(a) real mapped training structures -> generated test top-1": real.predict_features(f_test)[:, 0],
        "(b) generated training structures -> generated test top-1": gen.predict_features(f_test)[:, 0],
    }
    mae = {}
    for name, p in preds.items():
        err = np.abs(p - y_test)
        mae[name] = {"all": float(err.mean()), GROUPS[0]: float(err[in_train].mean()),
                     GROUPS[1]: float(err[~in_train].mean())}
    return {"fold": fold, "n_train": len(train), "n_test": len(test), "n_mapped_training_rows": len(mapped),
            "n_templates": full.n_templates, "test_rows_composition_in_training": int(in_train.sum()),
            "mae_eV": mae, "timing": timing, "wall_s": time.time() - t0}


def audit(mb: pd.DataFrame, labelled: pd.DataFrame, fold: int) -> int:
    """After the fact, with test targets (reported only): mapped structures whose heat_all is also within TOL of a
    same-composition test-fold row's e_form, i.e. structures that could be a test row's own."""
    train, test = mb[mb.test_fold != fold], mb[mb.test_fold == fold]
    used = labelled.loc[map_rows_to_structures(train, labelled, tol=TOL).structure, ["key", "heat_all"]].reset_index(names="s")
    pairs = used.merge(test[["key", "e_form"]], on="key")
    return int(pairs[(pairs.e_form - pairs.heat_all).abs() < TOL].s.nunique())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", default="0,1,2,3,4", help="folds to run; the results file is written when all 5 exist")
    ap.add_argument("--epochs", type=int, default=150, help="predictor epochs (the perov_5 runs' setting)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    torch.set_num_threads(1)
    mb, labelled = load_tables()
    WORK.mkdir(parents=True, exist_ok=True)
    for fold in (int(f) for f in args.folds.split(",")):
        path = WORK / f"fold{fold}.json"
        if path.exists():
            print(f"fold {fold}: done ({path})", flush=True)
            continue
        res = run_fold(fold, mb, labelled, args.epochs, args.seed)
        res["settings"] = {"epochs": args.epochs, "seed": args.seed}
        res["audit_mapped_structures_matching_a_test_row"] = audit(mb, labelled, fold)
        print(json.dumps(res), flush=True)
        path.write_text(json.dumps(res, indent=1))
    done = [WORK / f"fold{k}.json" for k in range(5)]
    if not all(p.exists() for p in done):
        return
    folds = [json.loads(p.read_text()) for p in done]
    settings = {json.dumps(f.get("settings", {"epochs": 150, "seed": 0}), sort_keys=True) for f in folds}
    if len(settings) > 1:
        raise SystemExit(f"fold results in {WORK} were run with different settings: {sorted(settings)}")
    arms = list(folds[0]["mae_eV"])
    summary = {a: {"per_fold": [f["mae_eV"][a]["all"] for f in folds]} for a in arms}
    for s in summary.values():
        s["mean"], s["std"] = float(np.mean(s["per_fold"])), float(np.std(s["per_fold"]))
    res = {"task": "matbench_perovskites", "protocol": "MatBench v0.1 official 5 folds, every test row scored",
           "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), no GPU",
           "settings": json.loads(settings.pop()), "mae_eV_summary": summary, "folds": folds}
    Path(args.out, "results_matbench_perovskites.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
