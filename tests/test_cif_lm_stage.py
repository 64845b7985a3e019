"""The cif_lm stage: CIF augmentation forms, the sharded corpus with rejected rows, training through train.py with
checkpoints and resume, and the recipe checks."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.io.cif import CifParser

from crossmat.dataset_builders.cif_corpus import CorpusError, build_cif_corpus
from crossmat.explicit_transfer.cif_lm import CIFLanguageModelGenerator, build_cif_tokenizer, encode_cif, render_cif
from crossmat.training import run_recipe
from crossmat.training.cif_lm_stage import _split_by_formula
from crossmat.training.recipe import RecipeError, validate_recipe

warnings.filterwarnings("ignore")
TINY = {"n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 512}


@pytest.fixture(scope="module")
def tables(data_dir, tmp_path_factory):
    """30 real perov_5 train rows (one CIF broken on purpose) and 12 real MP rows (two longer than 512 tokens as P1)."""
    root = tmp_path_factory.mktemp("cif_tables")
    p5 = pd.read_csv(data_dir / "perov_5" / "train_structures.csv.gz", nrows=30)
    p5.loc[3, "cif"] = "data_broken\n_cell_length_a 3.0\n"
    p5.to_csv(root / "p5.csv", index=False)
    mp = pd.read_csv(data_dir / "mp_structures" / "structures.csv.gz", nrows=12)
    mp.to_parquet(root / "mp.parquet")
    return root, p5, mp


def _parse(text: str) -> Structure:
    return CifParser.from_str(text).parse_structures(primitive=False)[0]


def test_render_forms_round_trip_to_the_same_crystal(tables):
    _, p5, mp = tables
    matcher = StructureMatcher()
    for cif in [p5.cif[0], p5.cif[1], mp.cif[2], mp.cif[5]]:
        s = Structure.from_str(cif, fmt="cif")
        for form in ("symmetrized", "p1"):
            text = render_cif(s, form)
            assert "_symmetry_equiv_pos_as_xyz" not in text  # operations rebuilt from the space-group symbol
            back = _parse(text)
            assert matcher.fit(s, back), (form, cif[:60])
            assert text.startswith("data_") and text.endswith("\n\n")
            assert Composition(text.split("\n", 1)[0][5:]) == back.composition  # header = written cell
        assert render_cif(s, "p1").count("\n") >= render_cif(s, "symmetrized").count("\n")
    coords = re.findall(r" (-?\d+\.\d+)", render_cif(Structure.from_str(p5.cif[0], fmt="cif"), "p1", decimals=3))
    assert coords and all(len(c.split(".")[1]) == 3 for c in coords)
    with pytest.raises(ValueError, match="CIF form 'conventional'"):
        render_cif(Structure.from_str(p5.cif[0], fmt="cif"), "conventional")


def test_corpus_reports_rejected_rows_and_resumes_by_shard(tables, tmp_path):
    root, p5, mp = tables
    tok = build_cif_tokenizer()
    kw = {"forms": ["symmetrized", "p1"], "max_tokens": 512, "shard_size": 8, "workers": 1, "progress": False}
    corpus = build_cif_corpus([root / "p5.csv", root / "mp.parquet"], tok, tmp_path / "c", **kw)
    assert len(corpus) == 2 * (len(p5) + len(mp))
    bad = corpus[(corpus.source == "p5.csv") & (corpus.row == 3)]
    assert len(bad) == 2 and bad.reason.str.startswith("CIF does not parse").all() and bad.text.isna().all()
    long = corpus[corpus.reason.fillna("").str.contains("> context 512")]
    assert len(long) >= 1 and (long.n_tokens > 512).all()
    kept = corpus[corpus.reason.isna()]
    assert kept.text.notna().all() and (kept.n_tokens.between(1, 512)).all()
    first = kept.iloc[0]  # the stored ids are the text's tokens (training does not tokenize again)
    assert list(first.input_ids) == encode_cif(tok, first.text) and len(first.input_ids) == first.n_tokens
    # formula = the parsed structure's reduced formula (validation holds out whole compositions)
    assert first.formula == Structure.from_str(p5.cif[int(first.row)], fmt="cif").composition.reduced_formula
    assert corpus[corpus.reason.notna()].input_ids.isna().all()
    # resume: a deleted shard is rebuilt, finished shards are read back, the corpus is identical
    shards = sorted((tmp_path / "c").glob("p5-*/shard_*.parquet"))
    assert len(shards) == 4
    shards[1].unlink()
    again = build_cif_corpus([root / "p5.csv", root / "mp.parquet"], tok, tmp_path / "c", **kw)
    pd.testing.assert_frame_equal(corpus, again)
    with pytest.raises(CorpusError, match="no 'structure' column"):
        build_cif_corpus([root / "p5.csv"], tok, tmp_path / "c", cif_column="structure", progress=False)
    with pytest.raises(CorpusError, match="does not exist"):
        build_cif_corpus([root / "missing.csv"], tok, tmp_path / "c", progress=False)


def test_validation_split_holds_out_whole_formulas():
    frame = pd.DataFrame({"formula": [f"F{i // 2}" for i in range(200)]})
    train, val = _split_by_formula(frame, 0.2, seed=0)
    assert val.sum() == 40 and not (set(frame.formula[train]) & set(frame.formula[val]))


def _recipe(root, out_steps=4, **train):
    return {"name": "cif_lm", "stage": "cif_lm", "seed": 0, "model": {"config": TINY},
            "data": {"train": [str(root / "p5.csv"), str(root / "mp.parquet")], "validation_fraction": 0.2},
            "train": {"max_steps": out_steps, "batch_size": 4, "checkpoint_every": 2, "eval_every": 2,
                      "log_every": 1, "trackers": "none", "progress_bar": False, **train}}


def test_cif_lm_stage_trains_checkpoints_and_resumes(tables, tmp_path, capsys):
    root, _, _ = tables
    out = tmp_path / "run"
    folder = run_recipe(_recipe(root), out)
    assert folder == out
    info = json.loads((out / "training_info.json").read_text())
    assert info["stage"] == "cif_lm" and info["training"]["steps"] == 4
    assert info["data"]["rejected"] >= 3 and info["data"]["texts_validation"] > 0
    assert np.isfinite(info["metrics"]["validation"]["loss"])
    rejected = pd.read_csv(out / "rejected_rows.csv")
    assert {"source", "row", "reason"} <= set(rejected.columns) and "text" not in rejected.columns
    assert not (out / "training_args.bin").exists()  # no pickle in the model folder
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "CIFLanguageModelGenerator" in card
    assert "match_at_1" not in card  # nothing measured yet
    # measured crystal-structure-prediction numbers go into the card's model-index and prose
    from crossmat.training.cif_lm_stage import write_cif_lm_card

    write_cif_lm_card(out, {"dataset": "perov_5", "split": "test", "n_targets": 300, "samples_per_formula": 20,
                            "validity": 0.898, "match_at_1": 0.543, "match_at_20": 1.0, "how": "constrained"})
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    values = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert values == {"validity": 0.898, "match_at_1": 0.543, "match_at_20": 1.0}
    assert "89.8% valid CIFs, match@1 54.3%" in card and "4 steps" in card
    gen = CIFLanguageModelGenerator.from_pretrained(out, n_samples=1, z_values=(1,), max_new_tokens=8)
    assert gen.sample("data_SrTiO3\n", 1)[0][0].startswith("data_SrTiO3\n")
    # resume from the step-2 checkpoint after losing the last one: training continues to step 4
    import shutil

    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    capsys.readouterr()
    run_recipe(_recipe(root), out, ["train.resume=true"])
    printed = capsys.readouterr().out
    assert re.search(r"resuming from \S*checkpoint-2\b", printed), printed[-500:]
    assert json.loads((out / "training_info.json").read_text())["training"]["steps"] == 4
    # a changed recipe is refused on resume, naming the key
    with pytest.raises(RecipeError, match="train.learning_rate"):
        run_recipe(_recipe(root, learning_rate=5e-4), out, ["train.resume=true"])


@pytest.mark.parametrize(("change", "message"), [
    ({"data": {"train": "x.csv", "cif_forms": ["cubic"]}}, "data.cif_forms"),
    ({"data": {"train": "x.csv", "cif_decimals": [0]}}, "data.cif_decimals"),
    ({"model": {"config": {"hidden_size": 64}}, "data": {"train": "x.csv"}}, "unknown cif_lm model.config"),
    ({"data": {"train": "x.csv", "test": "y.csv"}}, "no test split"),
])
def test_cif_lm_recipe_errors_name_the_key(change, message):
    with pytest.raises(RecipeError, match=message):
        validate_recipe({"stage": "cif_lm", **change})
