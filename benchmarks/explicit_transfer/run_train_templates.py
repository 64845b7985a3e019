"""perov_5 exKT with prototype templates from the perov_5 TRAIN split (the standard CSP protocol: generators
learn from ``train``, never from ``val``/``test`` structures), train-on-generated predictors and CHGNet relaxation.

    python benchmarks/explicit_transfer/run_train_templates.py --stage csp       # -> results_train_templates_csp.json
    python benchmarks/explicit_transfer/run_train_templates.py --stage property  # -> results_train_templates_property.json
    python benchmarks/explicit_transfer/run_train_templates.py --stage relax     # -> results_train_templates_relax.json

``csp``: match@1 on every test formula, match@{1,5,20} and CHGNet re-ranking on a seeded test subset.
``property``: heat_ref MAE on every test formula for predictors (MLP on frozen CHGNet crystal features) trained on
real ``val`` structures or on the generated top-1 / lowest-energy-of-top-k structures of the ``val`` formulas.
``relax``: bounded CHGNet relaxation of top-1 candidates of a seeded test subset (needs ``property``'s predictors).
Every number is also split by how the test formula relates to ``train``: the same formula string (same site
order) is in train; only the same composition is (other site order); the composition is absent from train.
Parsed splits are cached in ``$CROSSMAT_CACHE_DIR/exkt_perov5``, CHGNet features and predictors in benchmarks/_work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

warnings.filterwarnings("ignore")

from pymatgen.core import Composition  # noqa: E402

from crossmat.dataset_builders.embeddings import parse_structure  # noqa: E402
from crossmat.dataset_builders.paths import cache_dir, data_dir  # noqa: E402
from crossmat.explicit_transfer import (  # noqa: E402
    GenerationBatch,
    PrototypeGenerator,
    StructurePropertyPredictor,
    rank_candidates,
    train_structure_predictor,
)
from crossmat.explicit_transfer.cif_validation import validate_structure  # noqa: E402
from crossmat.explicit_transfer.csp_metrics import CSP_MATCHER_KWARGS, csp_metrics  # noqa: E402
from crossmat.explicit_transfer.data import PEROV5_FILES, load_perov5  # noqa: E402
from crossmat.explicit_transfer.potentials import get_encoder  # noqa: E402

HERE = Path(__file__).parent
WORK = HERE.parent / "_work" / "exkt_train_templates"
GROUPS = ("formula in train", "composition in train, other site order", "composition not in train")


def load(split: str) -> pd.DataFrame:
    """perov_5 split with parsed structures, cached once per source-file size as parquet with pymatgen JSON
    (parsing 11k CIFs takes minutes; JSON reloads fast and, unlike a pickle, runs no code)."""
    src = data_dir() / "perov_5" / PEROV5_FILES[split]
    path = cache_dir() / "exkt_perov5" / f"{split}-{src.stat().st_size}.parquet"
    if path.exists():
        df = pd.read_parquet(path)
        df["structure"] = [parse_structure(text) for text in df.pop("structure_json")]
        return df
    df = load_perov5(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.drop(columns="structure").assign(structure_json=[s.to_json() for s in df.structure]).to_parquet(path)
    return df


def merge_headline(keys: dict) -> None:
    """Merge ``keys`` into headline.json next to this script, keeping every other key (each script owns its own)."""
    path = Path(__file__).parent / "headline.json"
    head = json.loads(path.read_text()) if path.is_file() else {}
    head.update(keys)
    path.write_text(json.dumps(head, indent=2) + "\n")


def tag(args: argparse.Namespace) -> str:
    """File-name suffix of a run variant (results, cached features, predictors)."""
    return "_exclude_same_formula" if args.exclude_same_formula else ""


def train_relation(formulas: pd.Series, train: pd.DataFrame) -> np.ndarray:
    """Per formula, which of :data:`GROUPS` it falls in relative to the train split."""
    comps = {Composition(f).reduced_formula for f in train.formula}
    names = set(train.formula)
    return np.array([GROUPS[0] if f in names else GROUPS[1] if Composition(f).reduced_formula in comps else GROUPS[2]
                     for f in formulas])


def metrics_by_group(cands: list[list], truths: list, groups: np.ndarray, ks: tuple[int, ...]) -> dict:
    """:func:`csp_metrics` per train-relation group, plus the pooled numbers (``all``)."""
    out: dict = {}
    for g in GROUPS:
        idx = np.flatnonzero(groups == g)
        if len(idx):
            out[g] = csp_metrics([cands[i] for i in idx], [truths[i] for i in idx], ks=ks)
    n = {g: m["n_targets"] for g, m in out.items()}
    pooled: dict = {"n_targets": float(sum(n.values()))}
    for k in ks:
        hits = {g: m[f"match_rate@{k}"] * n[g] for g, m in out.items()}
        pooled[f"match_rate@{k}"] = sum(hits.values()) / pooled["n_targets"]
        rms = [(m[f"rmse@{k}"], hits[g]) for g, m in out.items() if hits[g] > 0]
        pooled[f"rmse@{k}"] = sum(r * h for r, h in rms) / sum(h for _, h in rms) if rms else float("nan")
    out["all"] = pooled
    return out


def structures(batch: GenerationBatch, k: int) -> list[list]:
    return [[c.structure for c in row][:k] for row in batch]


def validity(batch: GenerationBatch, formulas: list[str]) -> float:
    ok = [validate_structure(c.structure, f).valid for row, f in zip(batch, formulas, strict=True) for c in row]
    return float(np.mean(ok)) if ok else 0.0


def generate(gen: PrototypeGenerator, formulas: list[str], k: int) -> tuple[GenerationBatch, dict]:
    t = time.time()
    batch = gen.generate(formulas, k)
    dt = time.time() - t
    n = sum(len(r) for r in batch)
    return batch, {"formulas": len(formulas), "structures": n, "failures": len(batch.failures),
                   "s_per_structure": dt / max(n, 1), "validity": validity(batch, formulas)}


def run_csp(args: argparse.Namespace, train: pd.DataFrame, test: pd.DataFrame, gen: PrototypeGenerator) -> dict:
    """match@1 on all test formulas; match@{1,5,20} + CHGNet re-ranking on a seeded subset."""
    groups = train_relation(test.formula, train)
    truths = test.structure.tolist()
    res: dict = {"group_sizes": {g: int((groups == g).sum()) for g in GROUPS}}
    top1, info = generate(gen, test.formula.tolist(), 1)
    t = time.time()
    res["full_test_top1"] = {"generation": info, "metrics": metrics_by_group(structures(top1, 1), truths, groups, (1,))}
    res["full_test_top1"]["matching_s"] = time.time() - t
    print("full test top-1", json.dumps(res["full_test_top1"]), flush=True)
    sub = test.sample(n=min(args.csp_subset, len(test)), random_state=args.seed).index.to_numpy()
    formulas, sub_truths, sub_groups = test.formula[sub].tolist(), [truths[i] for i in sub], groups[sub]
    top20, info = generate(gen, formulas, 20)
    t = time.time()
    m = metrics_by_group(structures(top20, 20), sub_truths, sub_groups, (1, 5, 20))
    res["subset_top20_similarity"] = {"generation": info, "metrics": m, "matching_s": time.time() - t,
                                      "group_sizes": {g: int((sub_groups == g).sum()) for g in GROUPS}}
    print("subset top-20 (similarity)", json.dumps(res["subset_top20_similarity"]), flush=True)
    t = time.time()
    ranked = rank_candidates(top20, potential="chgnet", batch_size=128)
    dt = time.time() - t
    m = metrics_by_group(structures(ranked, 20), sub_truths, sub_groups, (1, 5))
    res["subset_top20_chgnet_rank"] = {"metrics": m, "ranking_s_per_structure": dt / max(info["structures"], 1)}
    print("subset top-20 re-ranked by CHGNet energy", json.dumps(res["subset_top20_chgnet_rank"]), flush=True)
    return res


def features(name: str, structs: list) -> tuple[np.ndarray, np.ndarray]:
    """CHGNet crystal features and energies per atom, cached in benchmarks/_work by name and size."""
    path = WORK / f"feat-{name}-{len(structs)}.npz"
    if path.exists():
        z = np.load(path)
        return z["emb"], z["energy"]
    t = time.time()
    emb, energy = get_encoder("chgnet")(structs, batch_size=128)
    print(f"features {name}: {len(structs)} structures in {time.time() - t:.0f}s", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(path, emb=emb, energy=energy)
    return emb, energy


def topk_features(name: str, batch: GenerationBatch, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[n, k, d]`` and energies ``[n, k]`` of each formula's first k candidates (needs k per row)."""
    short = [i for i, r in enumerate(batch) if len(r) < k]
    if short:
        raise RuntimeError(f"{len(short)} formulas have fewer than {k} candidates (first row {short[0]}); lower --topk")
    emb, energy = features(name, [c.structure for r in batch for c in r[:k]])
    return emb.reshape(len(batch), k, -1), energy.reshape(len(batch), k)


def fit(name: str, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> StructurePropertyPredictor:
    t = time.time()
    model = train_structure_predictor(x, y, WORK / f"predictor-{name}", target_name="heat_ref", target_unit="eV/atom",
                                      epochs=args.epochs, seed=args.seed, datasets=["perov_5"])
    print(f"trained predictor {name} on {len(x)} rows in {time.time() - t:.0f}s", flush=True)
    return model


def mae_by_group(pred: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict:
    err = np.abs(pred - y)
    return {"all": float(err.mean()), **{g: float(err[groups == g].mean()) for g in GROUPS if (groups == g).any()}}


def run_property(args: argparse.Namespace, train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame,
                 gen: PrototypeGenerator) -> dict:
    """heat_ref MAE on all test formulas: real/generated training structures x real/generated test structures."""
    k = args.topk
    gen_val, info_val = generate(gen, val.formula.tolist(), k)
    gen_test, info_test = generate(gen, test.formula.tolist(), k)
    f_val, _ = features("val-real", val.structure.tolist())
    f_test, _ = features("test-real", test.structure.tolist())
    g_val, e_val = topk_features(f"val-gen{tag(args)}-top{k}", gen_val, k)
    g_test, e_test = topk_features(f"test-gen{tag(args)}-top{k}", gen_test, k)
    y_val, y_test = val.heat_ref.to_numpy(), test.heat_ref.to_numpy()
    groups = train_relation(test.formula, train)
    lo_val, lo_test = e_val.argmin(1), e_test.argmin(1)
    pick = lambda g, i: g[np.arange(len(g)), i]  # noqa: E731
    real = fit("real-val", f_val, y_val, args)
    gen1 = fit(f"gen{tag(args)}-val-top1", g_val[:, 0], y_val, args)
    genlo = fit(f"gen{tag(args)}-val-lowest-energy-of-top{k}", pick(g_val, lo_val), y_val, args)
    flat = lambda m, g: m.predict_features(g.reshape(-1, g.shape[-1]))[:, 0].reshape(g.shape[:2])  # noqa: E731
    p_gen1_all, p_real_all = flat(gen1, g_test), flat(real, g_test)
    arms = {
        "predict the val mean": np.full(len(y_test), y_val.mean()),
        "(d) real val -> real test (upper bound)": real.predict_features(f_test)[:, 0],
        "(a) real val -> generated test top-1": p_real_all[:, 0],
        "(b) generated val top-1 -> generated test top-1": p_gen1_all[:, 0],
        f"(c1) generated val top-1 -> mean prediction over generated test top-{k}": p_gen1_all.mean(1),
        f"(c2) generated val lowest-CHGNet-energy of top-{k} -> same on test":
            genlo.predict_features(pick(g_test, lo_test))[:, 0],
        "(e) generated val top-1 -> real test (reverse shift)": gen1.predict_features(f_test)[:, 0],
    }
    mae = {name: mae_by_group(p, y_test, groups) for name, p in arms.items()}
    base = mae["predict the val mean"]["all"]
    out = {"n_val": len(val), "n_test": len(test), "topk": k, "predictor_epochs": args.epochs,
           "generation": {"val": info_val, "test": info_test},
           "group_sizes": {g: int((groups == g).sum()) for g in GROUPS},
           "heat_ref_mae_eV_per_atom": mae,
           "ratio_to_val_mean_baseline": {name: m["all"] / base for name, m in mae.items()},
           "issue_bar": "exKT MAE <= 0.6 x training-mean MAE"}
    print(json.dumps(out, indent=1), flush=True)
    return out


def run_relax(args: argparse.Namespace, train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame,
              gen: PrototypeGenerator) -> dict:
    """Bounded CHGNet relaxation of top-1 candidates on a seeded test subset: match@1 and predictor MAE before/after."""
    sub = test.sample(n=min(args.relax_subset, len(test)), random_state=args.seed).reset_index(drop=True)
    groups = train_relation(sub.formula, train)
    batch, info = generate(gen, sub.formula.tolist(), 1)
    unrelaxed = structures(batch, 1)
    t = time.time()
    relaxed_batch = rank_candidates(batch, potential="chgnet", relax_steps=args.relax_steps, fmax=args.fmax)
    dt = time.time() - t
    relaxed = structures(relaxed_batch, 1)
    truths = sub.structure.tolist()
    vol = [r[0].volume / u[0].volume for r, u in zip(relaxed, unrelaxed, strict=True)]
    out: dict = {"n": len(sub), "relax_steps_max": args.relax_steps, "fmax": args.fmax, "generation": info,
                 "relax_s_per_structure": dt / len(sub), "volume_ratio_relaxed_over_unrelaxed_mean": float(np.mean(vol)),
                 "group_sizes": {g: int((groups == g).sum()) for g in GROUPS},
                 "csp_unrelaxed": metrics_by_group(unrelaxed, truths, groups, (1,)),
                 "csp_relaxed": metrics_by_group(relaxed, truths, groups, (1,))}
    y = sub.heat_ref.to_numpy()
    mae: dict = {"predict the val mean": mae_by_group(np.full(len(y), val.heat_ref.mean()), y, groups)}
    for name in ("real-val", f"gen{tag(args)}-val-top1"):
        path = WORK / f"predictor-{name}"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run --stage property first")
        model = StructurePropertyPredictor.from_pretrained(path)
        for what, structs in (("real", truths), ("unrelaxed top-1", [s[0] for s in unrelaxed]),
                              ("relaxed top-1", [s[0] for s in relaxed])):
            mae[f"predictor trained on {name} -> {what}"] = mae_by_group(model.predict_structures(structs, 128)[:, 0],
                                                                         y, groups)
    out["heat_ref_mae_eV_per_atom"] = mae
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["csp", "property", "relax"], required=True)
    ap.add_argument("--csp-subset", type=int, default=300, help="seeded test subset for match@20 and CHGNet ranking")
    ap.add_argument("--topk", type=int, default=3, help="candidates per formula featurised in --stage property")
    ap.add_argument("--relax-subset", type=int, default=100)
    ap.add_argument("--relax-steps", type=int, default=100)
    ap.add_argument("--fmax", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exclude-same-formula", action="store_true",
                    help="skip templates with the target's composition (perov_5 repeats a composition as other polymorphs)")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    train, test = load("train"), load("test")
    val = load("val") if args.stage in ("property", "relax") else None
    print(f"loaded train {len(train)} / test {len(test)} in {time.time() - t0:.0f}s", flush=True)
    t = time.time()
    gen = PrototypeGenerator.from_perov5("train", frame=train, exclude_same_formula=args.exclude_same_formula)
    print(f"generator: {gen.n_templates} templates (AFLOW + perov_5 train) in {time.time() - t:.0f}s", flush=True)
    res: dict = {"hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared with "
                             "other jobs), no GPU", "templates": "AFLOW prototypes + perov_5 train (11,356 structures)",
                 "matcher": CSP_MATCHER_KWARGS, "seed": args.seed, "args": vars(args), "n_templates": gen.n_templates}
    if args.stage == "csp":
        res["csp"] = run_csp(args, train, test, gen)
    elif args.stage == "property":
        res["property"] = run_property(args, train, val, test, gen)
    else:
        res["relax"] = run_relax(args, train, val, test, gen)
    res["total_s"] = time.time() - t0
    Path(args.out, f"results_train_templates_{args.stage}{tag(args)}.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
