"""imKT alignment sets: polymorph rules, encoder concatenation, the leakage guard, nested subsets, standardisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import load_dataset

from crossmat.dataset_builders.alignment import build_alignment_set, polymorph_statistics
from crossmat.dataset_builders.cli import main as builders_main
from crossmat.dataset_builders.common import BadInputError, canonicalize_formulas, write_parquet
from crossmat.dataset_builders.matbench import load_task_frame

# Real compositions; Fe2O3 has two polymorphs (different energies), TiO2 three.
ROWS = [("mp-1", "Fe2O3", -6.0), ("mp-2", "Fe2O3", -6.5), ("mp-3", "TiO2", -8.0), ("mp-4", "TiO2", -8.9),
        ("mp-5", "TiO2", -8.1), ("mp-6", "NaCl", -3.3), ("mp-7", "GaAs", -4.1)]  # fmt: skip


def _shards(folder, encoder, dim, seed, rows=ROWS, n_shards=2):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": [r[0] for r in rows], "formula": [r[1] for r in rows],
        "embedding": list(rng.normal(size=(len(rows), dim)).astype(np.float32)),
        "encoder": encoder, "source": "test", "generated": False,
        "energy_per_atom": np.array([r[2] for r in rows], dtype=np.float32),
    })  # fmt: skip
    for i, part in enumerate(np.array_split(np.arange(len(frame)), n_shards)):
        write_parquet(frame.iloc[part], folder / "data" / encoder / f"shard-{i:05d}-of-{n_shards:05d}.parquet")
    return frame


def test_lowest_energy_and_mean_polymorph_rules(tmp_path):
    emb = tmp_path / "emb"
    raw = _shards(emb, "chgnet", 4, 0)
    meta = build_alignment_set([emb], ["chgnet"], tmp_path / "low", polymorphs="lowest_energy")
    table = pd.read_parquet(tmp_path / "low" / "data" / "train.parquet").set_index("formula")
    assert meta["rows"] == 4 and sorted(table.index) == ["Fe2O3", "GaAs", "NaCl", "TiO2"]
    assert table.loc["Fe2O3", "structure_id"] == "mp-2" and table.loc["TiO2", "structure_id"] == "mp-4"
    assert table.loc["TiO2", "n_polymorphs"] == 3 and table.loc["NaCl", "n_polymorphs"] == 1
    np.testing.assert_allclose(table.loc["TiO2", "embedding"], raw.loc[3, "embedding"])
    build_alignment_set([emb], ["chgnet"], tmp_path / "mean", polymorphs="mean")
    mean = pd.read_parquet(tmp_path / "mean" / "data" / "train.parquet").set_index("formula")
    np.testing.assert_allclose(mean.loc["TiO2", "embedding"], np.stack(raw.loc[2:4, "embedding"]).mean(0), rtol=1e-6)
    np.testing.assert_allclose(mean.loc["GaAs", "embedding"], raw.loc[6, "embedding"])
    assert meta["polymorph_statistics"]["formulas_with_polymorphs"] == 2
    assert meta["polymorph_statistics"]["structures_in_polymorph_groups"] == 5
    # the folder is a Hugging Face dataset (parquet + README configs)
    ds = load_dataset(str(tmp_path / "low"), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 4 and len(ds[0]["embedding"]) == 4


def test_two_encoders_concatenate_per_structure_and_energy_of_the_first(tmp_path):
    emb = tmp_path / "emb"
    a = _shards(emb, "chgnet", 3, 0)
    # the second encoder disagrees on energies and its rows come in another order: join is by id
    other = [(i, f, -e) for i, f, e in ROWS][::-1]
    b = _shards(emb, "matgl-tensornet", 5, 1, rows=other, n_shards=1)
    meta = build_alignment_set([emb], ["chgnet", "matgl-tensornet"], tmp_path / "out")
    assert meta["embedding_dims"] == [3, 5]
    table = pd.read_parquet(tmp_path / "out" / "data" / "train.parquet").set_index("formula")
    assert table.loc["Fe2O3", "structure_id"] == "mp-2"  # chgnet's lowest energy, not tensornet's
    want = np.r_[a.loc[1, "embedding"], b.set_index("id").loc["mp-2", "embedding"]]
    np.testing.assert_allclose(table.loc["Fe2O3", "embedding"], want)


def test_incomplete_embedding_folder_is_refused(tmp_path):
    emb = tmp_path / "emb"
    _shards(emb, "chgnet", 3, 0, n_shards=2)
    (emb / "data" / "chgnet" / "shard-00001-of-00002.parquet").unlink()
    with pytest.raises(BadInputError, match="1 of 2 shards"):
        build_alignment_set([emb], ["chgnet"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no embedding shards"):
        build_alignment_set([emb], ["matgl-tensornet"], tmp_path / "out")


@pytest.mark.usefixtures("data_dir")
def test_leakage_guard_removes_every_formula_of_an_evaluated_task(tmp_path):
    canon, _ = canonicalize_formulas(load_task_frame("matbench_expt_gap")["formula"])
    inside = [f for f in canon[:40] if f not in {r[1] for r in ROWS}][:3]
    rows = ROWS + [(f"mp-x{i}", f, -1.0) for i, f in enumerate(inside)]
    emb = tmp_path / "emb"
    _shards(emb, "chgnet", 4, 0, rows=rows)
    out = tmp_path / "out"
    rc = builders_main(["alignment", "--embeddings", str(emb), "--encoder", "chgnet", "--out", str(out),
                        "--exclude", "matbench=matbench_expt_gap"])  # fmt: skip
    assert rc == 0
    table = pd.read_parquet(out / "data" / "train.parquet")
    banned, present = set(canon), {r[1] for r in rows}
    assert set(inside) <= banned and present - banned  # the data holds task formulas and others
    assert set(table["formula"]) == present - banned
    assert set((out / "excluded_formulas.txt").read_text().split()) == present & banned
    assert "matbench=matbench_expt_gap" in (out / "README.md").read_text()
    # no property labels travel into an alignment set
    assert set(table.columns) == {"formula", "embedding", "n_polymorphs", "structure_id", "source"}


def test_nested_subsets_for_scaling_curves(tmp_path):
    rows = [(f"mp-{i}", f, -1.0) for i, f in enumerate(["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS"])]
    emb = tmp_path / "emb"
    _shards(emb, "chgnet", 2, 0, rows=rows)
    sets = []
    for n in (2, 5, 8):
        build_alignment_set([emb], ["chgnet"], tmp_path / f"n{n}", max_formulas=n, seed=3)
        sets.append(set(pd.read_parquet(tmp_path / f"n{n}" / "data" / "train.parquet")["formula"]))
    assert [len(s) for s in sets] == [2, 5, 8] and sets[0] < sets[1] < sets[2]


def test_target_subsets_keep_every_formula_for_a_fixed_mlm_corpus(tmp_path):
    rows = [(f"mp-{i}", f, -1.0) for i, f in enumerate(["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS"])]
    emb = tmp_path / "emb"
    _shards(emb, "chgnet", 2, 0, rows=rows)
    build_alignment_set([emb], ["chgnet"], tmp_path / "all")
    full = pd.read_parquet(tmp_path / "all" / "data" / "train.parquet")
    sets = []
    for n in (2, 5):
        rc = builders_main(["alignment", "--embeddings", str(emb), "--encoder", "chgnet", "--output-dir",
                            str(tmp_path / f"t{n}"), "--max-targets", str(n), "--seed", "3"])  # fmt: skip
        assert rc == 0
        table = pd.read_parquet(tmp_path / f"t{n}" / "data" / "train.parquet")
        assert list(table["formula"]) == list(full["formula"])  # the corpus does not change
        has = table["embedding"].notna().to_numpy()
        assert has.sum() == n
        for got, want in zip(table["embedding"][has], full["embedding"][has], strict=True):
            np.testing.assert_allclose(got, want)
        sets.append(set(table["formula"][has]))
        assert f"{n} with an embedding" in (tmp_path / f"t{n}" / "README.md").read_text()
    assert sets[0] < sets[1]  # nested
    ds = load_dataset(str(tmp_path / "t2"), split="train", cache_dir=str(tmp_path / "hf"))
    assert sum(e is None for e in ds["embedding"]) == 6


def test_energy_teacher_targets_the_ground_state_energy_and_its_residual_over_elemental_references(tmp_path):
    refs = {"Fe": -8.0, "O": -5.0, "Ti": -7.5, "Na": -1.3, "Cl": -1.8}
    amounts = {"Fe2O3": {"Fe": 2, "O": 3}, "FeO": {"Fe": 1, "O": 1}, "Fe3O4": {"Fe": 3, "O": 4},
               "TiO2": {"Ti": 1, "O": 2}, "Ti2O3": {"Ti": 2, "O": 3}, "NaCl": {"Na": 1, "Cl": 1},
               "Na2O": {"Na": 2, "O": 1}, "TiCl4": {"Ti": 1, "Cl": 4}, "FeCl3": {"Fe": 1, "Cl": 3},
               "FeCl2": {"Fe": 1, "Cl": 2}}  # fmt: skip
    formulas = list(amounts)
    fractions = np.array([[amounts[f].get(e, 0) / sum(amounts[f].values()) for e in refs] for f in formulas])
    formation = np.array([-1.7, -1.4, -1.6, -3.2, -3.1, -2.1, -1.4, -2.0, -1.0, -1.1])
    linear = fractions @ np.array(list(refs.values()))

    def energies(shift: float) -> np.ndarray:  # per atom: fraction-weighted references + a formation term
        return linear + formation + shift

    # every formula has a ground state and a polymorph 0.3 eV/atom above it (listed first)
    rows = [(f"mp-{i}h", f, e) for i, (f, e) in enumerate(zip(formulas, energies(0.3), strict=True))]
    rows += [(f"mp-{i}", f, e) for i, (f, e) in enumerate(zip(formulas, energies(0.0), strict=True))]
    emb = tmp_path / "emb"
    _shards(emb, "chgnet", 3, 0, rows=rows)
    assert builders_main(["alignment", "--embeddings", str(emb), "--encoder", "chgnet", "--teacher", "energy",
                          "--output-dir", str(tmp_path / "energy")]) == 0  # fmt: skip
    table = pd.read_parquet(tmp_path / "energy" / "data" / "train.parquet").set_index("formula").loc[formulas]
    target = np.stack(table["embedding"].to_numpy())
    assert target.shape == (10, 2) and list(table["structure_id"]) == [f"mp-{i}" for i in range(10)]
    np.testing.assert_allclose(target[:, 0], energies(0.0), rtol=1e-6)  # the ground state's energy
    # the residual is the formation term minus the part per-element references absorb: orthogonal to the
    # element fractions, and energy - residual is a fraction-weighted sum of references
    np.testing.assert_allclose(fractions.T @ target[:, 1], 0.0, atol=1e-4)
    fitted = np.linalg.lstsq(fractions, target[:, 0] - target[:, 1], rcond=None)
    assert fitted[1].sum() < 1e-8
    absorbed = fractions @ np.linalg.lstsq(fractions, formation, rcond=None)[0]
    np.testing.assert_allclose(target[:, 1], formation - absorbed, atol=1e-5)
    meta = __import__("json").loads((tmp_path / "energy" / "alignment_metadata.json").read_text())
    assert meta["teacher"] == "energy" and meta["embedding_dims"] == [2] and meta["energy_fit"]["elements"] == 5
    assert 0.9 < meta["energy_fit"]["references_r2"] < 1.0
    assert "teacher `energy`" in (tmp_path / "energy" / "README.md").read_text()
    rows_linear = [(f"mp-{i}", f, e) for i, (f, e) in enumerate(zip(formulas, linear, strict=True))]
    _shards(tmp_path / "lin", "chgnet", 3, 0, rows=rows_linear)
    build_alignment_set([tmp_path / "lin"], ["chgnet"], tmp_path / "lin_out", teacher="energy")
    lin = np.stack(pd.read_parquet(tmp_path / "lin_out" / "data" / "train.parquet")["embedding"].to_numpy())
    np.testing.assert_allclose(lin[:, 1], 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="lowest_energy"):
        build_alignment_set([emb], ["chgnet"], tmp_path / "x", polymorphs="mean", teacher="energy")
    no_energy = [(i, f, float("nan")) for i, f, _ in rows[10:]]
    _shards(tmp_path / "desc", "descriptors", 3, 0, rows=no_energy)
    with pytest.raises(BadInputError, match="no energy from descriptors"):
        build_alignment_set([tmp_path / "desc"], ["descriptors"], tmp_path / "y", teacher="energy")


def test_imkt_rows_without_a_structure_are_an_error_or_mlm_only_rows():
    from crossmat.tokenization import CrossMatTokenizerFast
    from crossmat.training.data import DataError, prepare_stage_data
    from crossmat.training.recipe import resolve_stage

    rng = np.random.default_rng(0)
    formulas = ["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS", "GaAs", "InP", "AlN", "SiC"] * 5
    emb = list((rng.normal(size=(len(formulas), 4)) * 3 + 10).astype(np.float32))
    missing = np.arange(len(formulas)) % 3 == 1
    for i in np.flatnonzero(missing):
        emb[i] = None
    frame = pd.DataFrame({"formula": formulas, "embedding": emb})
    data = {"train": frame, "validation_fraction": 0.2, "standardize_embeddings": True}
    with pytest.raises(DataError, match="train row 1: has no embedding"):
        prepare_stage_data(resolve_stage({"stage": "imkt", "data": data}), CrossMatTokenizerFast())
    skipped = prepare_stage_data(resolve_stage({"stage": "imkt", "data": {**data, "on_invalid": "skip"}}),
                                 CrossMatTokenizerFast())  # fmt: skip
    assert len(skipped.rejected) == missing.sum() and set(skipped.rejected["reason"]) == {"no embedding (null)"}
    out = prepare_stage_data(resolve_stage({"stage": "imkt", "data": {**data, "missing_embeddings": "mlm_only"}}),
                             CrossMatTokenizerFast())  # fmt: skip
    tensors = out.train.tensors
    mask = tensors["structure_mask"]
    assert len(mask) == len(tensors["input_ids"]) and 0 < int(mask.sum()) < len(mask)  # every formula stays
    z = tensors["structure_embeddings"].double()
    torch.testing.assert_close(z[mask].mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[mask].std(0), torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)
    assert z[~mask].abs().max() == 0
    n_train = len(mask)
    assert out.info["rows_with_structure_target"]["train"] == f"{int(mask.sum())} of {n_train}"
    with pytest.raises(DataError, match="no row has an embedding"):
        none = pd.DataFrame({"formula": formulas, "embedding": [None] * len(formulas)})
        prepare_stage_data(resolve_stage({"stage": "imkt", "data": {"train": none, "missing_embeddings": "mlm_only"}}),
                           CrossMatTokenizerFast())  # fmt: skip


def test_polymorph_statistics_see_identical_polymorphs():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 8))
    formulas = np.array([f"X{i}" for i in range(50)] * 2, dtype=object)
    stats = polymorph_statistics(formulas, np.concatenate([base, base]))
    assert stats["formulas_with_polymorphs"] == 50 and stats["mean_cosine_same_formula"] == pytest.approx(1.0)
    assert abs(stats["mean_cosine_different_formulas"]) < 0.2


def test_imkt_data_standardises_embeddings_with_train_statistics():
    from crossmat.tokenization import CrossMatTokenizerFast
    from crossmat.training.data import prepare_stage_data
    from crossmat.training.recipe import resolve_stage

    rng = np.random.default_rng(0)
    formulas = ["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS", "GaAs", "InP", "AlN", "SiC"] * 5
    emb = (rng.normal(size=(len(formulas), 6)) * [1, 2, 3, 4, 5, 0] + 10).astype(np.float32)  # last dim constant
    frame = pd.DataFrame({"formula": formulas, "embedding": list(emb)})
    recipe = resolve_stage({"stage": "imkt", "data": {"train": frame, "validation_fraction": 0.2,
                                                       "standardize_embeddings": True}})  # fmt: skip
    data = prepare_stage_data(recipe, CrossMatTokenizerFast())
    train = data.train.tensors["structure_embeddings"].double()
    torch.testing.assert_close(train.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(train[:, :5].std(0), torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)
    assert data.info["embedding_standardization"]["constant_dimensions"] == 1
    val = data.validation.tensors["structure_embeddings"].double()
    assert val.abs().max() < 10  # transformed with the train statistics, not left raw
    raw = prepare_stage_data(resolve_stage({"stage": "imkt", "data": {"train": frame, "validation_fraction": 0.2}}),
                             CrossMatTokenizerFast())  # fmt: skip
    assert raw.train.tensors["structure_embeddings"].mean() > 5  # off by default
