"""Fast in-process tests of training: recipe validation, MLM collator, bad input failing before training."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from crossmat.tokenization import CrossMatTokenizerFast
from crossmat.tokenization.vocabulary import ELEMENT_START, MASK_ID, NUM_ELEMENTS
from crossmat.training import MaskedElementCollator, RecipeError, apply_overrides, run_recipe, validate_recipe


@pytest.fixture(scope="module")
def gap_csv(expt_gap_csv) -> Path:
    return expt_gap_csv(300)


def _stage(gap_csv: Path, **extra) -> dict:
    recipe = {
        "stage": "finetune",
        "model": {"config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}},
        "data": {"train": str(gap_csv), "target_column": "gap"},
        "train": {"max_steps": 2, "batch_size": 32, "progress_bar": False},
    }
    for key, value in extra.items():
        recipe = apply_overrides(recipe, [f"{key}={json.dumps(value)}"])
    return recipe


def test_recipe_rejects_unknown_and_bad_keys(gap_csv):
    with pytest.raises(RecipeError, match=r"unknown recipe key\(s\) \['learning_rat'\] under 'train'"):
        validate_recipe({**_stage(gap_csv), "train": {"learning_rat": 1e-3}})
    with pytest.raises(RecipeError, match=r"unknown recipe key\(s\) \['optimiser'\]"):
        validate_recipe({**_stage(gap_csv), "optimiser": "adam"})
    with pytest.raises(RecipeError, match="train.mixed_precision"):
        validate_recipe(_stage(gap_csv, **{"train.mixed_precision": "fp8"}))
    with pytest.raises(RecipeError, match="needs 'data.target_column'"):
        validate_recipe({"stage": "finetune", "data": {"train": str(gap_csv)}})
    with pytest.raises(RecipeError, match="names no earlier stage"):
        validate_recipe({"pipeline": [{"stage": "mlm", "name": "a", "data": {"train": "x"}},
                                      {"stage": "finetune", "model": {"init_from": "@b"},
                                       "data": {"train": "x", "target_column": "y"}}]})
    resolved = validate_recipe(_stage(gap_csv, **{"train.learning_rate": 0.5}))[0]
    assert resolved.train.learning_rate == 0.5 and resolved.train.epochs == 3  # default filled
    piped = apply_overrides({"pipeline": [{"name": "a", "stage": "mlm"}, {"name": "b", "stage": "mlm"}]},
                            ["b.train.epochs=7", "seed=3"])
    assert piped["pipeline"][1]["train"]["epochs"] == 7 and "train" not in piped["pipeline"][0]


def test_collator_masks_only_elements_and_is_deterministic():
    tok = CrossMatTokenizerFast()
    enc = tok(["Fe2O3", "Li0.5Co0.5O2", "NaCl", "(NH4)2SO4", "Si"], padding=True, return_tensors="pt")
    col = MaskedElementCollator(mlm_probability=0.3, seed=1)
    rows = torch.arange(5)
    ids, labels = col.mask(enc["input_ids"], rows)
    orig = enc["input_ids"]
    is_elem = (orig >= ELEMENT_START) & (orig < ELEMENT_START + NUM_ELEMENTS)
    scored = labels != -100
    assert bool((scored <= is_elem).all()), "labels must be -100 on every non-element token"
    assert bool(scored.any(1).all()), "every formula gets at least one masked element"
    assert bool((labels[scored] == orig[scored]).all())
    assert bool((ids[~scored] == orig[~scored]).all()), "unselected tokens are unchanged"
    changed = ids[scored]
    assert bool((((changed >= ELEMENT_START) & (changed < ELEMENT_START + NUM_ELEMENTS)) | (changed == MASK_ID)).all())
    again, labels2 = col.mask(enc["input_ids"], rows)
    assert torch.equal(again, ids) and torch.equal(labels2, labels)
    # selection rate on 2-element formulas: 2*p plus the at-least-one rule, (1-p)^2, per 2 elements
    big = tok(["Fe2O3"] * 4000, return_tensors="pt", padding=True)
    _, lab = col.mask(big["input_ids"], torch.arange(4000))
    rate = float((lab != -100).sum()) / (4000 * 2)
    assert abs(rate - (2 * 0.3 + 0.7**2) / 2) < 0.03
    col.set_epoch(1)
    _, lab1 = col.mask(big["input_ids"], torch.arange(4000))
    assert not torch.equal(lab1, lab), "a new epoch draws new masks"
    batch = col([{"input_ids": tok("NaCl")["input_ids"], "row_id": 0}, {"input_ids": tok("Fe2O3")["input_ids"], "row_id": 1}])
    assert set(batch) >= {"input_ids", "attention_mask", "labels"} and "clean_input_ids" not in batch
    # clean-view alignment (imKT alignment_input="clean"): the same masks, plus the unmasked ids beside them
    clean = MaskedElementCollator(mlm_probability=0.3, seed=1, keep_clean=True)
    kept = clean.mask_batch({"input_ids": enc["input_ids"], "row_id": rows})
    assert torch.equal(kept["clean_input_ids"], orig) and torch.equal(kept["input_ids"], ids)
    assert torch.equal(kept["labels"], labels)


def test_bad_input_fails_before_training(gap_csv, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match=r"column\(s\) \['band_gap'\] not found"):
        run_recipe(_stage(gap_csv, **{"data.target_column": "band_gap"}), out)
    pd.read_csv(gap_csv).rename(columns={"formula": "composition"}).to_csv(tmp_path / "renamed.csv", index=False)
    with pytest.raises(RecipeError, match=r"\['formula'\] not found \(column 'composition' holds formulas: "
                                          r"data.formula_column=composition\)"):
        run_recipe(_stage(gap_csv, **{"data.train": str(tmp_path / "renamed.csv")}), out)
    bad = pd.read_csv(gap_csv)
    bad["gap"] = bad["gap"].astype(object)
    bad.loc[5, "gap"] = "metallic"
    bad.to_csv(tmp_path / "typed.csv", index=False)
    with pytest.raises(RecipeError, match=r"target column 'gap' is not numeric \(row 5 holds 'metallic'\)"):
        run_recipe(_stage(gap_csv, **{"data.train": str(tmp_path / "typed.csv"), "data.validation_fraction": 0.0}), out)
    bad = pd.read_csv(gap_csv)
    bad.loc[7, "formula"] = "Fe2Xx3"
    bad.to_csv(tmp_path / "formula.csv", index=False)
    recipe = _stage(gap_csv, **{"data.train": str(tmp_path / "formula.csv"), "data.validation_fraction": 0.0})
    with pytest.raises(RecipeError, match=r"train row 7: invalid formula 'Fe2Xx3': unknown element 'Xx'"):
        run_recipe(recipe, out)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(RecipeError, match=r"is a 'bert' model .*a CrossMat checkpoint is needed"):
        run_recipe(_stage(gap_csv, **{"model.init_from": str(other)}), out)
    assert not (out / "metrics.jsonl").exists(), "nothing may train on bad input"
    # on_invalid=skip trains and reports the rejected row instead of dropping it silently
    skipped = run_recipe(apply_overrides(recipe, ["data.on_invalid=skip"]), tmp_path / "skip")
    rejected = pd.read_csv(skipped / "rejected_rows.csv")
    assert rejected[["row", "formula"]].values.tolist() == [[7, "Fe2Xx3"]]


def test_shipped_configs_validate_and_llm4mat_recipe_trains(tmp_path, data_dir):
    from crossmat.training import load_recipe

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert any(c.name == "quickstart.yaml" for c in configs)
    for path in configs:
        recipe = load_recipe(path)
        if path.stem == "default":  # the default fine-tuning recipe: files come from the user (data.*=...)
            recipe["data"].update(train="train.csv", target_column="y")
        validate_recipe(recipe)
    recipe = load_recipe(configs[0].parent / "llm4mat_finetune.yaml")
    out = run_recipe(recipe, tmp_path / "llm4mat", overrides=[
        f"model.config={json.dumps({'hidden_size': 32, 'num_hidden_layers': 1, 'num_attention_heads': 2, 'intermediate_size': 64})}",
        "train.max_steps=2", "train.progress_bar=false"])
    info = json.loads((out / "training_info.json").read_text())
    assert info["data"]["rows"] == {"train": 10, "validation": 10, "test": 10}
    assert set(info["metrics"]["test"]) >= {"mae", "rmse", "r2"}


def test_own_csv_run_outputs_say_what_they_are(tmp_path, gap_csv):
    """A run on the user's own train/validation/test CSVs: test_predictions.csv is ``formula, target,
    prediction`` at full precision; the card lists the training data only, attributes each metric to its
    split's file, has no local paths in its metadata, no MatBench tag or notes; the unit reaches the
    config and the pipeline output."""
    import yaml
    from transformers import pipeline

    from crossmat.inference import load_pipeline

    df = pd.read_csv(gap_csv)
    df["gap"] = df["gap"] + 1e-9 * torch.arange(len(df)).double().numpy()  # digits a 4-decimal round loses
    files = {}
    for split, part in (("train", df.iloc[:200]), ("validation", df.iloc[200:250]), ("test", df.iloc[250:])):
        files[split] = tmp_path / f"{split}.csv"
        part.to_csv(files[split], index=False, float_format="%.17g")
    recipe = _stage(gap_csv, **{f"data.{k}": str(v) for k, v in files.items()}, **{"data.id_column": "id"})
    recipe["card"] = {"property_unit": "eV", "property_name": "band gap"}
    out = run_recipe(recipe, tmp_path / "run")
    pred = pd.read_csv(out / "test_predictions.csv")
    # the validation file calibrated the model: every test prediction carries its standard deviation
    assert list(pred.columns) == ["id", "formula", "target", "prediction", "uncertainty"]
    assert (pred["uncertainty"] > 0).all()
    test_df = pd.read_csv(files["test"])
    assert pred["id"].tolist() == test_df["id"].tolist()
    assert pred["formula"].tolist() == test_df["formula"].tolist()
    assert (pred["target"].to_numpy() == test_df["gap"].to_numpy()).all()  # exact float64 round trip
    text = (out / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert str(tmp_path) not in json.dumps(meta) and "matbench" not in meta["tags"]
    assert not meta.get("datasets")  # local files are not Hub ids: described in the prose only
    training_section = text.split("## Training data")[1].split("### Leakage notes")[0]
    assert "Trained on train.csv" in training_section and " test.csv" not in training_section
    by_split = {r["dataset"]["name"]: r for r in meta["model-index"][0]["results"]}
    assert {n.split(" ")[0] for n in by_split} == {"validation.csv", "test.csv"}
    for r in meta["model-index"][0]["results"]:
        assert r["dataset"]["name"].startswith(f"{r['dataset']['split']}.csv")
    assert "MatBench" not in text.split("### Leakage notes")[1].split("##")[0]
    assert "distinct test formulas also occur in the training split" in text
    assert json.loads((out / "config.json").read_text())["target_units"] == ["eV"]
    assert load_pipeline(out)("NaCl")["unit"] == "eV"
    assert pipeline("composition-property-prediction", model=str(out), trust_remote_code=True)(["NaCl"])[0]["unit"] == "eV"


def test_every_recipe_key_is_documented():
    """docs/training.md's key table lists every stage key of the schema (data.id_column was missing)."""
    from crossmat.training.recipe import STAGE_DEFAULTS

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    keys = [f"{k}.{s}" if isinstance(v, dict) and k != "card" else k for k, v in STAGE_DEFAULTS.items()
            for s in (v if isinstance(v, dict) and k != "card" else [None])]
    assert [k for k in keys if f"`{k}`" not in text] == []


def test_progress_is_never_silent(tmp_path, gap_csv, capfd, monkeypatch):
    """progress_bar: false and log_every: 100000 (as the benchmark recipes had) still report progress
    without a terminal: status lines with step, loss, rate and ETA; a terminal gets a tqdm bar."""
    import io

    from crossmat.training.progress import StatusLine, _Bar, training_progress

    monkeypatch.setenv("CROSSMAT_PROGRESS_SECONDS", "0")
    recipe = _stage(gap_csv, **{"train.progress_bar": False, "train.log_every": 100000, "train.max_steps": 3})
    run_recipe(recipe, tmp_path / "run")
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("[crossmat] finetune: step")]
    assert lines[0].startswith("[crossmat] finetune: step 0/3 (0%)") and "started" in lines[0]
    assert any(ln.startswith("[crossmat] finetune: step 2/3 (67%), epoch 0, loss ") and "ETA" in ln for ln in lines)
    assert lines[-1].startswith("[crossmat] finetune: step 3/3 (100%)") and lines[-1].endswith("done")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(training_progress(10, 0, "x", stream=Tty()), _Bar)
    assert isinstance(training_progress(10, 0, "x", bar=False, stream=Tty()), StatusLine)
    assert isinstance(training_progress(10, 0, "x", stream=io.StringIO()), StatusLine)


def test_recipes_state_budget_in_steps_and_docs_have_the_budget_table():
    repo = Path(__file__).resolve().parents[1]
    recipes = sorted([*(repo / "configs").glob("*.yaml"), *(repo / "benchmarks" / "matbench" / "recipes").glob("*.yaml")])
    assert len(recipes) > 10
    for path in recipes:
        budget = [ln for ln in path.read_text().splitlines() if ln.startswith("# budget:")]
        assert budget and "step" in budget[0], f"{path.name}: no '# budget: ... steps' comment"
    doc = (repo / "docs" / "training.md").read_text()
    assert "## Budgets" in doc and "| training rows n |" in doc and "samples/s" in doc


def test_accelerate_launch_without_defaults_warning_and_correct_multiprocess_docs():
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[1]
    cfg = repo / "configs" / "accelerate" / "single_process.yaml"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg),
                           str(repo / "train.py"), "--help"], capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 0 and "usage: train.py" in proc.stdout
    assert "were not passed" not in proc.stdout + proc.stderr
    two = yaml.safe_load((repo / "configs" / "accelerate" / "two_processes.yaml").read_text())
    assert (two["distributed_type"], two["num_processes"], two["use_cpu"]) == ("MULTI_GPU", 2, False)
    for doc in (repo / "docs").glob("*.md"):  # `--cpu --num_processes N` starts one process: never recommended
        for line in doc.read_text().splitlines():
            assert not line.startswith("accelerate launch --cpu --num_processes"), (doc.name, line)


def test_test_predictions_frame_columns_with_and_without_uncertainty():
    import numpy as np

    from crossmat.training.data import TensorSplit
    from crossmat.training.folder import prediction_table

    y = np.array([[1.123456789012], [2.5]])
    split = TensorSplit({"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": torch.tensor(y, dtype=torch.float32)},
                        ["Fe2O3", "NaCl"], targets=y, source_formulas=["Fe2O3", "NaCl"], ids=["a", "b"])
    logits = np.array([[0.987654321], [2.0]], dtype=np.float32)
    plain = prediction_table(split, {"logits": logits}, ["gap"], regression=True)
    assert list(plain.columns) == ["id", "formula", "target", "prediction"]
    assert plain["target"].tolist() == [1.123456789012, 2.5] and plain["prediction"][0] == float(np.float32(0.987654321))
    unc = prediction_table(split, {"logits": logits, "uncertainty": np.array([[0.1], [0.2]])}, ["gap"], regression=True)
    assert list(unc.columns) == ["id", "formula", "target", "prediction", "uncertainty"]
    two = TensorSplit(split.tensors, split.formulas, targets=np.hstack([y, y]), source_formulas=split.formulas)
    multi = prediction_table(two, {"logits": np.hstack([logits, logits])}, ["a", "b"], regression=True)
    assert list(multi.columns) == ["formula", "target_a", "prediction_a", "target_b", "prediction_b"]
    cls = TensorSplit(split.tensors, split.formulas, targets=np.array([[0.0], [1.0]]), source_formulas=split.formulas)
    out = prediction_table(cls, {"logits": np.array([[2.0, 0.0], [0.0, 2.0]])}, ["is_metal"], regression=False)
    assert list(out.columns) == ["formula", "target", "prediction", "probability"]
    assert out["prediction"].tolist() == [0, 1] and out["target"].tolist() == [0, 1]


def test_layer_lr_decay_groups():
    """train.layer_lr_decay: the head at the full rate, each encoder layer one factor lower going down, the
    embeddings lowest; 1.0 keeps the two plain groups (decay / no decay)."""
    from crossmat.modeling import CrossMatConfig, CrossMatForPropertyPrediction
    from crossmat.training.loop import parameter_groups

    model = CrossMatForPropertyPrediction(CrossMatConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                         intermediate_size=64, num_labels=1))
    plain = parameter_groups(model, 0.01, 1.0, 1e-3)
    assert [(g["lr"], g["weight_decay"]) for g in plain] == [(1e-3, 0.01), (1e-3, 0.0)]
    groups = parameter_groups(model, 0.01, 0.5, 1e-3)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["head.3.weight"])] == 1e-3
    assert lr_of[id(named["crossmat.layers.2.fc1.weight"])] == 5e-4
    assert lr_of[id(named["crossmat.layers.0.fc1.weight"])] == 1.25e-4
    emb = [n for n in named if n.startswith("crossmat.embeddings.")]
    assert emb and all(lr_of[id(named[n])] == 6.25e-5 for n in emb)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_anchor_weight_keeps_the_backbone_embedding(tmp_path, gap_csv):
    """train.anchor_weight: the fine-tuned encoder's pooled embedding stays closer to the shipped backbone's than
    the same run without the anchor (same seed, data, steps); the key needs a pretrained backbone."""
    import torch.nn.functional as F

    from crossmat.modeling import CrossMatForPropertyPrediction
    from crossmat.modeling.pretrained import resolve_model_path

    with pytest.raises(RecipeError, match="anchor_weight.*needs a property stage with model.init_from"):
        validate_recipe(_stage(gap_csv, **{"train.anchor_weight": 1.0}))
    with pytest.raises(RecipeError, match="non-negative"):
        validate_recipe(_stage(gap_csv, **{"train.anchor_weight": -1}))
    formulas = pd.read_csv(gap_csv)["formula"].tolist()[:64]
    tok = CrossMatTokenizerFast()
    enc = tok(formulas, padding=True, return_tensors="pt")
    backbone = resolve_model_path("crossmat-imkt-mp-small")

    def pooled(path) -> torch.Tensor:
        model = CrossMatForPropertyPrediction.from_pretrained(str(path)).eval()
        with torch.no_grad():
            return model.crossmat(enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output

    start = pooled(backbone)
    drift = {}
    for weight in (0.0, 5.0):
        recipe = {"stage": "finetune", "model": {"init_from": "crossmat-imkt-mp-small"},
                  "data": {"train": str(gap_csv), "target_column": "gap"},
                  "train": {"max_steps": 40, "batch_size": 32, "learning_rate": 3e-3, "progress_bar": False,
                            "calibrate": False, "anchor_weight": weight}}
        out = run_recipe(recipe, tmp_path / f"anchor_{weight}")
        drift[weight] = float((1 - F.cosine_similarity(pooled(out), start, dim=-1)).mean())
    assert drift[5.0] < 0.5 * drift[0.0], drift


def test_freeze_encoder_epochs_trains_the_head_first(tmp_path, gap_csv):
    """train.freeze_encoder_epochs: while frozen the backbone's encoder weights do not move and the head does; after
    the frozen epochs everything trains; the frozen element table stays frozen; the key needs a backbone."""
    from safetensors.torch import load_file

    from crossmat.modeling.pretrained import resolve_model_path

    with pytest.raises(RecipeError, match="freeze_encoder_epochs.*needs a property stage with model.init_from"):
        validate_recipe(_stage(gap_csv, **{"train.freeze_encoder_epochs": 1}))
    with pytest.raises(RecipeError, match="non-negative integer"):
        validate_recipe(_stage(gap_csv, **{"train.freeze_encoder_epochs": -1}))
    start = load_file(str(resolve_model_path("crossmat-imkt-mp-small") / "model.safetensors"))
    moved = {}
    for frozen, epochs in ((2, 2), (1, 2)):
        recipe = {"stage": "finetune", "model": {"init_from": "crossmat-imkt-mp-small"},
                  "data": {"train": str(gap_csv), "target_column": "gap"},
                  "train": {"epochs": epochs, "batch_size": 32, "learning_rate": 3e-3, "progress_bar": False,
                            "calibrate": False, "freeze_encoder_epochs": frozen}}
        weights = load_file(str(run_recipe(recipe, tmp_path / f"freeze_{frozen}_{epochs}") / "model.safetensors"))
        moved[frozen] = {k for k, v in weights.items() if k not in start or not torch.equal(v, start[k])}
    encoder = {k for k in start if k.startswith("crossmat.") and "element_feature_table" not in k}
    assert any(k.startswith("head.") for k in moved[2])  # all epochs frozen: the head trains, the encoder not
    assert not (moved[2] & encoder), sorted(moved[2] & encoder)[:5]
    assert moved[1] & encoder  # one frozen epoch of two: the encoder trained in the second
    assert not any("element_feature_table" in k for k in moved[1])


def test_fine_tuning_a_backbone_does_not_depend_on_the_process_random_state(tmp_path, gap_csv):
    """The new head of a fine-tuned backbone comes from the recipe's seed: the same recipe gives the same weights
    whatever the process drew before (torch seeds itself at random at start-up, so a first fold used to differ)."""
    from safetensors.torch import load_file

    recipe = {"stage": "finetune", "model": {"init_from": "crossmat-imkt-mp-small", "config": {"ensemble_size": 2}},
              "data": {"train": str(gap_csv), "target_column": "gap"},
              "train": {"max_steps": 2, "batch_size": 32, "progress_bar": False, "calibrate": False}}
    weights = []
    for i, state in enumerate((1, 2)):
        torch.manual_seed(state)
        torch.rand(state * 7)
        weights.append(load_file(str(run_recipe(recipe, tmp_path / f"run{i}") / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_structure_branch_keeps_a_frozen_copy_of_the_backbone(tmp_path, gap_csv):
    """model.config.structure_branch: after fine-tuning the branch still holds the backbone's encoder weights (the
    fine-tuned encoder moved), the head reads both pooled embeddings, the saved model reloads with the branch frozen
    and in eval mode; the key needs a backbone."""
    from safetensors.torch import load_file

    from crossmat.modeling import CrossMatForPropertyPrediction
    from crossmat.modeling.pretrained import resolve_model_path

    with pytest.raises(RecipeError, match="structure_branch.*needs a property stage with model.init_from"):
        validate_recipe(_stage(gap_csv, **{"model.config.structure_branch": True}))
    start = load_file(str(resolve_model_path("crossmat-imkt-mp-small") / "model.safetensors"))
    recipe = {"stage": "finetune", "model": {"init_from": "crossmat-imkt-mp-small", "config": {"structure_branch": True}},
              "data": {"train": str(gap_csv), "target_column": "gap"},
              "train": {"max_steps": 20, "batch_size": 32, "learning_rate": 3e-3, "progress_bar": False,
                        "calibrate": False}}
    out = run_recipe(recipe, tmp_path / "branch")
    weights = load_file(str(out / "model.safetensors"))
    encoder = [k for k in start if k.startswith("crossmat.")]
    assert all(torch.equal(weights["structure_branch." + k[len("crossmat."):]], start[k]) for k in encoder)
    assert any(not torch.equal(weights[k], start[k]) for k in encoder if "element_feature_table" not in k)
    assert weights["head.0.weight"].shape[1] == 2 * weights["crossmat.embeddings.layer_norm.weight"].shape[0]
    model = CrossMatForPropertyPrediction.from_pretrained(str(out)).train()
    assert not model.structure_branch.training and not any(p.requires_grad for p in model.structure_branch.parameters())
    enc = CrossMatTokenizerFast()(["Fe2O3", "NaCl", "GaAs"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        first = model(**enc).logits
        model.structure_branch.embeddings.layer_norm.weight.mul_(0.5)  # the head does read the frozen branch
        assert not torch.allclose(model(**enc).logits, first)


def test_swa_guard_keeps_the_average_unless_the_checkpoint_is_clearly_better(tmp_path, gap_csv):
    """train.swa_guard_z: a paired z-score over validation rows decides; noise-sized differences keep the SWA
    average, a large consistent one keeps the checkpoint; a run records what was decided; bad values fail early."""
    import numpy as np

    from crossmat.training.loop import swa_guard_decision

    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.3, size=400)
    noise = base + rng.normal(0, 0.3, size=400)
    assert not swa_guard_decision(noise, base, 4.0)[1]
    score, keep = swa_guard_decision(base + 0.2 + rng.normal(0, 0.05, size=400), base, 4.0)
    assert keep and score > 4
    assert swa_guard_decision(base, base + 0.2, 4.0) == (pytest.approx(swa_guard_decision(base, base + 0.2, 4.0)[0]), False)
    with pytest.raises(RecipeError, match="swa_guard_z"):
        validate_recipe(_stage(gap_csv, **{"train.swa_guard_z": 0}))
    out = run_recipe(_stage(gap_csv, **{"train.max_steps": 21, "train.swa_epochs": 1, "data.validation_fraction": 0.2,
                                        "train.calibrate": False}), tmp_path / "run")
    info = json.loads((out / "training_info.json").read_text())
    text = json.dumps(info)
    assert '"swa_guard"' in text and ('swa_average' in text or 'best_checkpoint' in text), text[:2000]


def test_a_backbone_loads_with_a_one_line_account_and_names_missing_encoder_weights(tmp_path, gap_csv, capsys):
    """Fine-tuning a backbone prints one line (tensors loaded, new heads, pretraining heads left behind) instead of
    transformers' per-key load report; encoder weights missing from a checkpoint are named in a warning."""
    import shutil

    from safetensors.torch import load_file, save_file

    from crossmat.modeling.pretrained import resolve_model_path

    def recipe(init: str) -> dict:
        return {"stage": "finetune", "model": {"init_from": init, "config": {"ensemble_size": 2}},
                "data": {"train": str(gap_csv), "target_column": "gap"},
                "train": {"max_steps": 1, "batch_size": 32, "progress_bar": False, "calibrate": False}}

    run_recipe(recipe("crossmat-imkt-mp-small"), tmp_path / "ok")
    out = capsys.readouterr()
    assert ("model.init_from crossmat-imkt-mp-small: 46 tensors loaded; new: ensemble_members, head; "
            "not used: lm_head, projection") in out.out
    assert "LOAD REPORT" not in out.out + out.err and "warning" not in out.out
    info = json.loads((tmp_path / "ok" / "training_info.json").read_text())
    assert info["model"]["weights"]["new"] == ["ensemble_members", "head"]

    broken = tmp_path / "broken_backbone"
    shutil.copytree(resolve_model_path("crossmat-imkt-mp-small"), broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["crossmat.final_norm.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    run_recipe(recipe(str(broken)), tmp_path / "broken")
    assert ("warning: 1 weight(s) are missing from the checkpoint and start random: crossmat.final_norm.weight"
            in capsys.readouterr().out)


def test_element_statistics_feed_the_head_and_travel_with_the_weights(tmp_path, gap_csv):
    """model.config.element_statistics=magpie: the head reads the fraction-weighted mean / std / min / max of the
    22 Magpie element properties beside the pooled embedding; the table is installed from a backbone too, saved in
    the weights, and a reloaded model predicts exactly what the trained one did."""
    from safetensors.torch import load_file

    from crossmat.modeling import CrossMatForPropertyPrediction
    from crossmat.modeling.element_features import element_feature_table
    from crossmat.modeling.modeling_crossmat import composition_statistics
    from crossmat.tokenization import CrossMatTokenizerFast

    recipe = {"stage": "finetune", "model": {"init_from": "crossmat-imkt-mp-small",
                                             "config": {"element_statistics": "magpie", "ensemble_size": 2}},
              "data": {"train": str(gap_csv), "target_column": "gap"},
              "train": {"max_steps": 4, "batch_size": 32, "progress_bar": False, "calibrate": False}}
    out = run_recipe(recipe, tmp_path / "stats")
    table = element_feature_table("magpie")[0]
    weights = load_file(str(out / "model.safetensors"))
    assert torch.equal(weights["element_statistics_table"], table)
    assert weights["head.0.weight"].shape[1] == 128 + 4 * 22
    assert weights["ensemble_members.0.head.0.weight"].shape[1] == 128 + 4 * 22
    model = CrossMatForPropertyPrediction.from_pretrained(str(out)).eval()
    tok = CrossMatTokenizerFast.from_pretrained(str(out))
    enc = tok(["NaCl", "Fe2O3", "Li0.5Co0.5O2"], padding=True, return_tensors="pt")
    out1 = model(**enc)
    # NaCl: equal fractions, so the mean is the midpoint of min and max, the std half their distance
    encoded = model.crossmat(**enc)
    stats = composition_statistics(model.element_statistics_table, enc["input_ids"], encoded.slot_mask,
                                   encoded.fractions)[0].view(4, 22)
    torch.testing.assert_close(stats[0], (stats[2] + stats[3]) / 2)
    torch.testing.assert_close(stats[1], (stats[3] - stats[2]) / 2)
    with pytest.raises(RecipeError, match="element_statistics: .*cannot be loaded"):
        run_recipe({**recipe, "model": {"init_from": "crossmat-imkt-mp-small",
                                        "config": {"element_statistics": "no_such_table"}}}, tmp_path / "bad")
    torch.testing.assert_close(CrossMatForPropertyPrediction.from_pretrained(str(out)).eval()(**enc).logits, out1.logits)


def test_a_backbone_keeps_its_architecture_when_the_recipe_sizes_differ(tmp_path, gap_csv, capsys):
    """Size keys in a fine-tuning recipe describe a model from scratch; with model.init_from the backbone's own
    sizes are kept (and said), instead of re-initialising every weight whose shape no longer fits."""
    recipe = {"stage": "finetune", "model": {"init_from": "crossmat-imkt-mp-small",
                                             "config": {"hidden_size": 32, "num_hidden_layers": 1}},
              "data": {"train": str(gap_csv), "target_column": "gap"},
              "train": {"max_steps": 1, "batch_size": 32, "progress_bar": False, "calibrate": False}}
    out = run_recipe(recipe, tmp_path / "sizes")
    said = capsys.readouterr().out
    assert "the backbone's hidden_size=128 (recipe: 32), num_hidden_layers=3 (recipe: 1) are kept" in said
    assert "re-initialised" not in said
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (128, 3)
