"""The fine-tuning structure auxiliary (train.structure_aux_weight, data.structure_targets): lookup by composition,
z-scoring on the training rows, clear errors for bad tables, and a real fine-tune whose saved model reads formulas
only. Structure vectors are pymatgen descriptors of real Materials Project crystals (no model, milliseconds each)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from crossmat.tokenization import canonical_formula
from crossmat.training import run_recipe
from crossmat.training.data import DataError
from crossmat.training.recipe import RecipeError, apply_overrides, validate_recipe
from crossmat.training.structure_aux import StructureAuxiliary, structure_vectors


@pytest.fixture(scope="module")
def gap_rows(expt_gap_csv) -> pd.DataFrame:
    return pd.read_csv(expt_gap_csv(300))


@pytest.fixture(scope="module")
def vectors_table(gap_rows, data_dir, tmp_path_factory):
    """Descriptor vectors of the first MP structure of 40 of the rows' formulas (real CIFs from mp_structures)."""
    from crossmat.dataset_builders.embeddings import parse_structure
    from crossmat.dataset_builders.structure_encoders import DescriptorEncoder

    wanted = {canonical_formula(f) for f in gap_rows["formula"]}
    mp = pd.read_csv(data_dir / "mp_structures" / "structures.csv.gz", usecols=["formula", "cif"])
    mp["key"] = mp["formula"].map(canonical_formula)
    mp = mp[mp["key"].isin(wanted)].drop_duplicates("key").head(40)
    assert len(mp) == 40
    vec, _ = DescriptorEncoder()([parse_structure(c) for c in mp["cif"]])
    path = tmp_path_factory.mktemp("structure_targets") / "vectors.parquet"
    pd.DataFrame({"formula": mp["formula"].to_numpy(), "embedding": list(vec)}).to_parquet(path)
    return path


def test_lookup_by_composition_and_zscore(vectors_table):
    vectors = structure_vectors(str(vectors_table))
    key, vec = next(iter(vectors.items()))
    reordered = "".join(reversed([f"{el}{n:g}" for el, n in _counts(key)]))  # same composition, other order
    # a training split holds canonical formulas: another element order of the same composition finds the same vector
    aux = StructureAuxiliary(vectors, [key, "Xe", canonical_formula(reordered), key], hidden_size=8, weight=2.0)
    assert aux.mask.tolist() == [True, False, True, True]
    assert aux.summary()["training_rows_with_structure"] == "3 of 4"
    assert torch.equal(aux.targets[1], torch.zeros(aux.dim))  # no structure: no target
    # z-scored over the rows that have a target; three equal vectors: centred to zero
    assert torch.allclose(aux.targets[[0, 2, 3]], torch.zeros(3, aux.dim))
    pooled = torch.randn(4, 8, requires_grad=True)
    none = aux.loss(torch.tensor([1]), pooled[[1]])
    assert float(none.detach()) == 0.0
    loss = aux.loss(torch.tensor([0, 1]), pooled[[0, 1]])
    expected = 2.0 * float(((aux.head(pooled[[0]]) - aux.targets[[0]]) ** 2).mean())
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert pooled.grad[0].abs().sum() > 0 and pooled.grad[1].abs().sum() == 0
    with pytest.raises(DataError, match="none of the training rows"):
        StructureAuxiliary(vectors, ["Xe", "Kr"], hidden_size=8, weight=1.0)


def _counts(formula: str) -> list[tuple[str, float]]:
    from pymatgen.core import Composition

    return list(Composition(formula).get_el_amt_dict().items())


def test_bad_tables_name_the_row(tmp_path, vectors_table):
    good = pd.read_parquet(vectors_table)
    cases = {
        "missing column": (good.rename(columns={"embedding": "vec"}), r"missing column\(s\) \['embedding'\]"),
        "bad formula": (good.assign(formula=["Fe2O3"] + ["Qq2"] + good["formula"].tolist()[2:]), "row 1: formula 'Qq2'"),
        "short vector": (good.assign(embedding=[np.ones(3, np.float32)] + good["embedding"].tolist()[1:]),
                         "row 0 .*length 3"),
        "nan": (good.assign(embedding=good["embedding"].tolist()[:5]
                            + [np.full(len(good["embedding"][0]), np.nan, np.float32)] + good["embedding"].tolist()[6:]),
                "row 5: the vector holds non-finite"),
    }
    for name, (frame, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.parquet"
        frame.to_parquet(path)
        with pytest.raises(DataError, match=message):
            structure_vectors(str(path))


def test_recipe_needs_targets_and_a_property_stage(expt_gap_csv):
    base = {"stage": "finetune", "data": {"train": str(expt_gap_csv(300)), "target_column": "gap"},
            "train": {"max_steps": 2, "batch_size": 32, "progress_bar": False}}
    with pytest.raises(RecipeError, match="structure_aux_weight.*needs a property stage and data.structure_targets"):
        validate_recipe(apply_overrides(base, ["train.structure_aux_weight=1.0"]))
    with pytest.raises(RecipeError, match="non-negative number"):
        validate_recipe(apply_overrides(base, ["train.structure_aux_weight=-1", "data.structure_targets=x.parquet"]))


def _aux_recipe(csv, table, **train) -> dict:
    """A small fine-tuning recipe on real expt_gap rows with the structure auxiliary's table."""
    return {"stage": "finetune",
            "model": {"config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 64}},
            "data": {"train": str(csv), "target_column": "gap", "structure_targets": str(table)},
            "train": {"batch_size": 32, "progress_bar": False, "calibrate": False, **train}}


def test_finetune_with_structure_aux(tmp_path, expt_gap_csv, vectors_table):
    """Same seed, data and steps with and without the auxiliary: the auxiliary changes the trained encoder, the run
    reports its coverage, and the saved folder is a plain formula model (no read-out weights)."""
    from safetensors.torch import load_file

    weights = {}
    for w in (0.0, 1.0):
        recipe = _aux_recipe(expt_gap_csv(300), vectors_table, max_steps=30, structure_aux_weight=w)
        out = run_recipe(recipe, tmp_path / f"aux_{w}")
        weights[w] = load_file(str(out / "model.safetensors"))
        info = json.loads((out / "training_info.json").read_text())
        if w:  # expt_gap formulas are distinct: at most the 40 table rows, minus those carved out for validation
            covered = int(info["data"]["structure_aux"]["training_rows_with_structure"].split()[0])
            assert 30 <= covered <= 40, info["data"]["structure_aux"]
    assert weights[0.0].keys() == weights[1.0].keys()  # the read-out is not saved with the model
    moved = [k for k in weights[0.0] if not torch.equal(weights[0.0][k], weights[1.0][k])]
    assert any(k.startswith("crossmat.layers.") for k in moved)


def test_kill_and_resume_with_structure_aux_is_exact(tmp_path, expt_gap_csv, vectors_table):
    """The read-out is saved with every checkpoint: a run killed after step 20 and resumed ends with the same
    weights as an uninterrupted run."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    recipe = _aux_recipe(expt_gap_csv(300), vectors_table, max_steps=40, structure_aux_weight=1.0,
                         checkpoint_every=20, resume="auto")
    script = ("import json, sys\nfrom crossmat.training import run_recipe\n"
              "run_recipe(json.loads(sys.argv[1]), sys.argv[2])\n")

    def run(out: str, fault: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, **({"CROSSMAT_TRAIN_FAULT_AFTER_STEP": fault} if fault else {})}
        return subprocess.run([sys.executable, "-c", script, json.dumps(recipe), str(tmp_path / out)], env=env,
                              capture_output=True, text=True, timeout=300)

    assert run("full").returncode == 0
    assert run("killed", fault="20").returncode != 0
    assert (tmp_path / "killed" / "checkpoints" / "step_000000020" / "model_1.safetensors").is_file()  # the read-out
    resumed = run("killed")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr
    full, res = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert all(torch.equal(full[k], res[k]) for k in full)
