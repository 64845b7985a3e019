"""Structure embeddings: CHGNet + matgl TensorNet on perov_5, resume, process split, bad CIFs, per-formula view."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from datasets import load_dataset

from crossmat.dataset_builders import paths
from crossmat.dataset_builders.common import BadInputError
from crossmat.dataset_builders.embeddings import (
    DEFAULT_MATGL_MODEL,
    build_embeddings,
    embed_structures,
    load_structure_table,
    parse_structure,
    per_formula_view,
)

PEROV = paths.data_dir(must_exist=False) / "perov_5"
MATGL = paths.models_dir() / "matgl" / DEFAULT_MATGL_MODEL
needs_perov = pytest.mark.usefixtures("data_dir")  # fails (never skips) when CROSSMAT_DATA_DIR is missing


@needs_perov
def test_chgnet_embeddings_resume_and_process_split(tmp_path):
    out = tmp_path / "emb"
    kw = dict(batch_size=8, shard_size=8, limit=24)
    # two "processes": rank 1 takes shards [2, 3) and returns None, rank 0 takes [0, 2) and finalises
    assert build_embeddings("perov_5", "chgnet", out, process_index=1, num_processes=2, **kw) is None
    shards = sorted((out / "data" / "chgnet").glob("shard-*.parquet"))
    assert [p.name for p in shards] == ["shard-00002-of-00003.parquet"]
    meta = build_embeddings("perov_5", "chgnet", out, process_index=0, num_processes=2, **kw)
    assert meta["rows"] == 24 and meta["embedding_dim"] == 64 and meta["n_shards"] == 3
    ds = load_dataset(str(out), "chgnet", split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == ["id", "formula", "embedding", "encoder", "source", "generated", "energy_per_atom"]
    emb = np.asarray(ds["embedding"], dtype=np.float32)
    assert emb.shape == (24, 64) and np.isfinite(emb).all() and emb.std(axis=0).max() > 0
    assert set(ds["encoder"]) == {"chgnet"} and not any(ds["generated"])
    table = load_structure_table("perov_5", limit=24)
    assert list(ds["id"]) == table["id"].tolist()
    # resume: a lost shard is recomputed, finished shards are not touched, results are identical
    first, last = out / "data" / "chgnet" / "shard-00000-of-00003.parquet", shards[0]
    before = pd.read_parquet(first)
    mtime = last.stat().st_mtime_ns
    first.unlink()
    meta = build_embeddings("perov_5", "chgnet", out, **kw)
    assert meta["last_run"]["new_structures"] == 8 and last.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(np.stack(pd.read_parquet(first)["embedding"]), np.stack(before["embedding"]), atol=1e-5)
    # the direct API gives the same vectors
    direct = embed_structures([parse_structure(c) for c in table["structure"][:3]], "chgnet", batch_size=3)
    assert direct.dtype == np.float32 and direct.shape == (3, 64)
    np.testing.assert_allclose(direct, emb[:3], atol=1e-4)
    with pytest.raises(ValueError, match="different run"):
        build_embeddings("perov_5", "chgnet", out, batch_size=8, shard_size=4, limit=24)
    per = load_dataset(str(out), "chgnet_per_formula", split="train", cache_dir=str(tmp_path / "hf"))
    assert per.num_rows == len(set(ds["formula"]))


@needs_perov
def test_broken_cif_stops_or_is_reported(tmp_path):
    table = load_structure_table("perov_5", limit=3)
    csv = tmp_path / "cifs.csv"
    cifs = table["structure"].tolist()
    cifs[1] = cifs[1].replace("_cell_length_a", "_cell_length_x").replace("loop_", "")
    pd.DataFrame({"id": ["a", "b", "c"], "cif": cifs}).to_csv(csv, index=False)
    with pytest.raises(BadInputError, match=r"cifs.csv: row 1 \(id 'b'\): broken structure"):
        build_embeddings(str(csv), "chgnet", tmp_path / "e1", batch_size=4)
    meta = build_embeddings(str(csv), "chgnet", tmp_path / "e2", batch_size=4, on_bad="report")
    assert meta["rows"] == 2 and meta["rejected_rows"] == 1
    report = pd.read_csv(tmp_path / "e2" / "rejected_rows_chgnet.csv")
    assert report["id"].tolist() == ["b"] and "broken structure" in report["reason"][0]


@pytest.mark.usefixtures("data_dir")
def test_matgl_tensornet_embeddings(tmp_path):
    meta = build_embeddings("perov_5", "matgl-tensornet", tmp_path, batch_size=4, limit=6)
    frame = pd.read_parquet(next((tmp_path / "data" / "matgl-tensornet").glob("shard-*.parquet")))
    emb = np.stack(frame["embedding"])
    assert meta["embedding_dim"] == emb.shape[1] == 128 and len(frame) == 6 and np.isfinite(emb).all()
    assert frame["energy_per_atom"].between(-15, 0).all()  # DFT-scale total energies per atom (eV)


def test_per_formula_view_rule():
    frame = pd.DataFrame({"id": ["p1", "p2", "q1", "r1", "r2"], "formula": ["A", "A", "B", "C", "C"],
                          "energy_per_atom": [-1.0, -2.0, np.nan, np.nan, np.nan]})  # fmt: skip
    view = per_formula_view(frame)
    assert view["id"].tolist() == ["p2", "q1", "r1"] and view["n_polymorphs"].tolist() == [2, 1, 2]


def test_aflow_prototypes_source_is_pip_shipped():
    table = load_structure_table("aflow_prototypes", limit=5)
    assert len(table) == 5 and table["id"].is_unique
    assert len(parse_structure(table["structure"][0])) > 0
    with pytest.raises(ValueError, match="no structure"):
        parse_structure(float("nan"))
