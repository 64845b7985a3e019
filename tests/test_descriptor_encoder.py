"""The ``descriptors`` structure encoder on real MP structures, rejections, the builder and alignment end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crossmat.dataset_builders.alignment import build_alignment_set
from crossmat.dataset_builders.cli import main as builders_main
from crossmat.dataset_builders.embeddings import build_embeddings, parse_structure
from crossmat.dataset_builders.structure_encoders import DESCRIPTOR_NAMES, DescriptorEncoder, get_encoder

# rock salt, cubic perovskite, layered 2H-MoS2, fcc Cu, bcc W (real MP structures of the shared copy)
IDS = ["mp-22862", "mp-3448", "mp-2815", "mp-30", "mp-91"]


@pytest.fixture(scope="module")
def mp(data_dir) -> pd.DataFrame:
    frame = pd.read_csv(data_dir / "mp_structures" / "structures.csv.gz", usecols=["material_id", "formula", "cif"])
    return frame.set_index("material_id")


@pytest.fixture(scope="module")
def described(mp) -> dict[str, dict[str, float]]:
    enc = get_encoder("descriptors")
    emb, energy = enc([parse_structure(mp.loc[i, "cif"]) for i in IDS])
    assert emb.shape == (len(IDS), enc.dim) == (len(IDS), len(DESCRIPTOR_NAMES)) and emb.dtype == np.float32
    assert np.isnan(energy).all() and np.isfinite(emb).all()
    return {i: dict(zip(DESCRIPTOR_NAMES, row.tolist(), strict=True)) for i, row in zip(IDS, emb, strict=True)}


def test_crystal_systems_and_coordination(described):
    nacl, kmgf3, mos2, cu, w = (described[i] for i in IDS)
    for d, system in ((nacl, "cubic"), (kmgf3, "cubic"), (mos2, "hexagonal"), (cu, "cubic"), (w, "cubic")):
        assert d[f"crystal_system_{system}"] == 1.0 and sum(v for k, v in d.items() if k.startswith("crystal_system_")) == 1
    assert nacl["coordination_mean"] == 6 and nacl["coordination_std"] == 0 and nacl["unlike_bond_fraction"] == 1
    assert nacl["space_group_scaled"] == pytest.approx(225 / 230) and nacl["log_primitive_sites"] == pytest.approx(np.log(2))
    assert 2.7 < nacl["nn_distance_mean"] < 2.9  # Na-Cl 2.8 Å
    assert kmgf3["coordination_mean"] == pytest.approx((12 + 6 + 3 * 2) / 5)  # K 12, Mg 6, F 2
    assert cu["coordination_mean"] == 12 and w["coordination_mean"] == 8 and cu["unlike_bond_fraction"] == 0
    assert mos2["coordination_mean"] == pytest.approx((6 * 2 + 3 * 4) / 6)  # Mo trigonal prism 6, S 3
    assert mos2["lattice_length_max"] > 2 * mos2["lattice_length_min"]  # the stacking axis of a layered cell
    assert cu["packing_fraction"] > mos2["packing_fraction"] and w["log_point_group_order"] == pytest.approx(np.log(48))
    assert 2.0 < nacl["log_volume_per_atom"] < 3.5 and nacl["distinct_site_fraction"] == 1.0


def test_bad_structures_are_rejected_with_a_reason(mp, tmp_path):
    nacl = parse_structure(mp.loc["mp-22862", "cif"])
    disordered = nacl.copy()
    disordered.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    overlap = nacl.copy()
    overlap.append("Na", overlap[0].frac_coords + 0.01)
    enc = DescriptorEncoder()
    assert "disordered" in enc.unsupported(disordered) and enc.unsupported(nacl) is None
    with pytest.raises(ValueError, match="overlapping atoms"):
        enc([overlap])
    broken = mp.loc["mp-30", "cif"].replace("_cell_length_a", "_cell_length_x").replace("loop_", "")
    csv = tmp_path / "cifs.csv"
    pd.DataFrame({"id": ["ok", "broken", "disordered", "overlap"],
                  "cif": [mp.loc["mp-22862", "cif"], broken, disordered.to(fmt="cif"), overlap.to(fmt="cif")]}).to_csv(csv, index=False)  # fmt: skip
    meta = build_embeddings(str(csv), "descriptors", tmp_path / "emb", on_bad="report")
    assert meta["rows"] == 1 and meta["rejected_rows"] == 3
    reasons = pd.read_csv(tmp_path / "emb" / "rejected_rows_descriptors.csv").set_index("id")["reason"]
    assert "broken structure" in reasons["broken"] and "disordered" in reasons["disordered"]
    assert "overlapping atoms" in reasons["overlap"]


def test_builder_and_alignment_end_to_end(mp, tmp_path):
    out, csv = tmp_path / "emb", tmp_path / "mp20.csv"
    mp.iloc[:20].reset_index().to_csv(csv, index=False)  # the first 20 real MP structures, as a file source
    builders_main(["embeddings", "--source", str(csv), "--encoder", "descriptors", "--shard-size", "10",
                   "--output-dir", str(out)])  # fmt: skip
    meta = json.loads((out / "embeddings_metadata.json").read_text())["descriptors"]
    assert meta["rows"] == 20 and meta["embedding_dim"] == len(DESCRIPTOR_NAMES) and meta["n_shards"] == 2
    assert meta["last_run"]["encoder_info"]["descriptor_names"] == list(DESCRIPTOR_NAMES)
    rows = pd.concat([pd.read_parquet(p) for p in sorted((out / "data" / "descriptors").glob("shard-*.parquet"))])
    assert rows["energy_per_atom"].isna().all() and np.isfinite(np.stack(rows["embedding"])).all()
    assert "descriptors" in (out / "README.md").read_text()
    builders_main(["embeddings", "--source", str(csv), "--encoder", "descriptors", "--shard-size", "10",
                   "--output-dir", str(out)])  # fmt: skip
    rerun = json.loads((out / "embeddings_metadata.json").read_text())["descriptors"]
    assert rerun["last_run"] == meta["last_run"]  # a rerun with nothing to do keeps the build's record
    # duplicate the first formula's structure under another id: a polymorph group without energies
    dup = rows.iloc[:1].assign(id="copy", embedding=[rows["embedding"].iloc[0] * 0 + 1])
    pd.concat([rows.iloc[10:], dup]).to_parquet(out / "data" / "descriptors" / "shard-00001-of-00002.parquet")
    first = build_alignment_set([out], ["descriptors"], tmp_path / "first")
    assert first["lowest_energy_fallback_formulas"] == 1
    mean = build_alignment_set([out], ["descriptors"], tmp_path / "mean", polymorphs="mean")
    table = pd.read_parquet(tmp_path / "mean" / "data" / "train.parquet").set_index("formula")
    f0 = rows["formula"].iloc[0]
    np.testing.assert_allclose(table.loc[f0, "embedding"], (rows["embedding"].iloc[0] + 1) / 2, rtol=1e-6)
    assert mean["lowest_energy_fallback_formulas"] == 0 and table.loc[f0, "n_polymorphs"] == 2
