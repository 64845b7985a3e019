"""CIF training corpus for the CIF language model.

Structures come from CSV / CSV.gz / Parquet tables with a CIF column (perov_5's ``train_structures.csv.gz``,
the Materials Project ``structures.csv.gz``, your own). Every structure is rendered in each augmentation form
(:data:`~dataset_builders.cif_text.CIF_FORMS`) and rounding (``decimals``), tokenized and length-checked. Rows that
do not parse, cannot be symmetrized, hold tokens outside the vocabulary or exceed the context are rejected with a
reason, never dropped silently. The work is done in shards of ``shard_size`` rows, each saved as Parquet as soon
as it is finished, so an interrupted build resumes where it stopped; ``workers`` processes render in parallel.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .cif_text import CIF_FORMS, encode_cif, render_cif
from .corpus import read_table

__all__ = ["CorpusError", "read_structure_table", "build_cif_corpus"]

COLUMNS = ["source", "row", "id", "formula", "form", "decimals", "text", "input_ids", "n_tokens", "reason"]
SCHEMA = 2  # cache key: bump when the shard columns change


class CorpusError(ValueError):
    """A corpus source that cannot be read (missing file, missing column); the message names it."""


def read_structure_table(path: str | Path, cif_column: str = "cif") -> pd.DataFrame:
    """The table at ``path`` (``.csv``, ``.csv.gz``, ``.parquet``) with its ``cif_column`` checked."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"structure table {str(path)!r} does not exist")
    if not path.name.lower().endswith((".parquet", ".csv", ".csv.gz")):
        raise CorpusError(f"structure table {str(path)!r}: use .csv, .csv.gz or .parquet")
    frame = read_table(path)
    if cif_column not in frame.columns:
        raise CorpusError(f"structure table {str(path)!r} has no {cif_column!r} column (columns: {list(frame.columns)})")
    return frame


def _render_rows(job: tuple[list[str], Sequence[str], Sequence[int], float]) -> list[tuple[str, str | None, str | None]]:
    """Worker: (reduced formula, text, None) or (formula or "", None, reason) for every (CIF, form, decimals), in order."""
    from pymatgen.core import Structure

    cifs, forms, decimals, symprec = job
    out: list[tuple[str | None, str | None]] = []
    for cif in cifs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Structure.from_str(str(cif), fmt="cif")
        except Exception as err:  # noqa: BLE001 - a broken CIF is a rejected row with its reason
            reason = f"CIF does not parse: {type(err).__name__}: {str(err)[:120]}"
            out.extend(("", None, reason) for _ in forms for _ in decimals)
            continue
        formula = structure.composition.reduced_formula
        if not structure.is_ordered:
            out.extend((formula, None, "disordered sites (partial occupancy)") for _ in forms for _ in decimals)
            continue
        for form in forms:
            for dec in decimals:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        out.append((formula, render_cif(structure, form, dec, symprec), None))
                except Exception as err:  # noqa: BLE001 - e.g. symmetry analysis failed
                    out.append((formula, None, f"{form} form failed: {type(err).__name__}: {str(err)[:120]}"))
    return out


def _fingerprint(path: Path, settings: dict[str, Any]) -> str:
    st = path.stat()
    key = json.dumps({"path": str(path.resolve()), "size": st.st_size, "mtime": int(st.st_mtime), **settings}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_cif_corpus(
    sources: Sequence[str | Path], tokenizer: Any, cache_dir: str | Path, *, forms: Sequence[str] = CIF_FORMS,
    decimals: Sequence[int] = (4,), max_tokens: int = 512, cif_column: str = "cif", id_column: str | None = None,
    symprec: float = 0.1, shard_size: int = 2000, workers: int | None = None, progress: bool = True,
) -> pd.DataFrame:
    """Render, tokenize and length-check every structure of ``sources`` in every form; returns one row per
    (structure, form, decimals) with ``text``, ``input_ids`` and ``n_tokens`` for kept rows and ``reason`` for
    rejected ones. ``formula`` is the reduced formula of the parsed structure (empty when the CIF does not parse).

    Shards are cached under ``cache_dir`` keyed by the source file and the settings, so a rerun (or resume)
    renders nothing twice. ``workers`` defaults to the CPU count (at most 8)."""
    from tqdm.auto import tqdm

    bad = [f for f in forms if f not in CIF_FORMS]
    if bad or not forms:
        raise CorpusError(f"CIF forms {list(forms)}: choose from {list(CIF_FORMS)}")
    if not decimals or any(not isinstance(d, int) or not 1 <= d <= 8 for d in decimals):
        raise CorpusError(f"CIF decimals {list(decimals)}: integers from 1 to 8")
    workers = workers or min(os.cpu_count() or 1, 8)
    settings = {"schema": SCHEMA, "forms": list(forms), "decimals": list(decimals), "symprec": symprec, "max_tokens": max_tokens,
                "cif_column": cif_column, "vocab": len(tokenizer)}
    unk = tokenizer.unk_token_id
    frames = []
    for source in sources:
        path = Path(source)
        table = read_structure_table(path, cif_column)
        ids = table[id_column] if id_column and id_column in table else pd.Series(np.arange(len(table)))
        folder = Path(cache_dir) / f"{path.name.split('.')[0]}-{_fingerprint(path, settings)}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps({"source": str(path), **settings}, indent=1))
        starts = list(range(0, len(table), shard_size))
        todo = [k for k, _ in enumerate(starts) if not (folder / f"shard_{k:05d}.parquet").is_file()]
        bar = tqdm(total=len(table), desc=f"rendering {path.name}", unit="structure", disable=not progress,
                   initial=sum(min(shard_size, len(table) - a) for k, a in enumerate(starts) if k not in todo))
        per_row = len(forms) * len(decimals)
        for k in todo:
            lo, hi = starts[k], min(starts[k] + shard_size, len(table))
            cifs = table[cif_column].iloc[lo:hi].tolist()
            bounds = np.linspace(0, len(cifs), min(workers, len(cifs)) + 1).astype(int)
            jobs = [(cifs[a:b], list(forms), list(decimals), symprec) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            if len(jobs) > 1:
                with ProcessPoolExecutor(len(jobs)) as pool:
                    parts = list(pool.map(_render_rows, jobs))
            else:
                parts = [_render_rows(job) for job in jobs]
            results = [r for part in parts for r in part]  # contiguous chunks: row order kept
            combos = [(f, d) for f in forms for d in decimals]
            texts = [t for _, t, _ in results]
            reasons = [r for _, _, r in results]
            ids_out: list[list[int] | None] = [None] * len(texts)
            lengths = np.zeros(len(texts), dtype=np.int64)
            for i, text in enumerate(texts):
                if text is None:
                    continue
                seq = encode_cif(tokenizer, text)
                lengths[i] = len(seq)
                if unk in seq:
                    reasons[i] = "contains tokens outside the CIF vocabulary"
                elif len(seq) > max_tokens:
                    reasons[i] = f"{len(seq)} tokens > context {max_tokens}"
                else:
                    ids_out[i] = seq
            shard = pd.DataFrame({
                "source": path.name, "row": np.repeat(np.arange(lo, hi), per_row),
                "id": np.repeat(ids.iloc[lo:hi].astype(str).to_numpy(), per_row),
                "formula": [f for f, _, _ in results],
                "form": [c[0] for c in combos] * (hi - lo), "decimals": [c[1] for c in combos] * (hi - lo),
                "text": [t if r is None else None for t, r in zip(texts, reasons, strict=True)], "input_ids": ids_out,
                "n_tokens": lengths, "reason": reasons,
            }, columns=COLUMNS)
            tmp = folder / f"shard_{k:05d}.parquet.tmp"
            shard.to_parquet(tmp, index=False)
            tmp.replace(folder / f"shard_{k:05d}.parquet")  # atomic: a shard file is always complete
            bar.update(hi - lo)
        bar.close()
        frames.append(pd.concat([pd.read_parquet(folder / f"shard_{k:05d}.parquet") for k in range(len(starts))],
                                ignore_index=True) if starts else pd.DataFrame(columns=COLUMNS))
    return pd.concat(frames, ignore_index=True)
