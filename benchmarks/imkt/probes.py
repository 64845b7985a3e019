"""Frozen-backbone probes: where does the pretraining knowledge go? (issue 23, item 1)

Pooled embeddings (the model's own pooling, no grad) of three encoders with the same architecture
(hidden 128, 3 layers, frozen mat2vec table):

* ``imkt``    MLM + InfoNCE alignment onto CHGNet embeddings (shipped ``crossmat-imkt-mp-small``);
* ``mlm``     MLM-only control (``--mlm PATH``, a CrossMat model folder);
* ``scratch`` the same config randomly initialised (``torch.manual_seed(0)``) with the same frozen mat2vec
  table installed the way training installs it (checked equal to the imKT model's buffer);

plus ``mat2vec``, the fraction-weighted mean of the frozen (standardised) mat2vec table: the "no encoder"
baseline. Two probe sets, all linear, fitted on standardised features:

a. the 10 MatBench composition tasks, official folds: ``RidgeCV`` (alpha chosen by a 5-fold inner CV on the
   training fold only, grouped by formula) or ``LogisticRegressionCV`` (C by a stratified 5-fold inner CV,
   balanced class weights, balanced accuracy of hard labels); mean +- std over the 5 folds;
b. formula -> structure descriptors on a seeded sample of Materials Project structures (formulas with exactly
   one structure in ``mp_structures``, so no polymorph has to be chosen), split 80/20 by formula: volume per
   atom, density, packing fraction, log10 sites in the primitive cell, mean nearest-neighbour distance (ridge
   R^2 / MAE) and the crystal system (logistic accuracy), reported on all held-out formulas and separately on
   those inside / outside the pretraining corpus (corpus = MP formulas minus every formula of the 10 tasks);
c. formula -> the 64-d CHGNet embedding of that structure (the imKT teacher's own target, z-scored), same sample
   and split as b, when the CHGNet MP embeddings exist (``--chgnet-embeddings``): mean R^2 over dimensions and
   per-row cosine, again on the held-out formulas outside the corpus separately.

Embeddings and descriptors are cached under ``--work-dir`` (git-ignored), so a rerun resumes.

    python benchmarks/imkt/probes.py --mlm PATH --output-dir benchmarks/imkt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

TASKS = ("matbench_steels", "matbench_expt_gap", "matbench_expt_is_metal", "matbench_glass", "matbench_jdft2d",
         "matbench_phonons", "matbench_dielectric", "matbench_log_gvrh", "matbench_log_kvrh", "matbench_perovskites")
FEATURES = ("scratch", "mlm", "imkt", "mat2vec")
ALPHAS = np.logspace(-3, 5, 17)
CS = np.logspace(-3, 2, 6)
STRUCT_TARGETS = ("volume_per_atom", "density", "packing_fraction", "log10_nsites_primitive", "mean_nn_distance")
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")

PAIRS = (("imkt", "mlm"), ("mlm", "scratch"), ("imkt", "scratch"), ("mlm", "mat2vec"), ("imkt", "mat2vec"))

_LOG = None


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if _LOG is not None:
        _LOG.write(line + "\n")
        _LOG.flush()


# --------------------------------------------------------------------------------------------- backbones
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_folder(path: str) -> Path:
    """A CrossMat model folder: ``path`` itself or, when it only holds checkpoints, its newest subfolder
    with a config.json and model.safetensors."""
    from crossmat.modeling.pretrained import resolve_model_path

    p = resolve_model_path(path)
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return p
    subs = sorted((d for d in p.rglob("*") if d.is_dir() and (d / "config.json").is_file()
                   and (d / "model.safetensors").is_file()), key=lambda d: d.stat().st_mtime)
    if not subs:
        raise FileNotFoundError(f"{p} holds no config.json + model.safetensors")
    return subs[-1]


def load_encoders(imkt: str, mlm: str) -> tuple[dict[str, torch.nn.Module], dict[str, dict]]:
    """``{name: CrossMatModel}`` in eval mode and what each one is (folder, weights sha256, class)."""
    import crossmat
    from crossmat.modeling.configuration_crossmat import CrossMatConfig
    from crossmat.modeling.element_features import install_element_features
    from crossmat.modeling.modeling_crossmat import CrossMatModel

    encoders: dict[str, torch.nn.Module] = {}
    info: dict[str, dict] = {}
    for name, spec in (("imkt", imkt), ("mlm", mlm)):
        folder = model_folder(spec)
        full = crossmat.load_model(str(folder))
        enc = getattr(full, "crossmat", full).eval()
        encoders[name] = enc
        info[name] = {"folder": str(folder), "class": type(full).__name__,
                      "weights_sha256": _sha256(folder / "model.safetensors"),
                      "parameters": sum(p.numel() for p in enc.parameters())}
    config = CrossMatConfig.from_pretrained(info["imkt"]["folder"])
    torch.manual_seed(0)
    scratch = CrossMatModel(config)
    covered = install_element_features(scratch, config.element_features)
    scratch.eval()
    ref = encoders["imkt"].embeddings
    same = bool(torch.equal(scratch.embeddings.element_feature_table, ref.element_feature_table)
                and torch.equal(scratch.embeddings.element_feature_mask, ref.element_feature_mask))
    same_mlm = bool(torch.equal(encoders["mlm"].embeddings.element_feature_table, ref.element_feature_table))
    if not (same and same_mlm):
        raise RuntimeError("the frozen element tables differ between backbones; the comparison would not isolate pretraining")
    encoders["scratch"] = scratch
    info["scratch"] = {"config_from": info["imkt"]["folder"], "seed": 0, "class": "CrossMatModel",
                       "element_features": config.element_features, "elements_covered": covered,
                       "element_table_equal_to_imkt_and_mlm": True,
                       "parameters": sum(p.numel() for p in scratch.parameters())}
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "pooling",
            "element_features", "fraction_encoding")
    for name in ("mlm", "scratch"):
        a = {k: getattr(encoders[name].config, k) for k in keys}
        b = {k: getattr(config, k) for k in keys}
        if a != b:
            raise RuntimeError(f"{name} encoder config {a} differs from imkt {b}")
    info["architecture"] = {k: getattr(config, k) for k in keys}
    return encoders, info


# --------------------------------------------------------------------------------------------- embeddings
@torch.inference_mode()
def embed(encoders: dict[str, torch.nn.Module], formulas: list[str], batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Pooled embeddings of every encoder plus the mat2vec fraction-weighted mean, one row per formula
    (batched by token length, like ``FormulaPredictor``)."""
    from crossmat.modeling.modeling_crossmat import decode_composition
    from crossmat.tokenization import CrossMatTokenizerFast

    tok = CrossMatTokenizerFast()
    enc = tok.encode_formulas(formulas, return_tensors="np")
    ids_all = np.asarray(enc["input_ids"])
    lengths = np.asarray(enc["attention_mask"]).sum(1)
    order = np.argsort(lengths, kind="stable")
    ref = encoders["imkt"]
    table = ref.embeddings.element_feature_table
    out = {name: np.zeros((len(formulas), m.config.hidden_size), dtype=np.float32) for name, m in encoders.items()}
    out["mat2vec"] = np.zeros((len(formulas), table.shape[1]), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max())
        ids = torch.as_tensor(ids_all[rows, :width])
        mask = (ids != ref.config.pad_token_id).long()
        for name, model in encoders.items():
            out[name][rows] = model(input_ids=ids, attention_mask=mask).pooler_output.float().numpy()
        slot, frac = decode_composition(ids, ref.config)
        w = (frac * slot).unsqueeze(-1)
        out["mat2vec"][rows] = (table[ids] * w).sum(1).numpy()
    return out


def cached_embeddings(work: Path, key: str, formulas: list[str], encoders, info) -> tuple[dict[str, np.ndarray], float, bool]:
    """Embeddings of the distinct ``formulas`` (in the given order), from ``work/emb/<backbone>/<key>.npy``
    when the cache matches the formulas and the backbone weights."""
    digest = hashlib.sha256("\n".join(formulas).encode()).hexdigest()[:16]
    tags = {name: (info[name].get("weights_sha256", "scratch-seed0")[:16]) for name in encoders}
    tags["mat2vec"] = "mat2vec-" + info["imkt"]["weights_sha256"][:8]
    paths = {name: work / "emb" / name / f"{key}.{tags[name]}.{digest}.npy" for name in FEATURES}
    if all(p.is_file() for p in paths.values()):
        return {name: np.load(p) for name, p in paths.items()}, 0.0, True
    t0 = time.perf_counter()
    emb = embed(encoders, formulas)
    dt = time.perf_counter() - t0
    for name, p in paths.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, emb[name])
    return emb, dt, False


# --------------------------------------------------------------------------------------------- probes
def ridge_probe(x_tr, y_tr, x_te, groups, seed: int = 0):
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = list(GroupKFold(n_splits=5, shuffle=True, random_state=seed).split(x_tr, y_tr, groups))
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS, cv=cv, scoring="neg_mean_absolute_error"))
    model.fit(x_tr, y_tr)
    return model.predict(x_te), float(model[-1].alpha_)


def logistic_probe(x_tr, y_tr, x_te, seed: int = 0):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    clf = LogisticRegressionCV(Cs=CS, cv=cv, scoring="balanced_accuracy", class_weight="balanced", max_iter=2000)
    model = make_pipeline(StandardScaler(), clf)
    model.fit(x_tr, y_tr)
    return model.predict(x_te), model.predict_proba(x_te), float(np.ravel(model[-1].C_)[0])


def run_matbench(encoders, info, work: Path, tasks) -> dict:
    from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, roc_auc_score

    from crossmat.dataset_builders.matbench import load_task_frame, task_info
    from crossmat.evaluation.tasks import fold_indices

    results = {}
    for task in tasks:
        t0 = time.perf_counter()
        frame = load_task_frame(task)
        meta = task_info(task)
        cls = meta["task_type"] == "classification"
        uniq, inverse = np.unique(frame["formula"].to_numpy().astype(str), return_inverse=True)
        emb, t_emb, cached = cached_embeddings(work, task, list(uniq), encoders, info)
        y = frame["target"].to_numpy()
        res = {"n": len(frame), "distinct_formulas": len(uniq), "task_type": meta["task_type"],
               "metric": "balanced_accuracy" if cls else "MAE", "unit": meta["unit"],
               "embedding_seconds": round(t_emb, 2), "embeddings_cached": cached, "features": {}}
        for feat in FEATURES:
            x = emb[feat][inverse]
            folds, extra, chosen = [], [], []
            for k in range(5):
                tr, te = fold_indices(frame["test_fold"], k)
                if cls:
                    pred, proba, c = logistic_probe(x[tr], y[tr], x[te])
                    folds.append(balanced_accuracy_score(y[te], pred))
                    extra.append(roc_auc_score(y[te], proba[:, 1]))
                    chosen.append(c)
                else:
                    pred, a = ridge_probe(x[tr], y[tr], x[te], inverse[tr])
                    folds.append(mean_absolute_error(y[te], pred))
                    chosen.append(a)
            r = {"per_fold": [float(v) for v in folds], "mean": float(np.mean(folds)), "std": float(np.std(folds)),
                 ("C" if cls else "alpha"): chosen}
            if cls:
                r["roc_auc_per_fold"] = [float(v) for v in extra]
                r["roc_auc_mean"] = float(np.mean(extra))
            res["features"][feat] = r
        if not cls:  # trivial baseline: the training-fold mean
            folds = []
            for k in range(5):
                tr, te = fold_indices(frame["test_fold"], k)
                folds.append(mean_absolute_error(y[te], np.full(len(te), y[tr].mean())))
            res["train_mean_baseline"] = {"mean": float(np.mean(folds)), "std": float(np.std(folds))}
        sign = -1.0 if cls else 1.0  # error: MAE, or 1 - balanced accuracy
        res["paired_fold_difference"] = {}
        for a, b in PAIRS:
            d = sign * (np.array(res["features"][a]["per_fold"]) - np.array(res["features"][b]["per_fold"]))
            rel = d / (sign * np.array(res["features"][b]["per_fold"]) + (1.0 if cls else 0.0))
            se = float(rel.std(ddof=1) / np.sqrt(len(rel)))
            verdict = "no clear difference" if abs(rel.mean()) <= 2 * se else ("better" if rel.mean() < 0 else "worse")
            res["paired_fold_difference"][f"{a}-{b}"] = {
                "error_difference_mean": float(d.mean()), "error_difference_std": float(d.std(ddof=1)),
                "relative_error_change_mean": float(rel.mean()), "relative_error_change_se": se,
                "verdict_2se": verdict}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results[task] = res
        f = res["features"]
        log(f"{task:24s} n={len(frame):6d} {res['metric']:17s} " + "  ".join(
            f"{k} {f[k]['mean']:.4g}±{f[k]['std']:.2g}" for k in FEATURES) + f"  ({res['seconds']:.0f} s)")
    return results


# --------------------------------------------------------------------------------------------- structures
def descriptors(cif: str) -> dict:
    from pymatgen.core import Element, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = Structure.from_str(cif, fmt="cif")
    n = len(s)
    vol_atoms = 0.0
    for el, amt in s.composition.element_composition.items():
        r = Element(str(el)).atomic_radius or Element(str(el)).atomic_radius_calculated
        vol_atoms += amt * 4.0 / 3.0 * math.pi * float(r) ** 3
    try:
        sga = SpacegroupAnalyzer(s, symprec=0.1)
        system = sga.get_crystal_system()
        prim = sga.find_primitive()
        nprim = len(prim) if prim is not None else len(s.get_primitive_structure())
    except Exception:  # noqa: BLE001  (spglib failure: record it, keep the row's other descriptors)
        system, nprim = None, len(s.get_primitive_structure())
    r = 4.0
    while True:
        centers, _, _, dist = s.get_neighbor_list(r)
        nn = np.full(n, np.inf)
        np.minimum.at(nn, centers, dist)
        if np.isfinite(nn).all() or r > 20:
            break
        r *= 2
    return {"nsites": n, "volume_per_atom": s.volume / n, "density": float(s.density),
            "packing_fraction": vol_atoms / s.volume, "crystal_system": system, "nsites_primitive": nprim,
            "log10_nsites_primitive": math.log10(nprim), "mean_nn_distance": float(nn.mean())}


def structure_sample(work: Path, n_sample: int, seed: int, matbench_formulas: set[str]) -> tuple[pd.DataFrame, dict]:
    from crossmat.dataset_builders.common import canonicalize_formulas
    from crossmat.evaluation.tasks import data_dir

    path = work / f"structures_n{n_sample}_seed{seed}.parquet"
    src = data_dir() / "mp_structures" / "structures.csv.gz"
    meta = {"source": str(src)}
    if path.is_file():
        df = pd.read_parquet(path)
        meta.update(json.loads((work / f"structures_n{n_sample}_seed{seed}.json").read_text()))
        meta["cached"] = True
        return df, meta
    t0 = time.perf_counter()
    all_rows = pd.read_csv(src, dtype=str)
    canon, bad = canonicalize_formulas(all_rows["formula"])
    all_rows["canonical"] = canon
    all_rows = all_rows[pd.notna(all_rows["canonical"])]
    counts = all_rows["canonical"].value_counts()
    single = all_rows[all_rows["canonical"].map(counts) == 1].sort_values("material_id")
    pick = np.sort(np.random.default_rng(seed).choice(len(single), size=n_sample, replace=False))
    sample = single.iloc[pick].reset_index(drop=True)
    meta.update({"structures": int(len(all_rows)), "formulas": int(len(counts)),
                 "single_structure_formulas": int(len(single)), "unparsed_formulas": len(bad)})
    rows, failures = [], []
    t1 = time.perf_counter()
    for i, (mid, formula, cif) in enumerate(zip(sample["material_id"], sample["canonical"], sample["cif"], strict=True)):
        try:
            rows.append({"material_id": mid, "formula": formula, **descriptors(cif)})
        except Exception as exc:  # noqa: BLE001
            failures.append({"material_id": mid, "reason": repr(exc)[:200]})
        if (i + 1) % 1000 == 0:
            log(f"  descriptors {i + 1}/{len(sample)} ({time.perf_counter() - t1:.0f} s)")
    df = pd.DataFrame(rows)
    meta.update({"descriptor_failures": failures, "descriptor_seconds": round(time.perf_counter() - t1, 1),
                 "sample_seconds": round(time.perf_counter() - t0, 1)})
    df["in_matbench_tasks"] = df["formula"].isin(matbench_formulas)
    work.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path)
    (work / f"structures_n{n_sample}_seed{seed}.json").write_text(json.dumps(meta, indent=1))
    meta["cached"] = False
    return df, meta


def paired_bootstrap(loss: dict[str, np.ndarray], seed: int, n_boot: int = 2000) -> dict:
    """Mean per-row loss difference ``a - b`` on the test rows and its 95% paired-bootstrap interval."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(loss.values())))
    idx = rng.integers(0, n, size=(n_boot, n))
    out = {}
    for a, b in PAIRS:
        d = loss[a] - loss[b]
        boot = d[idx].mean(1)
        out[f"{a}-{b}"] = {"mean": float(d.mean()), "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]}
    return out


def held_out_rows(n: int, seed: int) -> np.ndarray:
    """The 80/20 split of the structure sample (sections b and c): True for the held-out fifth."""
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng(seed + 1).choice(n, size=n // 5, replace=False)] = True
    return is_test


def corpus_membership(df: pd.DataFrame, corpus: Path | None) -> tuple[np.ndarray, bool | None]:
    """Which sampled formulas the backbones saw in pretraining: the corpus file when given (and whether it agrees
    with the leakage rule, MP formulas minus the 10 tasks' formulas), else that rule."""
    rule = ~df["in_matbench_tasks"].to_numpy()
    if corpus is None or not corpus.is_file():
        return rule, None
    seen = df["formula"].isin(set(pd.read_parquet(corpus, columns=["formula"])["formula"])).to_numpy()
    return seen, bool((seen == rule).all())


def run_structures(encoders, info, work: Path, n_sample: int, seed: int, matbench_formulas: set[str],
                   corpus: Path | None) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, mean_absolute_error, r2_score

    t0 = time.perf_counter()
    df, meta = structure_sample(work, n_sample, seed, matbench_formulas)
    df = df.copy()
    df["in_corpus"], agree = corpus_membership(df, corpus)
    if agree is not None:
        meta["corpus_file"] = str(corpus)
        meta["corpus_membership_checked"] = agree
    formulas = df["formula"].tolist()
    emb, t_emb, cached = cached_embeddings(work, f"mp_sample_n{n_sample}_seed{seed}", formulas, encoders, info)
    is_test = held_out_rows(len(df), seed)
    tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    subsets = {"all": np.ones(len(te), dtype=bool), "in_corpus": df["in_corpus"].to_numpy()[te],
               "not_in_corpus": ~df["in_corpus"].to_numpy()[te]}
    out = {"sample": {**meta, "rows": len(df), "train": len(tr), "test": len(te),
                      "test_in_corpus": int(subsets["in_corpus"].sum()),
                      "test_not_in_corpus": int(subsets["not_in_corpus"].sum()),
                      "crystal_system_counts": df["crystal_system"].value_counts().to_dict()},
           "embedding_seconds": round(t_emb, 2), "embeddings_cached": cached, "targets": {}}
    groups = np.arange(len(tr))
    for target in STRUCT_TARGETS:
        y = df[target].to_numpy(dtype=float)
        abs_err = {}
        res = {"test_std": float(y[te].std()),
               "train_mean_baseline_mae": {k: float(mean_absolute_error(y[te][m], np.full(m.sum(), y[tr].mean())))
                                           for k, m in subsets.items()},
               "features": {}}
        for feat in FEATURES:
            pred, alpha = ridge_probe(emb[feat][tr], y[tr], emb[feat][te], groups, seed)
            abs_err[feat] = np.abs(pred - y[te])
            res["features"][feat] = {"alpha": alpha, **{
                k: {"r2": float(r2_score(y[te][m], pred[m])), "mae": float(mean_absolute_error(y[te][m], pred[m]))}
                for k, m in subsets.items()}}
        res["paired_mae_difference"] = paired_bootstrap(abs_err, seed)
        out["targets"][target] = res
        log(f"{target:24s} R2 " + "  ".join(f"{k} {res['features'][k]['all']['r2']:.3f}" for k in FEATURES))
    keep = pd.notna(df["crystal_system"]).to_numpy()
    y = df["crystal_system"].to_numpy()
    tr_k, te_k = tr[keep[tr]], te[keep[te]]
    sub_k = {k: m[keep[te]] for k, m in subsets.items()}
    majority = pd.Series(y[tr_k]).value_counts().index[0]
    res = {"classes": list(CRYSTAL_SYSTEMS), "majority_class": majority,
           "majority_accuracy": {k: float((y[te_k][m] == majority).mean()) for k, m in sub_k.items()}, "features": {}}
    wrong = {}
    for feat in FEATURES:
        pred, _, c = logistic_probe(emb[feat][tr_k], y[tr_k], emb[feat][te_k], seed)
        wrong[feat] = (pred != y[te_k]).astype(float)
        res["features"][feat] = {"C": c, **{
            k: {"accuracy": float(accuracy_score(y[te_k][m], pred[m])),
                "balanced_accuracy": float(balanced_accuracy_score(y[te_k][m], pred[m]))} for k, m in sub_k.items()}}
    res["paired_error_rate_difference"] = paired_bootstrap(wrong, seed)
    out["targets"]["crystal_system"] = res
    log("crystal_system           acc " + "  ".join(f"{k} {res['features'][k]['all']['accuracy']:.3f}" for k in FEATURES)
        + f"  (majority {res['majority_accuracy']['all']:.3f})")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def run_chgnet_reconstruction(encoders, info, work: Path, n_sample: int, seed: int, matbench_formulas: set[str],
                              corpus: Path | None, embeddings: Path) -> dict:
    """Formula -> the CHGNet embedding of the formula's (only) MP structure: how much of the teacher's signal a
    frozen encoder reproduces, on the structure sample's held-out formulas (same sample and split as section b)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    df, _ = structure_sample(work, n_sample, seed, matbench_formulas)
    in_corpus, _ = corpus_membership(df, corpus)
    shards = sorted((embeddings / "data" / "chgnet").glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no CHGNet shards under {embeddings / 'data' / 'chgnet'} (build_data.sh mp_chgnet)")
    table = pd.concat([pd.read_parquet(f, columns=["id", "embedding"]) for f in shards]).set_index("id")["embedding"]
    found = df["material_id"].isin(table.index).to_numpy()
    y_all = np.full((len(df), len(table.iloc[0])), np.nan)
    y_all[found] = np.stack(table.loc[df["material_id"][found]].to_numpy())
    emb, _, _ = cached_embeddings(work, f"mp_sample_n{n_sample}_seed{seed}", df["formula"].tolist(), encoders, info)
    is_test = held_out_rows(len(df), seed)  # the split of section b, then rows without an embedding dropped
    tr, te = np.flatnonzero(~is_test & found), np.flatnonzero(is_test & found)
    mean, std = y_all[tr].mean(0), y_all[tr].std(0) + 1e-8
    y = (y_all - mean) / std  # z-scored with the train rows' statistics, as the alignment targets are
    subsets = {"all": np.ones(len(te), dtype=bool), "in_corpus": in_corpus[te], "not_in_corpus": ~in_corpus[te]}
    out = {"embeddings": str(embeddings), "dims": int(y.shape[1]), "train": len(tr), "test": len(te),
           "missing_embedding": int((~found).sum()),
           "test_not_in_corpus": int(subsets["not_in_corpus"].sum()),
           "probe": "StandardScaler + RidgeCV(alphas=logspace(-3,5,17), one alpha for all 64 outputs, efficient "
                    "leave-one-out) on the train rows; R2 averaged uniformly over the z-scored dimensions; cosine per row",
           "features": {}}
    loss = {}
    for feat in FEATURES:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(emb[feat][tr], y[tr])
        pred = model.predict(emb[feat][te])
        cos = np.sum(pred * y[te], 1) / (np.linalg.norm(pred, axis=1) * np.linalg.norm(y[te], axis=1) + 1e-12)
        loss[feat] = 1.0 - cos
        res = {"alpha": float(model[-1].alpha_)}
        for k, m in subsets.items():
            resid = ((pred[m] - y[te][m]) ** 2).sum(0)
            total = ((y[te][m] - y[te][m].mean(0)) ** 2).sum(0)
            res[k] = {"r2": float(np.mean(1.0 - resid / total)), "cosine": float(cos[m].mean())}
        out["features"][feat] = res
    out["paired_one_minus_cosine_difference"] = paired_bootstrap(loss, seed)
    log("chgnet embedding R2 (not in corpus) " + "  ".join(
        f"{k} {out['features'][k]['all']['r2']:.3f} ({out['features'][k]['not_in_corpus']['r2']:.3f})" for k in FEATURES))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    global _LOG
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlm", required=True, help="MLM-only backbone folder (or a folder whose newest subfolder is one)")
    ap.add_argument("--imkt", default="crossmat-imkt-mp-small", help="imKT backbone (shipped name or folder)")
    ap.add_argument("--output-dir", default="benchmarks/imkt")
    ap.add_argument("--work-dir", default="benchmarks/_work/probes", help="embedding / descriptor cache (git-ignored)")
    ap.add_argument("--corpus", default="benchmarks/_work/imkt/corpus_mp/data/train.parquet",
                    help="the MLM corpus parquet, to check which sampled formulas the backbones saw (optional)")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--n-structures", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-structures", action="store_true")
    ap.add_argument("--chgnet-embeddings", default="benchmarks/_work/imkt/embeddings/mp_structures",
                    help="CHGNet MP embeddings folder (build_data.sh mp_chgnet) for section c; skipped if absent")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
    warnings.filterwarnings("ignore", message="An ill-conditioned matrix detected")  # ridge at tiny alphas
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir)
    _LOG = open(out_dir / "probes.log", "w")  # noqa: SIM115
    t_start = time.perf_counter()
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    log(f"command: {command}")
    import sklearn

    encoders, info = load_encoders(args.imkt, args.mlm)
    for k in ("imkt", "mlm", "scratch"):
        log(f"backbone {k}: {info[k]}")
    from crossmat.dataset_builders.corpus import exclusion_formulas

    matbench_formulas = set()
    for task in TASKS:
        matbench_formulas.update(exclusion_formulas(f"matbench={task}"))
    result = {"command": command, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "environment": {"python": platform.python_version(), "torch": torch.__version__,
                              "sklearn": sklearn.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.machine()},
              "backbones": info,
              "protocol": {"features": {"scratch": "pooled embedding, random init (seed 0), frozen mat2vec installed",
                                        "mlm": "pooled embedding, MLM-only backbone",
                                        "imkt": "pooled embedding, MLM + InfoNCE onto CHGNet",
                                        "mat2vec": "fraction-weighted mean of the frozen standardised mat2vec table "
                                                   "(no encoder), 200-d"},
                           "regression": "StandardScaler + RidgeCV(alphas=logspace(-3,5,17)), alpha by 5-fold "
                                         "GroupKFold (by formula) MAE on the training rows only",
                           "classification": "StandardScaler + LogisticRegressionCV(Cs=logspace(-3,2,6), "
                                             "class_weight=balanced), C by stratified 5-fold balanced accuracy on the "
                                             "training rows only; balanced accuracy of hard labels (ROC-AUC also kept)",
                           "matbench_formulas_in_10_tasks": len(matbench_formulas)}}
    log("== a. MatBench probes (official folds) ==")
    result["matbench"] = run_matbench(encoders, info, work, args.tasks)
    if not args.skip_structures:
        log(f"== b. formula -> structure descriptors ({args.n_structures} MP structures, seed {args.seed}) ==")
        result["structures"] = run_structures(encoders, info, work, args.n_structures, args.seed, matbench_formulas,
                                              Path(args.corpus) if args.corpus else None)
        chgnet = Path(args.chgnet_embeddings)
        if (chgnet / "data" / "chgnet").is_dir():
            log("== c. formula -> CHGNet embedding of the structure (same sample and split) ==")
            result["chgnet_reconstruction"] = run_chgnet_reconstruction(
                encoders, info, work, args.n_structures, args.seed, matbench_formulas,
                Path(args.corpus) if args.corpus else None, chgnet)
        else:
            result["chgnet_reconstruction"] = f"skipped: no CHGNet MP embeddings at {chgnet} (build_data.sh mp_chgnet)"
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    (out_dir / "probes.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {out_dir / 'probes.json'} (total {result['total_seconds']:.0f} s)")
    _LOG.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
