"""exKT with ranked candidates, combined with the default-route composition model, on matbench_perovskites
(official 5 folds, fold-safe). Every choice is made on training-fold rows only.

    python benchmarks/explicit_transfer/run_matbench_perovskites_stack.py --folds 0,1   # finished folds are reused
    python benchmarks/explicit_transfer/run_matbench_perovskites_stack.py               # summary when all 5 exist

Per fold, the validation rows are exactly the default route's (``matbench_folds(..., validation_fraction=0.1,
seed=0)``): 10% of the training rows, which the composition model never trained on. Then:

* structures: top-1 template substitution for every training row as in ``run_matbench_perovskites.py`` arm (b)
  (mapped rows from the other half's templates), and the top-3 candidates (similarity-ranked) for validation and
  test rows;
* exKT: the structure predictor (MLP on frozen CHGNet features) trained on the generated top-1 structures of the
  *fit* rows (training minus validation); a row's prediction is the mean over its top-3 candidates (the rule of
  arm c1 in results_train_templates_property*.json, a perov_5 run; a reported arm here, not the headline);
* combination, a rule declared before any score of it was seen: inverse-variance weights from the validation
  rows, ``w_exkt = (1/MSE_exkt) / (1/MSE_exkt + 1/MSE_comp)``, where MSE_comp is the default-route model's own
  validation RMSE squared (its fold.json) and MSE_exkt the exKT predictor's on the same rows;
* twin-aware exKT: every composition appears at most twice in the task (the A/B-swapped pair; 9,282 pairs and 364
  single rows), and MatBench rows are distinct materials, so a test row whose composition already has a training
  row is the *other* arrangement. Both arrangements of the top-1 candidate (cations exchanged) are predicted; the
  one nearer the twin's known target is the twin, the other one is the answer (optionally shifted by the twin's
  residual: which of the two is chosen on the validation rows that have a twin in training). Rows without a twin
  get the composition model's prediction. Where the twin has a mapped real structure, a second arm answers
  instead with the twin's target plus the CHGNet energy gap (volume-scanned, see ``scan_energy``) of that structure
  with its cations exchanged (the elemental references cancel within a composition), times a factor chosen on the
  validation rows with such a twin. This uses a property of the data set (no repeated material, pairs), not
  of the test targets; a user's new formula has no twin, so it does not carry over to the user route.

The composition predictions are the committed default-route test predictions
(``benchmarks/matbench/runs/default_route/matbench_perovskites/crossmat/fold_k``). Per-fold results and per-row
test predictions go to ``matbench_perovskites_stack/`` (committed); the summary to
``results_matbench_perovskites_stack.json``.
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

from run_matbench_perovskites import TOL, chgnet_features, load_tables, top1  # noqa: E402
from run_train_templates import merge_headline  # noqa: E402

from crossmat.evaluation.protocol import matbench_folds  # noqa: E402
from crossmat.evaluation.tasks import matbench_task  # noqa: E402
from crossmat.explicit_transfer import PrototypeGenerator, train_structure_predictor  # noqa: E402
from crossmat.explicit_transfer.data import map_rows_to_structures  # noqa: E402
from crossmat.explicit_transfer.potentials import get_encoder  # noqa: E402

HERE = Path(__file__).parent
OUT = HERE / "matbench_perovskites_stack"
WORK = HERE.parent / "_work" / "exkt_matbench_perovskites_stack"
COMP = HERE.parent / "matbench" / "runs" / "default_route" / "matbench_perovskites" / "crossmat"
TOPK = 3
GAP_FACTORS = (0.5, 0.75, 0.9, 1.0, 1.1)
HEADLINE_ARM = "twin-aware + CHGNet swap energy gap where the twin's structure is mapped"  # declared before its scores


ANIONS = {"O", "N", "F", "S"}  # the Castelli perovskites' anions; every row has one or two other elements


def swapped(structure):
    """The other A/B arrangement: the two cations exchanged on their sites (``None`` when the formula has one)."""
    cations = sorted({sp.symbol for sp in structure.species} - ANIONS)
    if len(cations) != 2:
        return None
    out = structure.copy()
    out.replace_species({cations[0]: cations[1], cations[1]: cations[0]})
    return out


SCALES = np.linspace(0.80, 1.24, 12)  # isotropic lattice factors of the volume scan


def scan_energy(structures: list) -> np.ndarray:
    """CHGNet energy per atom at the best isotropic cell size (fractional coordinates kept: the Castelli cells are
    cubic-like, and a free cell+position relaxation drifts; measured on perov_5 val pairs): a 12-point scan of the
    lattice factor, refined by a parabola through the lowest point and its neighbours. One batched pass."""
    if not structures:
        return np.zeros(0)
    flat = []
    for s in structures:
        for f in SCALES:
            c = s.copy()
            c.scale_lattice(s.volume * f**3)
            flat.append(c)
    _, energy = get_encoder("chgnet")(flat, batch_size=256)
    e = np.asarray(energy, dtype=np.float64).reshape(len(structures), len(SCALES))
    i = np.clip(e.argmin(1), 1, len(SCALES) - 2)
    r = np.arange(len(e))
    e0, e1, e2 = e[r, i - 1], e[r, i], e[r, i + 1]
    curv = e0 - 2 * e1 + e2
    return np.where(curv > 0, e1 - (e2 - e0) ** 2 / (8 * np.where(curv > 0, curv, 1.0)), e1)


def swap_energy_gap(structures: list) -> np.ndarray:
    """Scanned CHGNet energy of each structure with its cations exchanged minus that of the structure itself."""
    return scan_energy([swapped(s) for s in structures]) - scan_energy(structures)


def features_of(structures_per_row: list[list]) -> tuple[np.ndarray, np.ndarray]:
    """CHGNet features of every candidate (one pass) and the row each belongs to."""
    flat = [s for row in structures_per_row for s in row]
    owner = np.repeat(np.arange(len(structures_per_row)), [len(r) for r in structures_per_row])
    return chgnet_features(flat), owner


def row_mean(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(owner, weights=values, minlength=n) / np.bincount(owner, minlength=n)


def topk(gen: PrototypeGenerator, formulas: list[str]) -> list[list]:
    batch = gen.generate(formulas, TOPK)
    if batch.failures:
        raise RuntimeError(f"{len(batch.failures)} formulas without a candidate; first: {batch.failures[0].to_dict()}")
    return [[c.structure for c in row] for row in batch]


def fold_features(fold: int, mb: pd.DataFrame, labelled: pd.DataFrame, fit: pd.DataFrame, val: pd.DataFrame,
                  test: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict]:
    """Generated structures and their CHGNet features (cached per fold in benchmarks/_work: a rerun is cheap)."""
    path = WORK / f"fold{fold}_features.npz"
    if path.exists():
        with np.load(path) as z:
            return dict(z), {}
    train = mb[mb.test_fold != fold]
    mapped = map_rows_to_structures(train, labelled, tol=TOL)
    templates = [(f"matbench-train-row:{mb.id[r]}", labelled.structure[s])
                 for r, s in zip(mapped.row, mapped.structure, strict=True)]
    full = PrototypeGenerator(templates=templates)
    half_of = dict(zip(mapped.row, np.arange(len(templates)) % 2, strict=True))
    halves = [PrototypeGenerator(templates=[t for t, r in zip(templates, mapped.row, strict=True) if half_of[r] != k])
              for k in (0, 1)]

    def generator_of(row: int) -> PrototypeGenerator:  # a mapped training row never sees its own structure
        return halves[half_of[row]] if row in half_of else full

    timing: dict = {"n_mapped_training_rows": len(mapped), "n_templates": full.n_templates}
    t = time.time()
    fit_structs: dict[int, object] = {}
    val_structs: dict[int, list] = {}
    for gen in (*halves, full):
        rows = [r for r in fit.index if generator_of(r) is gen]
        fit_structs.update(zip(rows, top1(gen, mb.formula[rows].tolist()), strict=True))
        rows = [r for r in val.index if generator_of(r) is gen]
        val_structs.update(zip(rows, topk(gen, mb.formula[rows].tolist()), strict=True))
    val_k = [val_structs[r] for r in val.index]
    test_k = topk(full, test.formula.tolist())
    timing["generation_s"] = time.time() - t
    t = time.time()
    out: dict[str, np.ndarray] = {"fit": chgnet_features([fit_structs[r] for r in fit.index])}
    for name, rows in (("val", val_k), ("test", test_k)):
        out[f"{name}_topk"], out[f"{name}_owner"] = features_of(rows)
        pairs = [[row[0], swapped(row[0])] if swapped(row[0]) is not None else [row[0], row[0]] for row in rows]
        out[f"{name}_pair"] = features_of(pairs)[0].reshape(len(rows), 2, -1)
    timing["chgnet_features_s"] = time.time() - t
    t = time.time()
    out.update(twin_gaps(mb, labelled, mapped, val, test))
    timing["twin_gap_s"] = time.time() - t
    np.savez_compressed(path, **out)
    return out, timing


def twin_gaps(mb: pd.DataFrame, labelled: pd.DataFrame, mapped: pd.DataFrame, val: pd.DataFrame,
              test: pd.DataFrame) -> dict[str, np.ndarray]:
    """For validation / test rows whose twin (other training row of the composition) has a mapped real structure:
    the scanned CHGNet energy gap of that structure with its cations exchanged (NaN elsewhere)."""
    structure_of = dict(zip(mapped.row, mapped.structure, strict=True))
    key_rows = mb.loc[list(structure_of)].groupby("key").groups
    out = {}
    for name, rows in (("val", val), ("test", test)):
        twins = [next((r for r in key_rows.get(k, []) if r != own), None) for own, k in zip(rows.index, rows.key, strict=True)]
        has = np.array([t is not None for t in twins])
        gap = np.full(len(rows), np.nan)
        gap[has] = swap_energy_gap([labelled.structure[structure_of[t]] for t in twins if t is not None])
        out[f"{name}_twin_gap"] = gap
    return out


def twin_predictions(predictor, pair_features: np.ndarray, twin_target: np.ndarray) -> dict[str, np.ndarray]:
    """For rows whose composition has a training row (its twin, the other A/B arrangement: MatBench rows are
    distinct materials and every composition appears at most twice): predict both arrangements of the top-1
    candidate, call the twin the one whose prediction is nearer the twin's known target, answer with the other."""
    n = len(pair_features)
    p = predictor.predict_features(pair_features.reshape(2 * n, -1))[:, 0].reshape(n, 2)
    twin_is_first = np.abs(p[:, 0] - twin_target) <= np.abs(p[:, 1] - twin_target)
    other = np.where(twin_is_first, p[:, 1], p[:, 0])
    twin = np.where(twin_is_first, p[:, 0], p[:, 1])
    return {"other arrangement": other, "other arrangement + twin offset": other + (twin_target - twin)}


def run_fold(fold: int, mb: pd.DataFrame, labelled: pd.DataFrame, epochs: int, seed: int) -> tuple[dict, pd.DataFrame]:
    t0 = time.time()
    fd = matbench_folds(matbench_task("matbench_perovskites"), mb, [fold], 0.1, 0)[0]
    val_ids, test_ids = set(fd.validation.id), fd.test.id.tolist()
    train, test = mb[mb.test_fold != fold], mb[mb.test_fold == fold]
    assert test.id.tolist() == test_ids
    fit, val = train[~train.id.isin(val_ids)], train[train.id.isin(val_ids)]
    feats, timing = fold_features(fold, mb, labelled, fit, val, test)
    kw = {"target_name": "e_form", "target_unit": "eV/atom", "epochs": epochs, "seed": seed,
          "datasets": ["matbench_perovskites"]}
    t = time.time()
    predictor = train_structure_predictor(feats["fit"], fit.e_form.to_numpy(), WORK / f"fold{fold}-fit", **kw)
    timing["predictor_training_s"] = time.time() - t

    def exkt(name: str, n: int) -> np.ndarray:
        return row_mean(predictor.predict_features(feats[f"{name}_topk"])[:, 0], feats[f"{name}_owner"], n)

    p_val, p_test = exkt("val", len(val)), exkt("test", len(test))
    y_val, y = val.e_form.to_numpy(), test.e_form.to_numpy()
    # twins: the other training row of the same composition (for a validation row: any training row but itself)
    by_key = train.groupby("key").e_form
    t_count, t_sum = by_key.count(), by_key.sum()
    val_twin_n = val.key.map(t_count).to_numpy() - 1
    val_twin = np.where(val_twin_n > 0, (val.key.map(t_sum).to_numpy() - y_val) / np.maximum(val_twin_n, 1), np.nan)
    test_twin = test.key.map(t_sum / t_count).to_numpy()
    val_has, test_has = val_twin_n > 0, ~np.isnan(test_twin)
    val_rules = twin_predictions(predictor, feats["val_pair"][val_has], val_twin[val_has])
    test_rules = twin_predictions(predictor, feats["test_pair"][test_has], test_twin[test_has])
    val_rule_mae = {k: float(np.abs(v - y_val[val_has]).mean()) for k, v in val_rules.items()}
    rule = min(val_rule_mae, key=val_rule_mae.get)  # chosen on validation rows only

    comp_fold = json.loads((COMP / f"fold_{fold}" / "fold.json").read_text())["params"]["validation"]
    comp = pd.read_csv(COMP / f"fold_{fold}" / "predictions.csv").set_index("id").loc[test_ids]
    p_comp = comp.prediction.to_numpy()
    mse_exkt = float(np.mean((p_val - y_val) ** 2))
    mse_comp = float(comp_fold["rmse"]) ** 2
    w = (1 / mse_exkt) / (1 / mse_exkt + 1 / mse_comp)
    twin_aware = p_comp.copy()
    twin_aware[test_has] = test_rules[rule]
    # twins with a mapped real structure: the twin's target plus the CHGNet energy gap of exchanging its cations
    # (references cancel within a composition), the factor chosen on validation rows with such a twin
    val_gap, test_gap = feats["val_twin_gap"], feats["test_twin_gap"]
    val_g, test_g = val_has & np.isfinite(val_gap), test_has & np.isfinite(test_gap)
    gap_mae = {f"{a:g}": float(np.abs(val_twin[val_g] + a * val_gap[val_g] - y_val[val_g]).mean()) for a in GAP_FACTORS}
    factor = float(min(gap_mae, key=gap_mae.get))
    twin_gap = twin_aware.copy()
    twin_gap[test_g] = test_twin[test_g] + factor * test_gap[test_g]
    preds = {"composition (default route)": p_comp, "exKT top-3 mean (fit rows)": p_test,
             "stacked (inverse-variance on validation rows)": w * p_test + (1 - w) * p_comp,
             "twin-aware exKT (rows without a training twin: composition model)": twin_aware,
             "twin-aware + CHGNet swap energy gap where the twin's structure is mapped": twin_gap}
    mae = {k: {"all": float(np.abs(v - y).mean()), "twin in training folds": float(np.abs(v - y)[test_has].mean()),
               "twin with a mapped structure": float(np.abs(v - y)[test_g].mean()),
               "no twin in training folds": float(np.abs(v - y)[~test_has].mean())} for k, v in preds.items()}
    rows = pd.DataFrame({"id": test_ids, "target": y, "composition": p_comp, "exkt": p_test,
                         "stacked": preds["stacked (inverse-variance on validation rows)"], "twin_aware": twin_aware,
                         "twin_gap": twin_gap, "twin_in_training": test_has, "twin_structure_mapped": test_g})
    res = {"fold": fold, "n_fit": len(fit), "n_validation": len(val), "n_test": len(test),
           "n_test_with_twin": int(test_has.sum()), "n_validation_with_twin": int(val_has.sum()),
           "n_test_with_mapped_twin": int(test_g.sum()), "n_validation_with_mapped_twin": int(val_g.sum()),
           "validation": {"exkt_mae": float(np.mean(np.abs(p_val - y_val))), "exkt_rmse": mse_exkt ** 0.5,
                          "composition_mae": float(comp_fold["mae"]), "composition_rmse": mse_comp ** 0.5,
                          "twin_rules_mae": val_rule_mae, "twin_rule_chosen": rule,
                          "gap_factor_mae": gap_mae, "gap_factor_chosen": factor},
           "weight_exkt": w, "test_mae_eV": mae, "timing": timing, "wall_s": time.time() - t0,
           "settings": {"epochs": epochs, "seed": seed, "topk": TOPK}}
    return res, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=150, help="predictor epochs (the perov_5 runs' setting)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    mb, labelled = load_tables()
    OUT.mkdir(parents=True, exist_ok=True)
    for fold in (int(f) for f in args.folds.split(",")):
        path = OUT / f"fold{fold}.json"
        if path.exists():
            print(f"fold {fold}: done ({path})", flush=True)
            continue
        res, rows = run_fold(fold, mb, labelled, args.epochs, args.seed)
        rows.to_csv(OUT / f"fold{fold}_test_predictions.csv.gz", index=False, float_format="%.5g")
        path.write_text(json.dumps(res, indent=1))
        print(json.dumps(res), flush=True)
    done = [OUT / f"fold{k}.json" for k in range(5)]
    if not all(p.exists() for p in done):
        return
    folds = [json.loads(p.read_text()) for p in done]
    arms = list(folds[0]["test_mae_eV"])
    summary = {a: {"per_fold": [f["test_mae_eV"][a]["all"] for f in folds]} for a in arms}
    for s in summary.values():
        s["mean"], s["std"] = float(np.mean(s["per_fold"])), float(np.std(s["per_fold"]))
    res = {"task": "matbench_perovskites", "protocol": "MatBench v0.1 official 5 folds, every test row scored",
           "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), no GPU",
           "weights_exkt": [f["weight_exkt"] for f in folds], "mae_eV_summary": summary}
    (HERE / "results_matbench_perovskites_stack.json").write_text(json.dumps(res, indent=2))
    merge_headline({"matbench_perovskites_exkt_mae": summary[HEADLINE_ARM]["mean"],
                    "matbench_perovskites_exkt_std": summary[HEADLINE_ARM]["std"],
                    "matbench_perovskites_exkt_arm": HEADLINE_ARM,
                    "matbench_perovskites_source": "results_matbench_perovskites_stack.json "
                                                   "(run_matbench_perovskites_stack.py, official 5 folds)"})
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
