"""One loader for CrossMat folders (modeling.model_folder): full and LoRA output folders work in every
entry point (pipeline, crossmat-predict, interpretability, evaluation, the app), and the unified
predictor reproduces a plain ``AutoModelForSequenceClassification`` forward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from crossmat.modeling.configuration_crossmat import output_info, problem_type_of
from crossmat.modeling.model_folder import (
    ModelFolderError,
    NotAPropertyModelError,
    is_lora_folder,
    load_model,
    load_property_model,
)
from crossmat.tokenization import CrossMatTokenizerFast
from crossmat.training import RecipeError, run_recipe

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "initializer_range": 0.3}  # large weights: outputs differ clearly between formulas
STEPS = {"max_steps": 3, "batch_size": 16, "progress_bar": False, "learning_rate": 3e-3}
FORMULAS = ["Fe2O3", "NaCl", "(NH4)2SO4", "Li0.5Co0.5O2", "SrTiO3", "CuSO4·5H2O"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir: Path) -> Path:
    """A tiny MLM, a full fine-tune and a LoRA fine-tune of it (100 real expt_gap rows)."""
    root = tmp_path_factory.mktemp("folders")
    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_expt_gap.csv.gz").iloc[:100]
    csv = root / "gap.csv"
    df.rename(columns={df.columns[2]: "gap"}).to_csv(csv, index=False)
    recipe = {"name": "tiny", "seed": 3, "pipeline": [
        {"name": "mlm", "stage": "mlm", "model": {"config": TINY}, "data": {"train": str(csv)}, "train": STEPS},
        {"name": "full", "stage": "finetune", "model": {"init_from": "@mlm"}, "card": {"explain": "LiCoO2"},
         "data": {"train": str(csv), "target_column": "gap", "test_fraction": 0.2}, "train": STEPS},
        {"name": "lora", "stage": "finetune", "model": {"init_from": "@mlm"}, "lora": {"enabled": True, "r": 4},
         "data": {"train": str(csv), "target_column": "gap", "test_fraction": 0.2}, "train": STEPS},
    ]}
    final = run_recipe(recipe, root / "run")
    assert final == root / "run" / "lora"  # a pipeline returns its final stage's folder
    return final.parent


def _plain_forward(folder: Path, formulas: list[str]) -> np.ndarray:
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = CrossMatTokenizerFast.from_pretrained(folder)
    with torch.no_grad():
        return model(**tok(formulas, padding=True, return_tensors="pt")).logits[:, 0].double().numpy()


def test_unified_predictor_reproduces_a_plain_forward(run: Path, matbench_formulas) -> None:
    from crossmat.evaluation.crossmat_predictor import predict_folder
    from crossmat.inference import FormulaPredictor, load_pipeline

    formulas = matbench_formulas["matbench_expt_gap"][:200]
    ref = _plain_forward(run / "full", formulas)
    assert np.std(ref) > 1e-2  # the model distinguishes formulas
    got = FormulaPredictor(run / "full", batch_size=512).predict(formulas)
    np.testing.assert_allclose(got.values[:, 0], ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(predict_folder(run / "full", formulas, "regression"), ref, atol=1e-6, rtol=0)
    pipe = [r["value"] for r in load_pipeline(run / "full")(formulas[:50], batch_size=64)]
    np.testing.assert_allclose(pipe, ref[:50], atol=1e-6, rtol=0)


def test_lora_folder_loads_like_a_full_folder(run: Path) -> None:
    lora = run / "lora"
    assert is_lora_folder(lora) and not is_lora_folder(run / "full")
    assert not (lora / "model.safetensors").exists()
    model, tok = load_property_model(lora)
    assert type(model).__name__ == "CrossMatForPropertyPrediction"  # merged: no PEFT wrapper left
    expected = pd.read_csv(lora / "test_predictions.csv")
    with torch.no_grad():
        got = model(**tok(expected["formula"].tolist(), padding=True, return_tensors="pt")).logits[:, 0]
    np.testing.assert_allclose(got.numpy(), expected["prediction"].to_numpy(), atol=1e-4)
    with pytest.raises(NotAPropertyModelError, match="is not a property model"):
        load_property_model(run / "mlm")
    with pytest.raises(ModelFolderError, match="has no config.json"):
        load_model(run)


def test_lora_folder_in_every_entry_point(run: Path, tmp_path: Path, capsys) -> None:
    from crossmat.evaluation.crossmat_predictor import check_model_folder, predict_folder
    from crossmat.evaluation.tasks import TaskInfo
    from crossmat.inference import FormulaPredictor, load_pipeline
    from crossmat.inference.app import explain_markdown, predict_markdown
    from crossmat.inference.predict import main as predict_main
    from crossmat.interpretability.cli import main as interpret_main

    lora = run / "lora"
    model, tok = load_property_model(lora)
    with torch.no_grad():
        ref = model(**tok(FORMULAS, padding=True, return_tensors="pt")).logits[:, 0].double().numpy()
    # pipeline
    values = [r["value"] for r in load_pipeline(lora)(FORMULAS)]
    np.testing.assert_allclose(values, ref, atol=1e-6)
    # crossmat-predict
    src = tmp_path / "in.csv"
    pd.DataFrame({"formula": FORMULAS}).to_csv(src, index=False)
    assert predict_main(["--model", str(lora), "--input", str(src), "--output", str(tmp_path / "o.csv"),
                         "--no-progress"]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "o.csv")["predicted_gap"], ref, atol=1e-6)
    # python -m crossmat.interpretability
    assert interpret_main(["explain", "--model", str(lora), "--formula", "LiCoO2", "--out", str(tmp_path / "expl"),
                           "--n-steps", "8", "--format", "png"]) == 0
    assert "LiCoO2" in capsys.readouterr().out
    # evaluate.py: the folder is accepted as --model and its predictions scored
    task = TaskInfo(benchmark="matbench", name="matbench_expt_gap", task_type="regression", target="gap")
    check_model_folder(lora, task)
    np.testing.assert_allclose(predict_folder(lora, FORMULAS, "regression"), ref, atol=1e-6)
    # the app
    text, ok = predict_markdown(FormulaPredictor(lora), "Fe2O3")
    assert ok and "gap" in text
    assert "Li" in explain_markdown(FormulaPredictor(lora), "LiCoO2")


def test_card_explanation_only_when_the_recipe_asks(run: Path) -> None:
    assert "## Interpretability" in (run / "full" / "README.md").read_text()  # card.explain: LiCoO2
    assert "## Interpretability" not in (run / "lora" / "README.md").read_text()
    with pytest.raises(RecipeError, match="card.explain"):
        run_recipe({"stage": "mlm", "card": {"explain": True}, "data": {"train": str(run.parent / "gap.csv")}},
                   run.parent / "never")


def test_finetune_from_a_lora_folder(run: Path, data_dir: Path, tmp_path: Path) -> None:
    """``model.init_from`` (and so ``evaluate.py --model``) accepts a LoRA folder: training starts from
    its merged weights."""
    recipe = json.loads(json.dumps({"stage": "finetune", "model": {"init_from": str(run / "lora")},
                                    "data": {"train": str(run.parent / "gap.csv"), "target_column": "gap"},
                                    "train": {**STEPS, "max_steps": 1}}))
    out = run_recipe(recipe, tmp_path / "again")
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "training_info.json").read_text())["model"]["init_from"] == str(run / "lora")


def test_one_output_rule() -> None:
    assert problem_type_of({"id2label": {"0": "LABEL_0"}}) == "regression"
    assert problem_type_of({"id2label": {"0": "a", "1": "b"}}) == "single_label_classification"
    assert problem_type_of({"id2label": {"0": "a", "1": "b"}}, float_labels=True) == "regression"
    assert problem_type_of({"problem_type": "multi_label_classification", "id2label": {"0": "a"}}) == (
        "multi_label_classification")
    with pytest.raises(ValueError, match="problem_type must be one of"):
        problem_type_of({"problem_type": "ranking"})
    info = output_info({"problem_type": "regression", "id2label": {"0": "x", "1": "y"},
                        "target_names": ["gap", "e_form"], "target_units": ["eV"]})
    assert info["names"] == ["gap", "e_form"] and info["units"] == ["eV", ""] and info["num_labels"] == 2


def test_crossmat_load_model_takes_every_kind_of_name(run: Path) -> None:
    """``crossmat.load_model``: a full folder, a LoRA folder (merged), a pretraining folder (its own class), a
    shipped short name; anything else fails naming what it accepts."""
    import crossmat
    from crossmat.modeling.pretrained import PretrainedNotFoundError

    assert type(crossmat.load_model(str(run / "full"))).__name__ == "CrossMatForPropertyPrediction"
    assert type(crossmat.load_model(str(run / "lora"))).__name__ == "CrossMatForPropertyPrediction"  # merged
    assert type(crossmat.load_model(str(run / "mlm"))).__name__ == "CrossMatForMaskedLM"
    shipped = crossmat.load_model("crossmat-imkt-mp-small")
    assert type(shipped).__name__ == "CrossMatForStructureAlignment" and not shipped.training
    with pytest.raises(PretrainedNotFoundError, match="not a model folder, a shipped backbone"):
        crossmat.load_model("no such model")


def test_predicting_with_the_shipped_backbone_says_to_fine_tune_it_and_a_typo_fails_at_once() -> None:
    """``crossmat.predict("crossmat-imkt-mp-small", ...)`` used to go to the Hub (a minute of retries offline) and end
    with a connection error; the shipped name now resolves to its folder and the error says what to do. A name that is
    neither a folder nor a Hub id fails without any network request."""
    import time

    with pytest.raises(NotAPropertyModelError, match=r"'crossmat-imkt-mp-small' is not a property model.*crossmat evaluate"):
        load_property_model("crossmat-imkt-mp-small")
    start = time.monotonic()
    with pytest.raises(ModelFolderError, match="'my-gap-modle' is not a model folder, a shipped model"):
        load_model("my-gap-modle")
    assert time.monotonic() - start < 5
