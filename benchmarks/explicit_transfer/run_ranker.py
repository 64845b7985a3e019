"""perov_5 CSP: one candidate pool (template substitution, optionally + CIF-LM samples), several rankers.

    PYTHONPATH=. python benchmarks/explicit_transfer/run_ranker.py --stage pool     # candidates + match matrix (cached)
    PYTHONPATH=. python benchmarks/explicit_transfer/run_ranker.py --stage energy   # CHGNet energies of the pools (cached)
    PYTHONPATH=. python benchmarks/explicit_transfer/run_ranker.py --stage rank     # train ranker, evaluate, write results

Pool: top-20 similarity-ranked template substitutions (AFLOW + perov_5 train, same-composition templates
excluded) for every test formula (and a seeded val subset used only to choose the energy mixing weight).
Each candidate is matched once against the true structure (StructureMatcher, CSP settings); every ranking is a
reordering of the same candidates, so match@k of any ranker comes from the cached ``[n, 20]`` match matrix.
The learned ranker (:class:`explicit_transfer.SiteRanker`) is trained on perov_5 TRAIN structures (real vs
site-swapped decoys); its hyper-parameters are checked on a held-out slice of train, never on test.
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

from run_train_templates import GROUPS, load, train_relation  # noqa: E402

from crossmat.explicit_transfer import GenerationBatch, PrototypeGenerator, SiteRanker, train_site_ranker  # noqa: E402
from crossmat.explicit_transfer.csp_metrics import CSP_MATCHER_KWARGS, csp_matcher, match_rms  # noqa: E402
from crossmat.explicit_transfer.potentials import predict_energies  # noqa: E402
from crossmat.explicit_transfer.site_ranker import decoy_accuracy  # noqa: E402

HERE = Path(__file__).parent
WORK = HERE.parent / "_work" / "exkt_ranker"
K = 20


def pool_frame(args: argparse.Namespace, split: str) -> pd.DataFrame:
    """All test formulas, or a seeded subset of val (for choosing the energy weight)."""
    df = load(split)
    if split == "val" and args.val_subset < len(df):
        df = df.sample(n=args.val_subset, random_state=args.seed).reset_index(drop=True)
    return df


def generate_pool(gen: PrototypeGenerator, df: pd.DataFrame) -> GenerationBatch:
    batch = gen.generate(df.formula.tolist(), K)
    short = [i for i, r in enumerate(batch) if len(r) < K]
    if short:
        raise RuntimeError(f"{len(short)} formulas have fewer than {K} candidates (first row {short[0]})")
    return batch


class LazyMatches:
    """RMS of candidate ``j`` of formula ``i`` against its truth, computed on first use and cached on disk
    (``nan`` = not computed yet, ``inf`` = no match). Every ranking reorders the same candidates, so a
    ranking's match@k only needs its first k candidates up to the first match."""

    def __init__(self, batch: GenerationBatch, truths: list, name: str) -> None:
        self.batch, self.truths, self.path = batch, truths, WORK / f"match-{name}.npz"
        self.rms = np.load(self.path)["rms"] if self.path.exists() else np.full((len(batch), K), np.nan)
        self.matcher, self.new = csp_matcher(), 0

    def get(self, i: int, j: int) -> float:
        if np.isnan(self.rms[i, j]):
            r = match_rms(self.batch[i][j].structure, self.truths[i], self.matcher)
            self.rms[i, j] = np.inf if r is None else r
            self.new += 1
            if self.new % 2000 == 0:
                self.save()
        return float(self.rms[i, j])

    def save(self) -> None:
        WORK.mkdir(parents=True, exist_ok=True)
        np.savez(self.path, rms=self.rms)

    def hits(self, order: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
        """``[n, len(ks)]`` booleans: a match among the first k of ``order[i]`` (candidate indices, best first)."""
        out = np.zeros((len(order), len(ks)), dtype=bool)
        for i, row in enumerate(order):
            first = next((r for r, j in enumerate(row[:max(ks)]) if np.isfinite(self.get(i, int(j)))), None)
            if first is not None:
                out[i] = [first < k for k in ks]
        self.save()
        return out


def by_group(hits: np.ndarray, groups: np.ndarray, ks: tuple[int, ...]) -> dict:
    """match@k per train-relation group and pooled (``all``)."""
    out = {}
    for g in (*GROUPS, "all"):
        sel = np.ones(len(groups), bool) if g == "all" else groups == g
        if sel.any():
            out[g] = {"n_targets": int(sel.sum()), **{f"match_rate@{k}": float(hits[sel, c].mean())
                                                      for c, k in enumerate(ks)}}
    return out


def energies(batch: GenerationBatch, name: str) -> np.ndarray:
    """CHGNet energy per atom ``[n, K]`` of every pool candidate (no relaxation), cached in benchmarks/_work."""
    path = WORK / f"energy-{name}.npz"
    if path.exists():
        return np.load(path)["energy"]
    t = time.time()
    e = predict_energies([c.structure for row in batch for c in row[:K]], "chgnet", batch_size=128).reshape(len(batch), K)
    print(f"CHGNet energies {name}: {e.size} structures in {time.time() - t:.0f}s", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(path, energy=e)
    return e


def learned_scores(ranker: SiteRanker, batch: GenerationBatch) -> np.ndarray:
    t = time.time()
    out = ranker.score_structures([c.structure for row in batch for c in row[:K]]).reshape(len(batch), K)
    print(f"learned scores: {out.size} candidates in {time.time() - t:.0f}s", flush=True)
    return out


def order_by(score: np.ndarray) -> np.ndarray:
    """Candidate indices per formula, highest score first (ties keep the similarity order)."""
    return np.argsort(-score, axis=1, kind="stable")


def run_rank(args: argparse.Namespace, train: pd.DataFrame, pools: dict) -> dict:
    """Train the site ranker on train, pick the energy weight on the val pool, evaluate every ranking on test."""
    rng = np.random.default_rng(args.seed)
    hold = rng.choice(len(train), args.holdout, replace=False)
    fit_idx = np.setdiff1d(np.arange(len(train)), hold)
    structs = train.structure.tolist()
    t = time.time()
    ranker = train_site_ranker([structs[i] for i in fit_idx], max_decoys=args.max_decoys, epochs=args.epochs,
                               hidden=args.hidden, seed=args.seed, progress=True)
    res: dict = {"ranker": {"train_structures": len(fit_idx), "train_s": time.time() - t,
                            "config": {k: v for k, v in vars(ranker.config).items() if k != "feature_names"},
                            "train_holdout_decoys": decoy_accuracy(ranker, [structs[i] for i in hold],
                                                                   args.max_decoys, args.seed)}}
    print("ranker", json.dumps(res["ranker"]), flush=True)
    scores = {}
    for split, (df, batch) in pools.items():
        scores[split] = {"similarity": -np.tile(np.arange(K, dtype=float), (len(df), 1)),
                         "energy": -energies(batch, f"{split}-{len(df)}"), "learned": learned_scores(ranker, batch)}
    ks = (1, 5, 20)
    df, batch = pools["val"]
    val_matches = LazyMatches(batch, df.structure.tolist(), f"val-{len(df)}")
    sv = scores["val"]
    tune = {}
    for w in args.energy_weights:
        tune[w] = float(val_matches.hits(order_by(sv["learned"] + w * sv["energy"]), (1,))[:, 0].mean())
    best = max(tune, key=lambda w: (tune[w], -w))
    ranker.config.energy_weight = best
    val_groups = train_relation(df.formula, train)
    res["val_pool"] = {"n_formulas": len(df), "energy_weight_match_at_1": {str(w): v for w, v in tune.items()},
                       "chosen_energy_weight": best, "metrics": {
                           name: by_group(val_matches.hits(order_by(sc), ks), val_groups, ks)
                           for name, sc in (*sv.items(), ("learned+energy", sv["learned"] + best * sv["energy"]))}}
    print("val pool", json.dumps(res["val_pool"]), flush=True)
    ranker.save_pretrained(args.ranker_dir)
    df, batch = pools["test"]
    groups = train_relation(df.formula, train)
    st = scores["test"]
    st["learned+energy"] = st["learned"] + best * st["energy"]
    matches = LazyMatches(batch, df.structure.tolist(), f"test-{len(df)}")
    res["test_pool"] = {"n_formulas": len(df), "group_sizes": {g: int((groups == g).sum()) for g in GROUPS},
                        "metrics": {}}
    for name, sc in st.items():
        t = time.time()
        res["test_pool"]["metrics"][name] = by_group(matches.hits(order_by(sc), ks), groups, ks)
        print(f"test {name} ({time.time() - t:.0f}s):", json.dumps(res["test_pool"]["metrics"][name]["all"]), flush=True)
    res["test_pool"]["matches_computed"] = int(np.isfinite(matches.rms).sum() + np.isinf(matches.rms).sum())
    return res


def update_headline(res: dict) -> None:
    """Add the ranker numbers (all test formulas, one template pool) to headline.json, keeping other keys."""
    path = HERE / "headline.json"
    head = json.loads(path.read_text()) if path.exists() else {}
    m = res["test_pool"]["metrics"]
    head.update({
        "ranker_n_targets": res["test_pool"]["n_formulas"],
        "ranker_match_at_1": m["learned"]["all"]["match_rate@1"],
        "ranker_match_at_5": m["learned"]["all"]["match_rate@5"],
        "ranker_match_at_20": m["learned"]["all"]["match_rate@20"],
        "ranker_energy_match_at_1": m["learned+energy"]["all"]["match_rate@1"],
        "ranker_energy_match_at_5": m["learned+energy"]["all"]["match_rate@5"],
        "ranker_pool_similarity_match_at_1": m["similarity"]["all"]["match_rate@1"],
        "ranker_pool_similarity_match_at_5": m["similarity"]["all"]["match_rate@5"],
        "ranker_pool_chgnet_match_at_1": m["energy"]["all"]["match_rate@1"],
        "ranker_pool_chgnet_match_at_5": m["energy"]["all"]["match_rate@5"],
        "ranker_source": "results_ranker.json (run_ranker.py --stage rank): top-20 template candidates (AFLOW + "
                         "perov_5 train, same-composition templates excluded) for all test formulas, re-ranked; "
                         "ranker_* = learned SiteRanker trained on perov_5 train (real vs site-swapped decoys), "
                         "ranker_energy_* = learned + CHGNet energy (weight picked on a val pool)",
    })
    path.write_text(json.dumps(head, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["energy", "rank"], required=True)
    ap.add_argument("--val-subset", type=int, default=600, help="seeded val formulas for the energy weight")
    ap.add_argument("--holdout", type=int, default=1000, help="train structures held out of ranker training")
    ap.add_argument("--max-decoys", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--energy-weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0])
    ap.add_argument("--ranker-dir", default=str(HERE / "site_ranker_perov5"), help="where the trained ranker is saved")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    train = load("train")
    gen = PrototypeGenerator.from_perov5("train", frame=train, exclude_same_formula=True)
    print(f"generator: {gen.n_templates} templates in {time.time() - t0:.0f}s", flush=True)
    pools = {}
    for split in ("val", "test"):
        df = pool_frame(args, split)
        t = time.time()
        pools[split] = (df, generate_pool(gen, df))
        print(f"{split}: {len(df)} formulas x {K} candidates in {time.time() - t:.0f}s", flush=True)
    if args.stage == "energy":
        for split, (df, batch) in pools.items():
            energies(batch, f"{split}-{len(df)}")
        return
    res: dict = {"hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared with "
                             "other jobs), no GPU", "matcher": CSP_MATCHER_KWARGS, "args": vars(args),
                 "pool": f"top-{K} similarity-ranked template substitutions, same-composition templates excluded"}
    res.update(run_rank(args, train, pools))
    res["total_s"] = time.time() - t0
    Path(args.out, "results_ranker.json").write_text(json.dumps(res, indent=2))
    update_headline(res)


if __name__ == "__main__":
    main()
