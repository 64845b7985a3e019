"""imKT alignment sets: one structure-embedding target per formula, with the leakage guard of the corpora.

Input: one or more embedding folders written by ``python -m crossmat.dataset_builders embeddings`` (for example
``mp_structures`` and ``perov_5``) and one or more encoders (``chgnet``, ``matgl-tensornet``; several are
concatenated in the given order, per structure). Output folder::

    <out>/data/train.parquet          formula, embedding, n_polymorphs, structure_id, source
    <out>/excluded_formulas.txt       formulas removed by --exclude
    <out>/alignment_metadata.json, README.md

Polymorphs (several structures with one reduced formula) are resolved by ``polymorphs``:

* ``lowest_energy`` (default): the structure with the lowest energy per atom according to the *first*
  encoder (the ground-state polymorph, which is what a composition most often refers to);
* ``mean``: the mean embedding over the formula's structures (per encoder, then concatenated).

An encoder without energies (``descriptors``: NaN) cannot rank polymorphs: ``lowest_energy`` then falls back
to the first structure in source order for every formula with several structures, says so, and records the
count (``lowest_energy_fallback_formulas``); use ``mean`` with such an encoder.

The metadata records how much the choice matters: the mean cosine similarity (on z-scored embeddings)
between polymorphs of one formula, against random pairs of different formulas.

Leakage guard (``exclude``): the same specs as the corpus builder (``matbench=<task>[@fold]``,
``llm4mat=<folder>[@split]``, ``file=<path>``). Alignment uses no property labels, but the MLM loss of the
imKT stage runs on these formulas too, so every formula of a benchmark split that will be evaluated is
removed. ``max_formulas`` takes a seeded random subset; subsets of one seed are nested (the first N of one
fixed permutation), which is what a scaling curve needs.

Teacher (``teacher``): ``embedding`` (default) targets the structure encoder's embedding; ``energy`` targets
what the structure model *predicts* for the chosen (lowest-energy) polymorph instead: its energy per atom and
that energy relative to elemental references fitted by least squares over the kept formulas (a formation-energy
proxy), 2 values per formula, for an MSE alignment loss on z-scored targets.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crossmat.tokenization.formula_grammar import parse_amounts

from .common import BadInputError, write_card, write_json, write_parquet
from .corpus import exclusion_formulas
from .tables import read_table

__all__ = ["POLYMORPH_RULES", "TEACHERS", "load_embedding_rows", "build_alignment_set", "polymorph_statistics",
           "energy_targets"]

POLYMORPH_RULES = ("lowest_energy", "mean")
TEACHERS = ("embedding", "energy")


def load_embedding_rows(folder: str | Path, encoder: str) -> pd.DataFrame:
    """Every structure row of one encoder in an embeddings folder (``id, formula, embedding, energy_per_atom``)."""
    shard_dir = Path(folder) / "data" / encoder
    shards = sorted(shard_dir.glob("shard-*.parquet"))
    if not shards:
        raise FileNotFoundError(
            f"{shard_dir}: no embedding shards; build them with "
            f"`python -m crossmat.dataset_builders embeddings --source ... --encoder {encoder} --output-dir {folder}`"
        )
    n_expected = int(shards[0].stem.rsplit("-of-", 1)[1])
    if len(shards) != n_expected:
        raise BadInputError(f"{shard_dir}: {len(shards)} of {n_expected} shards exist; rerun the embeddings build to finish")
    frame = pd.concat([read_table(p).frame for p in shards], ignore_index=True)
    return frame[["id", "formula", "embedding", "energy_per_atom", "source"]]


def _joined(folders: list[str | Path], encoders: list[str]) -> tuple[pd.DataFrame, np.ndarray, list[int]]:
    """Structures present for every encoder: (rows, concatenated embedding matrix, per-encoder dims)."""
    frames = []
    for folder in folders:
        per_enc = [load_embedding_rows(folder, enc) for enc in encoders]
        base = per_enc[0].drop(columns="embedding")
        mats = [np.stack(per_enc[0]["embedding"].to_numpy()).astype(np.float32)]
        for enc, other in zip(encoders[1:], per_enc[1:], strict=True):
            pos = pd.Index(other["id"]).get_indexer(base["id"])
            if (pos < 0).any():
                print(f"[crossmat] {folder}: {(pos < 0).sum()} structure(s) have no {enc} embedding and are left out")
            keep = pos >= 0
            base, mats = base.loc[keep].reset_index(drop=True), [m[keep] for m in mats]
            mats.append(np.stack(other["embedding"].to_numpy()[pos[keep]]).astype(np.float32))
        frames.append((base, np.concatenate(mats, axis=1), [m.shape[1] for m in mats]))
    dims = frames[0][2]
    if any(f[2] != dims for f in frames):
        raise BadInputError(f"embedding sizes differ between folders: {[f[2] for f in frames]}")
    rows = pd.concat([f[0] for f in frames], ignore_index=True)
    return rows, np.concatenate([f[1] for f in frames]), dims


def polymorph_statistics(formulas: np.ndarray, emb: np.ndarray, seed: int = 0, max_pairs: int = 20000) -> dict[str, Any]:
    """How different polymorphs of one formula look to the encoder, against different formulas."""
    z = (emb - emb.mean(0)) / np.where(emb.std(0) > 1e-8, emb.std(0), 1.0)
    z /= np.linalg.norm(z, axis=1, keepdims=True).clip(min=1e-12)
    codes = np.unique(formulas, return_inverse=True)[1]
    counts = np.bincount(codes)
    order = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    multi = np.flatnonzero(counts > 1)
    rng = np.random.default_rng(seed)
    if len(multi):
        pick = rng.choice(multi, size=min(max_pairs, len(multi)), replace=False)
        a = order[starts[pick]]
        b = order[starts[pick] + 1 + (rng.random(len(pick)) * (counts[pick] - 1)).astype(int)]
        same = float(np.mean(np.sum(z[a] * z[b], axis=1)))
    else:
        same = float("nan")
    i, j = rng.integers(0, len(z), size=(2, max_pairs))
    diff = codes[i] != codes[j]
    other = float(np.mean(np.sum(z[i[diff]] * z[j[diff]], axis=1)))
    return {
        "structures": int(len(formulas)),
        "formulas": int(len(counts)),
        "formulas_with_polymorphs": int(len(multi)),
        "structures_in_polymorph_groups": int(counts[multi].sum()),
        "mean_cosine_same_formula": round(same, 4),
        "mean_cosine_different_formulas": round(other, 4),
    }


def energy_targets(formulas: np.ndarray, energy: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """``(n, 2)`` targets ``[energy per atom, energy - fitted elemental references]`` and the fit's summary.

    The references are one energy per element, fitted by least squares of the energy per atom on the element
    fractions of the given formulas; the residual is what the composition's elements alone do not explain
    (a formation-energy proxy, the part that depends on the crystal the structure model saw)."""
    amounts = [parse_amounts(f) for f in formulas]
    elements = sorted({el for a in amounts for el in a})
    column = {el: i for i, el in enumerate(elements)}
    rows = np.repeat(np.arange(len(amounts)), [len(a) for a in amounts])
    cols = np.fromiter((column[el] for a in amounts for el in a), dtype=np.int64, count=len(rows))
    vals = np.fromiter((v for a in amounts for v in a.values()), dtype=np.float64, count=len(rows))
    fractions = np.zeros((len(amounts), len(elements)))
    np.add.at(fractions, (rows, cols), vals)
    fractions /= fractions.sum(1, keepdims=True)
    refs = np.linalg.lstsq(fractions, energy, rcond=None)[0]
    residual = energy - fractions @ refs
    summary = {
        "elements": len(elements),
        "energy_std_ev_per_atom": round(float(energy.std()), 4),
        "residual_std_ev_per_atom": round(float(residual.std()), 4),
        "references_r2": round(float(1.0 - residual.var() / energy.var()), 4),
    }
    return np.stack([energy, residual], axis=1).astype(np.float32), summary


def build_alignment_set(
    folders: list[str | Path],
    encoders: list[str],
    out: str | Path,
    polymorphs: str = "lowest_energy",
    exclude: list[str] | None = None,
    max_formulas: int | None = None,
    seed: int = 0,
    max_targets: int | None = None,
    teacher: str = "embedding",
) -> dict[str, Any]:
    """Build an alignment-set folder (one row per formula); returns its metadata.

    ``max_formulas`` keeps a seeded subset of the formulas; ``max_targets`` keeps every formula but the
    structure embedding of a seeded subset only (the others get a null embedding: MLM-only rows under
    ``data.missing_embeddings: mlm_only``), so an alignment-set scaling curve keeps the MLM corpus fixed.
    Both subsets are nested across sizes for one seed. ``teacher="energy"`` replaces each embedding by the
    structure model's energy targets (:func:`energy_targets`; lowest-energy polymorph only)."""
    if polymorphs not in POLYMORPH_RULES:
        raise ValueError(f"polymorphs must be one of {POLYMORPH_RULES}, got {polymorphs!r}")
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
    if teacher == "energy" and polymorphs != "lowest_energy":
        raise ValueError("teacher='energy' takes the lowest-energy polymorph's energy; use polymorphs='lowest_energy'")
    if not folders or not encoders:
        raise ValueError("need at least one embeddings folder and one encoder")
    start = time.perf_counter()
    out = Path(out)
    rows, emb, dims = _joined(list(folders), list(encoders))
    formulas = rows["formula"].to_numpy(dtype=object)
    stats = polymorph_statistics(formulas, emb, seed)
    uniq, inverse, counts = np.unique(formulas, return_inverse=True, return_counts=True)
    fallback = 0
    if polymorphs == "lowest_energy":
        raw = pd.to_numeric(rows["energy_per_atom"], errors="coerce").to_numpy(dtype=float)
        finite = np.bincount(inverse, weights=np.isfinite(raw), minlength=len(uniq))
        fallback = int(np.sum((counts > 1) & (finite == 0)))
        if fallback:
            print(f"[crossmat] {fallback} formula(s) with several structures have no energies ({encoders[0]}): "
                  "their first structure in source order is used; --polymorphs mean averages them instead")
        energy = np.where(np.isfinite(raw), raw, np.inf)
        order = np.lexsort((np.arange(len(rows)), energy, inverse))  # by formula, then energy, then position
        first = order[np.r_[True, inverse[order][1:] != inverse[order][:-1]]]
        table_emb = emb[first]
        ids = rows["id"].to_numpy(dtype=object)[first]
        src = rows["source"].to_numpy(dtype=object)[first]
        form = formulas[first]
        chosen_energy = raw[first]
    else:
        sums = np.zeros((len(uniq), emb.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, emb)
        table_emb = (sums / counts[:, None]).astype(np.float32)
        first = np.full(len(uniq), len(rows))
        np.minimum.at(first, inverse, np.arange(len(rows)))
        ids = np.array([f"mean of {c}" if c > 1 else i for c, i in
                        zip(counts, rows["id"].to_numpy(dtype=object)[first], strict=True)], dtype=object)  # fmt: skip
        src = rows["source"].to_numpy(dtype=object)[first]
        form = uniq
    n_poly = counts[np.searchsorted(uniq, form)]
    table = pd.DataFrame({"formula": form, "embedding": list(table_emb), "n_polymorphs": n_poly,
                          "structure_id": ids, "source": src})  # fmt: skip
    exclusions, excluded_all = [], set()
    for spec in exclude or []:
        banned = exclusion_formulas(spec)
        hit = table["formula"].isin(banned).to_numpy()
        exclusions.append({"spec": spec, "test_formulas": len(banned), "removed": int(hit.sum())})
        excluded_all.update(table["formula"][hit])
        table = table.loc[~hit].reset_index(drop=True)
    n_after_exclusion = len(table)
    energy_fit = None
    if teacher == "energy":
        energy = chosen_energy[pd.Index(form).get_indexer(table["formula"])]
        missing = ~np.isfinite(energy)
        if missing.any():
            raise BadInputError(f"{int(missing.sum())} formula(s), e.g. {table['formula'][missing].iloc[0]!r}, have no "
                                f"energy from {encoders[0]}: teacher='energy' needs an encoder with energies")
        targets, energy_fit = energy_targets(table["formula"].to_numpy(dtype=object), energy)
        table["embedding"] = list(targets)
    if max_formulas is not None and max_formulas < len(table):
        perm = np.random.default_rng(seed).permutation(len(table))
        table = table.iloc[np.sort(perm[:max_formulas])].reset_index(drop=True)
    if max_targets is not None and max_targets < len(table):
        perm = np.random.default_rng(seed).permutation(len(table))
        table["embedding"] = table["embedding"].astype(object)
        table.loc[perm[max_targets:], "embedding"] = None
    write_parquet(table, out / "data" / "train.parquet")
    (out / "excluded_formulas.txt").write_text("".join(f"{f}\n" for f in sorted(excluded_all)))
    meta = {
        "embedding_folders": [str(f) for f in folders],
        "encoders": list(encoders),
        "embedding_dims": dims if teacher == "embedding" else [2],
        "teacher": teacher,
        "energy_fit": energy_fit,
        "polymorphs": polymorphs,
        "polymorph_statistics": stats,
        "lowest_energy_fallback_formulas": fallback,
        "exclusions": exclusions,
        "formulas_after_exclusion": int(n_after_exclusion),
        "max_formulas": max_formulas,
        "max_targets": max_targets,
        "seed": seed,
        "rows": int(len(table)),
        "rows_with_embedding": int(table["embedding"].notna().sum()),
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    write_json(meta, out / "alignment_metadata.json")
    write_card(out, {"default": {"train": "data/train.parquet"}}, pretty_name="CrossMat imKT alignment set",
               body=_card_body(meta), task_categories=("feature-extraction",), default_config="default")  # fmt: skip
    return meta


def _teacher_line(meta: dict[str, Any]) -> str:
    fit = meta.get("energy_fit")
    if not fit:
        return ""
    return (f"; teacher `energy`: instead of the embedding, each row holds the encoder's predicted energy per atom of "
            f"the lowest-energy polymorph and that energy minus least-squares elemental references over "
            f"{fit['elements']} elements (references explain R² {fit['references_r2']} of the energy; residual std "
            f"{fit['residual_std_ev_per_atom']} eV/atom)")


def _card_body(meta: dict[str, Any]) -> str:
    excl = "\n".join(f"- `{e['spec']}`: {e['test_formulas']} formulas, {e['removed']} removed" for e in meta["exclusions"])
    st = meta["polymorph_statistics"]
    return f"""
# CrossMat imKT alignment set

Targets for the imKT alignment loss: one structure embedding per reduced formula, built by
`python -m crossmat.dataset_builders alignment` from {", ".join(f"`{f}`" for f in meta["embedding_folders"])} with
encoder(s) {", ".join(f"`{e}`" for e in meta["encoders"])} (sizes {meta["embedding_dims"]}, concatenated per
structure){_teacher_line(meta)}. {meta["rows"]} rows, {meta["rows_with_embedding"]} with an embedding (the others are formulas
without a structure target: train with `data.missing_embeddings: mlm_only`). No property labels.

## Polymorphs
Rule: `{meta["polymorphs"]}`. {st["formulas_with_polymorphs"]} of {st["formulas"]} formulas have several structures
({st["structures_in_polymorph_groups"]} of {st["structures"]} structures). Mean cosine similarity of z-scored
embeddings: {st["mean_cosine_same_formula"]} between polymorphs of one formula, {st["mean_cosine_different_formulas"]}
between different formulas.

## Leakage guard
Removed (every formula of these benchmark splits; list in `excluded_formulas.txt`):
{excl or "- none: do not evaluate on a benchmark whose formulas may be in here."}
{meta["formulas_after_exclusion"]} formulas remained{f"; a seeded subset of {meta['max_formulas']} was kept" if meta["max_formulas"] else ""}.

## Provenance
Structures as described in each embedding folder's card (Materials Project structures; perov_5 from
Castelli et al. 2012). The structure encoders were trained on DFT data of their own (CHGNet: MPtrj, i.e.
Materials Project relaxation trajectories; TensorNet-MatPES: MatPES), so the embeddings carry what those
models learned from Materials Project energies, forces and stresses.
"""

