"""Precomputed crystal-structure embeddings (the targets of imKT's alignment loss) as a dataset.

Encoders:

* ``chgnet`` — CHGNet crystal features (64-d, weights in the ``chgnet`` wheel, ``CHGNet.load()``,
  batched ``predict_structure(..., return_crystal_feas=True)``); also gives energy per atom.
* ``matgl-tensornet`` — matgl's TensorNet universal potential: mean over atoms of the per-atom
  ``readout`` features; also gives energy per atom. Loaded from a folder (``--matgl-model``, default
  ``$CROSSMAT_MODELS_DIR/matgl/TensorNet-MatPES-PBE-v2025.1-PES``, i.e. ``../shared/models`` here) or by
  matgl registry name (downloads; fails with a clear message offline).
* ``descriptors`` — no model: 29 pymatgen/spglib structure descriptors (``DescriptorEncoder``); energy NaN.

Sources: ``perov_5`` (``$CROSSMAT_DATA_DIR/perov_5/{train_structures,val,test}.csv.gz``, 18,928 structures),
``mp_structures`` (``$CROSSMAT_DATA_DIR/mp_structures/structures.csv.gz``, 54,629 Materials Project
structures, label-free), ``aflow_prototypes`` (the 288
AFLOW prototype structures bundled with pymatgen: pip-shipped data only), or a CSV/parquet file with a
``cif``/``cif_structure``/``structure`` column (CIF text or a pymatgen dict).

Output folder (one config per encoder; shards resume, several processes split the shard range)::

    <out>/data/<encoder>/shard-00000-of-00012.parquet   id, formula, embedding, encoder, source, generated,
                                                        energy_per_atom
    <out>/per_formula/<encoder>.parquet                 one row per formula: lowest energy_per_atom
                                                        (ties / no energy: first in source order)
    <out>/embeddings_metadata.json, README.md, rejected_rows.csv (only with --on-bad report)
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from .common import BadInputError, Rejects, canonicalize_formulas, write_card, write_json, write_parquet
from .paths import data_dir, models_dir
from .structure_encoders import (
    DEFAULT_MATGL_MODEL,
    ENCODERS,
    ChgnetEncoder,
    MatglEncoder,
    embed_structures,
    get_encoder,
)
from .tables import read_table

__all__ = [
    "ENCODERS",
    "DEFAULT_MATGL_MODEL",
    "ChgnetEncoder",
    "MatglEncoder",
    "get_encoder",
    "embed_structures",
    "load_structure_table",
    "parse_structure",
    "build_embeddings",
    "per_formula_view",
]

_STRUCT_COLUMNS = ("cif", "cif_structure", "structure")
_ID_COLUMNS = ("id", "material_id", "mp_id", "jid")


def parse_structure(obj: Any) -> Structure:
    """A ``Structure`` from a Structure, a pymatgen dict (or its JSON / Python repr), or CIF text."""
    if isinstance(obj, Structure):
        structure = obj
    elif isinstance(obj, dict):
        structure = Structure.from_dict(obj)
    elif isinstance(obj, str) and obj.lstrip().startswith("{"):
        text = obj.strip()
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            d = ast.literal_eval(text)
        structure = Structure.from_dict(d)
    elif isinstance(obj, str) and obj.strip():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(obj, fmt="cif")
    else:
        raise ValueError(f"no structure (got {type(obj).__name__} {str(obj)[:40]!r})")
    if len(structure) == 0:
        raise ValueError("structure has no sites")
    if not structure.is_ordered:
        raise ValueError("disordered structure (partial occupancies) is not supported by the encoders")
    return structure


def load_structure_table(source: str, limit: int | None = None) -> pd.DataFrame:
    """Rows ``id, structure (raw), source, file, row`` of a structure source (nothing parsed yet)."""
    if source == "perov_5":
        parts = []
        for split, name in (("train", "train_structures"), ("val", "val"), ("test", "test")):
            path = data_dir() / "perov_5" / f"{name}.csv.gz"
            if split == "train" and not path.is_file():  # older copies ship only val/test
                continue
            frame = read_table(path).frame.rename(columns={"id": "material_id"})[["material_id", "cif"]]
            parts.append(pd.DataFrame({"id": "perov5-" + frame["material_id"].astype(str), "structure": frame["cif"],
                                       "source": f"perov_5/{split}", "file": str(path), "row": np.arange(len(frame))}))  # fmt: skip
        table = pd.concat(parts, ignore_index=True)
    elif source == "mp_structures":
        path = data_dir() / "mp_structures" / "structures.csv.gz"
        frame = read_table(path, columns=["material_id", "source", "cif"]).frame
        table = pd.DataFrame({"id": frame["material_id"].astype(str), "structure": frame["cif"],
                              "source": "mp_structures/" + frame["source"].astype(str), "file": str(path),
                              "row": np.arange(len(frame))})  # fmt: skip
    elif source == "aflow_prototypes":
        import pymatgen.analysis.prototypes as protos

        path = Path(protos.__file__).parent / "aflow_prototypes.json.gz"
        with gzip.open(path, "rt") as f:
            entries = json.load(f)
        table = pd.DataFrame({
            "id": [e["tags"]["aflow"] for e in entries],
            "structure": [{k: v for k, v in e["snl"].items() if k not in ("about", "@module", "@class")} for e in entries],
            "source": "aflow_prototypes", "file": str(path), "row": np.arange(len(entries)),
        })  # fmt: skip
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"structure source {source!r} is neither perov_5, mp_structures, aflow_prototypes nor a file"
            )
        frame = read_table(path).frame
        col = next((c for c in _STRUCT_COLUMNS if c in frame.columns), None)
        if col is None:
            raise BadInputError(f"{path}: missing structure column (one of {list(_STRUCT_COLUMNS)})")
        icol = next((c for c in _ID_COLUMNS if c in frame.columns), None)
        ids = frame[icol].astype(str) if icol else pd.Series(np.arange(len(frame)).astype(str))
        table = pd.DataFrame({"id": ids, "structure": frame[col], "source": path.name, "file": str(path),
                              "row": np.arange(len(frame))})  # fmt: skip
    if limit is not None:
        table = table.iloc[:limit]
    return table.reset_index(drop=True)


def _process_info() -> tuple[int, int, Any]:
    """(process index, number of processes, PartialState or None); works with and without ``accelerate launch``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=True)
        return state.process_index, state.num_processes, state
    return 0, 1, None


def _reject(table: pd.DataFrame, reasons: dict[int, str], rejects: Rejects, stage: str) -> None:
    if reasons:
        rows = sorted(reasons)
        rejects.add(table["file"].iloc[rows[0]], table["row"].iloc[rows].tolist(), table["id"].iloc[rows].tolist(),
                    [reasons[r] for r in rows], stage=stage)  # fmt: skip


def _embed_shard(
    table: pd.DataFrame, encoder: ChgnetEncoder | MatglEncoder, batch_size: int, rejects: Rejects, bar: tqdm
) -> pd.DataFrame:
    """Parse, validate and embed one shard; rejected rows go to ``rejects``."""
    structures, keep, reasons = [], [], {}
    for i, raw in enumerate(table["structure"]):
        try:
            structure = parse_structure(raw)
        except Exception as exc:
            reasons[i] = f"broken structure: {type(exc).__name__}: {str(exc)[:200]}"
            continue
        why = encoder.unsupported(structure)
        if why:
            reasons[i] = why
            continue
        structures.append(structure)
        keep.append(i)
    canon, bad_f = canonicalize_formulas([s.composition.reduced_formula for s in structures])
    for j, why in bad_f.items():
        reasons[keep[j]] = why
    ok = [j for j in range(len(keep)) if j not in bad_f]
    structures, keep, canon = [structures[j] for j in ok], [keep[j] for j in ok], canon[ok]
    _reject(table, reasons, rejects, "parse")  # raises here (before any embedding) unless on_bad='report'
    n_parse_rejected = len(reasons)
    reasons = {}
    embs, energies, good = [], [], []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        try:
            e, en = encoder(chunk, batch_size=batch_size)
            embs.append(e)
            energies.append(en)
            good.extend(range(start, start + len(chunk)))
        except Exception:  # find the structure(s) the encoder cannot handle
            for j, s in enumerate(chunk):
                try:
                    e, en = encoder([s], batch_size=1)
                    embs.append(e)
                    energies.append(en)
                    good.append(start + j)
                except Exception as exc:
                    reasons[keep[start + j]] = f"encoder failed: {type(exc).__name__}: {str(exc)[:200]}"
        bar.update(len(chunk))
    _reject(table, reasons, rejects, encoder.name)
    bar.update(n_parse_rejected)
    idx = [keep[g] for g in good]
    emb = np.concatenate(embs) if embs else np.zeros((0, encoder.dim or 0), np.float32)
    return pd.DataFrame({
        "id": table["id"].to_numpy()[idx],
        "formula": canon[good] if len(good) else np.array([], dtype=object),
        "embedding": list(emb),
        "encoder": encoder.name,
        "source": table["source"].to_numpy()[idx],
        "generated": np.zeros(len(idx), dtype=bool),
        "energy_per_atom": np.concatenate(energies) if energies else np.zeros(0, np.float32),
    })  # fmt: skip


def per_formula_view(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per formula: lowest ``energy_per_atom`` (NaN last), ties broken by source order."""
    order = frame.assign(_pos=np.arange(len(frame))).sort_values(["formula", "energy_per_atom", "_pos"],
                                                                 na_position="last", kind="stable")  # fmt: skip
    first = order.drop_duplicates("formula", keep="first").sort_values("_pos")
    counts = frame.groupby("formula").size()
    return first.drop(columns="_pos").assign(n_polymorphs=first["formula"].map(counts).to_numpy()).reset_index(drop=True)


def build_embeddings(
    source: str,
    encoder: str,
    out: str | Path,
    batch_size: int = 128,
    shard_size: int = 1000,
    limit: int | None = None,
    on_bad: str = "error",
    matgl_model: str | None = None,
    process_index: int | None = None,
    num_processes: int | None = None,
    num_threads: int | None = None,
) -> dict[str, Any] | None:
    """Embed every structure of ``source``; sharded, resumable, split across ``accelerate`` processes.

    Process *p* of *P* embeds the contiguous shard range ``[p*ceil(S/P), (p+1)*ceil(S/P))``; under
    ``accelerate launch`` the rank comes from ``PartialState`` (or pass ``process_index``/``num_processes``).
    Existing shards are skipped, so rerunning resumes. Returns the metadata on the main process once all
    shards exist (``None`` on other processes). ``num_threads`` sets torch's CPU threads (default: torch's
    choice, or ``cpu_count // processes`` under several processes); 1 is fastest on an oversubscribed CPU.
    """
    out = Path(out)
    name = "matgl-tensornet" if encoder == "matgl" else encoder
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {ENCODERS}")
    table = load_structure_table(source, limit)
    n_shards = max(1, math.ceil(len(table) / shard_size))
    shard_dir = out / "data" / name
    signature = {"source": source, "rows": len(table), "shard_size": shard_size, "limit": limit}
    sig_path = shard_dir / "_signature.json"
    if process_index is not None or num_processes is not None:
        rank, world, state = int(process_index or 0), int(num_processes or 1), None
    else:
        rank, world, state = _process_info()
    if not 0 <= rank < world:
        raise ValueError(f"process_index {rank} outside 0..{world - 1}")
    if num_threads or world > 1:
        import torch

        torch.set_num_threads(int(num_threads or max(1, (os.cpu_count() or 1) // world)))
    if sig_path.exists() and json.loads(sig_path.read_text()) != signature:
        raise ValueError(
            f"{shard_dir} holds shards of a different run {json.loads(sig_path.read_text())}; "
            f"use another --output-dir or delete it (this run: {signature})"
        )
    if rank == 0:
        write_json(signature, sig_path)
    per_proc = math.ceil(n_shards / world)
    mine = range(rank * per_proc, min(n_shards, (rank + 1) * per_proc))
    todo = [i for i in mine if not (shard_dir / f"shard-{i:05d}-of-{n_shards:05d}.parquet").exists()]
    n_rows = sum(len(table.iloc[i * shard_size : (i + 1) * shard_size]) for i in todo)
    start = time.perf_counter()
    encoder_info = None
    if todo:
        enc = get_encoder(name, matgl_model)
        start = time.perf_counter()  # throughput excludes model loading
        with tqdm(total=n_rows, desc=f"{name} embeddings (process {rank}/{world})", unit="struct") as bar:
            for i in todo:
                part = table.iloc[i * shard_size : (i + 1) * shard_size].reset_index(drop=True)
                rejects = Rejects(on_bad)
                frame = _embed_shard(part, enc, batch_size, rejects, bar)
                if rejects.rows:
                    pd.DataFrame(rejects.rows).to_csv(shard_dir / f"rejected-{i:05d}.csv", index=False)
                write_parquet(frame, shard_dir / f"shard-{i:05d}-of-{n_shards:05d}.parquet")
        encoder_info = enc.metadata() if hasattr(enc, "metadata") else None  # descriptors: settings, counters
    elapsed = time.perf_counter() - start
    if state is not None:
        state.wait_for_everyone()
    if rank != 0:
        return None
    missing = [i for i in range(n_shards) if not (shard_dir / f"shard-{i:05d}-of-{n_shards:05d}.parquet").exists()]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} of {shard_dir} are missing (a process failed); rerun to resume")
    return _finalize(out, name, n_shards, signature, n_rows, elapsed, batch_size, matgl_model, encoder_info)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _finalize(out: Path, name: str, n_shards: int, signature: dict, n_new: int, elapsed: float, batch_size: int,
              matgl_model: str | None, encoder_info: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    shard_dir = out / "data" / name
    frame = pd.concat([read_table(shard_dir / f"shard-{i:05d}-of-{n_shards:05d}.parquet").frame
                       for i in range(n_shards)], ignore_index=True)  # fmt: skip
    view = per_formula_view(frame)
    write_parquet(view, out / "per_formula" / f"{name}.parquet")
    rej = sorted(shard_dir.glob("rejected-*.csv"))
    n_rej = 0
    if rej:
        all_rej = pd.concat([read_table(p).frame for p in rej], ignore_index=True)
        n_rej = len(all_rej)
        all_rej.to_csv(out / f"rejected_rows_{name}.csv", index=False)
    meta_path = out / "embeddings_metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    previous = meta.get(name, {})
    keep_run = n_new == 0 and "last_run" in previous  # a rerun that only refinalizes keeps the build's record
    meta[name] = {
        **signature,
        "encoder": name,
        "matgl_model": str(matgl_model or (models_dir() / "matgl" / DEFAULT_MATGL_MODEL)) if name == "matgl-tensornet" else None,
        "embedding_dim": int(len(frame["embedding"].iloc[0])) if len(frame) else None,
        "n_shards": n_shards,
        "rows": len(frame),
        "unique_formulas": len(view),
        "rejected_rows": n_rej,
        "last_run": {"new_structures": n_new, "seconds": round(elapsed, 2), "batch_size": batch_size,
                     "torch_threads": _torch_threads(), "process": "main (rank 0) only",
                     "structures_per_s": round(n_new / elapsed, 2) if n_new and elapsed else None,
                     **({"encoder_info": encoder_info} if encoder_info else {})} if not keep_run else previous["last_run"],
        **{k: v for k, v in previous.items() if k == "throughput_check"},  # kept across reruns
    }  # fmt: skip
    write_json(meta, meta_path)
    configs = {}
    for enc in meta:
        configs[enc] = {"train": f"data/{enc}/shard-*.parquet"}
        configs[f"{enc}_per_formula"] = {"train": f"per_formula/{enc}.parquet"}
    write_card(out, configs, pretty_name="CrossMat structure embeddings", body=_card_body(meta),
               task_categories=("feature-extraction",), default_config=next(iter(meta)))  # fmt: skip
    return meta[name]


def _card_body(meta: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| `{k}` | {m['source']} | {m['embedding_dim']} | {m['rows']} | {m['unique_formulas']} | {m['rejected_rows']} |"
        for k, m in meta.items()
    )
    speed = "".join(
        f"\n`{k}` throughput: {m['throughput_check']['structures_per_s']} structures/s on "
        f"{m['throughput_check']['structures']} random structures of the source ({m['throughput_check']['note']}).\n"
        for k, m in meta.items() if "throughput_check" in m
    )  # fmt: skip
    return f"""
# CrossMat precomputed structure embeddings

Built by `python -m crossmat.dataset_builders embeddings`. Config `<encoder>`: every structure (all polymorphs kept);
config `<encoder>_per_formula`: one row per formula, the polymorph with the **lowest energy per atom**
predicted by the same encoder (ties and missing energies: first in source order), with `n_polymorphs`.
Columns: `id`, `formula` (canonical composition of the structure), `embedding` (list of float32),
`encoder`, `source`, `generated` (False: real structures; True is used for exKT-generated ones),
`energy_per_atom` (eV/atom, encoder prediction; NaN for `descriptors`, which has no model, so its
`_per_formula` config is the first polymorph in source order).

| encoder | source | dim | rows | formulas | rejected |
|---|---|---|---|---|---|
{rows}
{speed}
```python
from datasets import load_dataset
ds = load_dataset("<this folder or repo>", "{next(iter(meta))}_per_formula", split="train")
```

## Provenance and licence
- `chgnet`: CHGNet crystal features (Deng et al., Nat. Mach. Intell. 5, 1031, 2023; weights BSD-3-Clause).
- `matgl-tensornet`: matgl TensorNet-MatPES-PBE-v2025.1-PES (Simeon & De Fabritiis, NeurIPS 2023; Kaplan et al.,
  MatPES 2025; matgl BSD-3-Clause); embedding = atom mean of the per-atom readout features.
- `descriptors`: no model; 29 structure descriptors computed with pymatgen and spglib (volume, density, packing
  fraction, neighbour distances, coordination, bond lengths, crystal system, space group, cell shape, primitive
  sites; `dataset_builders.structure_encoders.DescriptorEncoder`).
- `perov_5`: Castelli et al., Energy Environ. Sci. 5, 9034 (2012), as curated by the CDVAE perov_5 benchmark.
- `aflow_prototypes`: AFLOW Library of Crystallographic Prototypes (Mehl et al., Comput. Mater. Sci. 136, S1,
  2017), as bundled with pymatgen.
Each source keeps its licence.
"""
