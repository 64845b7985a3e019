"""The forest blend (crossmat.modeling.forest): a forest on the model's own composition statistics, its weight
chosen on validation rows against out-of-bag predictions, stored in the weights and applied by every predict route
(in memory, the saved folder, the Hub pipeline, remote code without this package), on real MatBench rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("sklearn")

from crossmat.modeling import CrossMatConfig, CrossMatForPropertyPrediction  # noqa: E402
from crossmat.modeling.forest import WEIGHT_GRID, fit_forest_blend  # noqa: E402
from crossmat.tokenization import CrossMatTokenizerFast  # noqa: E402
from crossmat.training import RecipeError, train_recipe  # noqa: E402

from .test_tokenizer import remote_property_outputs  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
STEPS = {"max_steps": 3, "batch_size": 16, "progress_bar": False, "checkpoint_every": 1000}
NEW = ["Fe2O3", "NaCl", "LiCoO2", "Fe0.7Ni0.2Cr0.1", "SrTiO3"]


@pytest.fixture(scope="module")
def tokenizer():
    return CrossMatTokenizerFast()


@pytest.fixture(scope="module")
def steels(data_dir) -> pd.DataFrame:
    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_steels.csv.gz")
    return df.rename(columns={df.columns[2]: "target"})


def _split(tokenizer, frame: pd.DataFrame, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    enc = tokenizer(frame["formula"].tolist(), padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def _regression_model(frame: pd.DataFrame) -> CrossMatForPropertyPrediction:
    torch.manual_seed(0)
    y = frame["target"].to_numpy()
    return CrossMatForPropertyPrediction(CrossMatConfig(**TINY, num_labels=1, problem_type="regression",
                                                        target_mean=[float(y.mean())], target_std=[float(y.std())],
                                                        target_min=[0.0])).eval()


def test_weight_is_chosen_on_out_of_bag_rows_and_the_blend_is_what_the_model_outputs(tokenizer, steels):
    train, val = steels.iloc[:250], steels.iloc[250:]
    model = _regression_model(train)  # untrained: the forest is far better, so it must get most of the weight
    as_labels = lambda f: torch.as_tensor(f["target"].to_numpy(), dtype=torch.float32).view(-1, 1)  # noqa: E731
    enc = tokenizer(NEW, padding=True, return_tensors="pt")
    with torch.no_grad():
        alone = model(**enc).logits[:, 0]
    oob, info = fit_forest_blend(model, _split(tokenizer, train, as_labels(train)), _split(tokenizer, val, as_labels(val)),
                                 trees=30, seed=0)
    losses = info["validation_loss_by_weight"]
    assert set(losses) == {f"{w:.1f}" for w in WEIGHT_GRID} and info["installed"]
    assert info["weight"] <= 0.3 and info["validation_loss_blend"] == min(losses.values())
    assert info["validation_loss_forest"] < info["validation_loss_crossmat"]
    assert oob.shape == (len(val), 1) and torch.isfinite(oob).all()
    w = model.config.forest_weight
    assert w == info["weight"] and model.config.forest_trees == 30 and model.config.forest_nodes == info["nodes"]
    with torch.no_grad():
        forest = model.forest(model.forest_features(enc["input_ids"]))[:, 0]
        blended = model(**enc).logits[:, 0]
    torch.testing.assert_close(blended, (w * alone + (1 - w) * forest).clamp_min(0.0))
    # the validation rows trained the forest: their out-of-bag outputs differ from the installed forest's
    ids = _split(tokenizer, val, as_labels(val))["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(model.forest(model.forest_features(ids)), oob)


def test_blended_model_predicts_the_same_through_every_route(tokenizer, steels, tmp_path):
    import crossmat

    train, val = steels.iloc[:250], steels.iloc[250:]
    model = _regression_model(train)
    as_labels = lambda f: torch.as_tensor(f["target"].to_numpy(), dtype=torch.float32).view(-1, 1)  # noqa: E731
    fit_forest_blend(model, _split(tokenizer, train, as_labels(train)), _split(tokenizer, val, as_labels(val)),
                     trees=20, seed=1)
    assert model.config.forest_weight < 1
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(**tokenizer(NEW, padding=True, return_tensors="pt")).logits[:, 0].tolist()
    loaded, info = CrossMatForPropertyPrediction.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert crossmat.predict(str(tmp_path), NEW).values[:, 0].tolist() == pytest.approx(expected, abs=1e-5)
    from transformers import pipeline

    pipe = pipeline("composition-property-prediction", model=str(tmp_path), trust_remote_code=True)
    assert [r["value"] for r in pipe(NEW)] == pytest.approx(expected, abs=1e-5)
    assert remote_property_outputs(tmp_path, NEW, "logits") == pytest.approx(expected, abs=1e-5)


def test_classifier_blends_probabilities(tokenizer, data_dir):
    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_glass.csv.gz").iloc[:400]
    labels = torch.as_tensor(df.iloc[:, 2].astype(int).to_numpy())
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(CrossMatConfig(**TINY, num_labels=2,
                                                         problem_type="single_label_classification")).eval()
    enc = tokenizer(NEW, padding=True, return_tensors="pt")
    with torch.no_grad():
        alone = torch.softmax(model(**enc).logits, -1)
    oob, info = fit_forest_blend(model, _split(tokenizer, df.iloc[:300], labels[:300]),
                                 _split(tokenizer, df.iloc[300:], labels[300:]), trees=30, seed=0)
    assert oob.shape == (100, 2) and torch.allclose(oob.sum(1), torch.ones(100))
    assert info["installed"] and info["validation_loss_blend"] <= info["validation_loss_crossmat"]
    w = model.config.forest_weight
    with torch.no_grad():
        forest = model.forest(model.forest_features(enc["input_ids"]))
        blended = torch.softmax(model(**enc).logits, -1)
    torch.testing.assert_close(blended, w * alone + (1 - w) * forest, atol=1e-6, rtol=1e-5)


def test_blended_classifier_gives_the_same_probabilities_through_every_route(tokenizer, data_dir, tmp_path):
    """Binary classifiers blend by default: the saved folder, ``crossmat.predict``, the Hub pipeline and remote code
    without this package give the blended probabilities of the model in memory."""
    from transformers import pipeline

    import crossmat

    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_glass.csv.gz").iloc[:300]
    labels = torch.as_tensor(df.iloc[:, 2].astype(int).to_numpy())
    torch.manual_seed(1)
    model = CrossMatForPropertyPrediction(CrossMatConfig(**TINY, num_labels=2,
                                                         problem_type="single_label_classification")).eval()
    fit_forest_blend(model, _split(tokenizer, df.iloc[:220], labels[:220]),
                     _split(tokenizer, df.iloc[220:], labels[220:]), trees=20, seed=0)
    assert model.config.forest_weight < 1
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = torch.softmax(model(**tokenizer(NEW, padding=True, return_tensors="pt")).logits, -1)
    assert crossmat.predict(str(tmp_path), NEW).values[:, 1].tolist() == pytest.approx(expected[:, 1].tolist(), abs=1e-5)
    pipe = pipeline("composition-property-prediction", model=str(tmp_path), trust_remote_code=True)
    got = [list(r["probabilities"].values())[1] for r in pipe(NEW)]
    assert got == pytest.approx(expected[:, 1].tolist(), abs=1e-5)
    remote = remote_property_outputs(tmp_path, NEW, "logits")  # log-probabilities of class 0
    assert np.exp(remote) == pytest.approx(expected[:, 0].tolist(), abs=1e-5)


def _recipe(frame: pd.DataFrame, **train) -> dict:
    return {"stage": "finetune", "seed": 3, "model": {"config": TINY},
            "data": {"train": frame, "formula_column": "formula", "target_column": "target", "validation_fraction": 0.2},
            "train": {**STEPS, "forest_blend": "magpie", "forest_trees": 20, **train}}


def test_training_blends_and_scores_validation_rows_out_of_bag(steels, tmp_path):
    run = train_recipe(_recipe(steels.iloc[:200]), tmp_path / "blend")
    info = json.loads((run.folder / "training_info.json").read_text())["metrics"]
    blend, cal, val = info["forest_blend"], info["calibration"], info["validation"]
    assert blend["validation_rows"] == cal["rows"] > 30 and blend["features"] == "magpie"
    # the reported validation MAE is the blend's with the forest's out-of-bag outputs, as the weight was chosen
    std = run.model.config.target_std[0]
    assert val["mae"] == pytest.approx(blend["validation_loss_blend"] * std, rel=1e-4)
    assert run.model.config.forest_weight == blend["weight"]
    card = (run.folder / "README.md").read_text()
    assert ("random forest" in card) == blend["installed"]
    # fine-tuning from a blended model starts without its forest and calibration
    again = train_recipe({**_recipe(steels.iloc[:200]), "model": {"init_from": str(run.folder)},
                          "train": {**STEPS}}, tmp_path / "again")
    assert again.model.config.forest_nodes == 0 and again.model.forest is None
    assert again.model.config.forest_weight == 1.0


def test_blend_needs_a_property_stage_and_a_known_task_type(steels, tmp_path):
    with pytest.raises(RecipeError, match="forest_blend"):
        train_recipe({"stage": "mlm", "model": {"config": TINY}, "data": {"train": steels.iloc[:50]},
                      "train": {**STEPS, "forest_blend": "magpie"}}, tmp_path / "mlm")
    with pytest.raises(RecipeError, match="forest_blend_tasks"):
        train_recipe(_recipe(steels.iloc[:100], forest_blend_tasks="binary"), tmp_path / "bad")


def test_blend_is_skipped_with_a_reason_where_it_cannot_or_should_not_act(steels, tmp_path):
    """``train.forest_blend_tasks: classification`` leaves a regression model alone; a LoRA adapter (which cannot
    carry the trees) and a model without validation rows (nothing to choose the weight on) get no blend; each says
    why in the metrics, and no forest is installed."""
    from crossmat.evaluation.cli import held_out_report

    recipe = _recipe(steels.iloc[:100], forest_blend_tasks="classification")
    first = train_recipe(recipe, tmp_path / "regression")
    lora = train_recipe({**_recipe(steels.iloc[:100]), "model": {"init_from": str(first.folder)},
                         "lora": {"enabled": True, "r": 2}}, tmp_path / "lora")
    unvalidated = _recipe(steels.iloc[:100])
    unvalidated["data"]["validation_fraction"] = 0.0
    alone = train_recipe(unvalidated, tmp_path / "none")
    for run, words in ((first, "this is a regression model"), (lora, "LoRA adapter"), (alone, "no validation rows")):
        metrics = json.loads((run.folder / "training_info.json").read_text())["metrics"]
        assert words in metrics["forest_blend"]["skipped"]
        assert ("calibration" in metrics) == (run is first)  # the rest still happens (LoRA is not calibrated)
        assert run.model.config.forest_nodes == 0
        if run is alone:
            continue
        (line,) = held_out_report({"folds": [0], "n_validation": [20], "variants": {"crossmat": {"validation": [
            {"validation": {"mae": 1.0}, "forest_blend": metrics["forest_blend"]}]}}})
        assert "forest" not in line


def test_a_blended_fold_keeps_crossmat_alone_beside_the_blend(steels, tmp_path):
    """The evaluation harness writes the fold model's test outputs without its forest next to the blend's, so the
    forest's effect is paired on the same trained model (benchmarks/matbench/forest_blend_rule.py)."""
    from crossmat.evaluation.baselines import FoldData
    from crossmat.evaluation.crossmat_predictor import WITHOUT_FOREST_FILE, CrossMatPredictor, predict_folder
    from crossmat.evaluation.tasks import TaskInfo

    task = TaskInfo(benchmark="own", name="steels", task_type="regression", target="target", unit="MPa")
    cols = steels.assign(id=[f"r{i}" for i in range(len(steels))])[["id", "formula", "target"]]
    fold = FoldData(0, cols.iloc[:150], cols.iloc[150:200], cols.iloc[200:240])
    predictor = CrossMatPredictor("crossmat", {"stage": "finetune", "model": {"config": TINY},
                                               "train": {**STEPS, "forest_blend": "magpie", "forest_trees": 20}})
    got = predictor.fit_predict(fold, task, tmp_path, seed=0)
    weight = got.params["forest_blend"]["weight"]
    assert weight < 1  # 3 training steps: the forest is far better
    alone = pd.read_csv(tmp_path / WITHOUT_FOREST_FILE)
    assert alone["id"].tolist() == fold.test["id"].tolist()
    np.testing.assert_array_equal(got.predictions, predict_folder(tmp_path / "model", fold.test["formula"].tolist(),
                                                                  "regression"))
    assert not np.allclose(alone["prediction"], got.predictions)


def test_console_report_says_what_the_validation_rows_chose():
    from crossmat.evaluation.cli import held_out_report

    blend = {"weight": 0.7, "features": "magpie", "installed": True}
    summary = {"folds": [0, 1], "n_validation": [30, 31], "variants": {"crossmat": {"validation": [
        {"validation": {"mae": 1.0}, "forest_blend": blend},
        {"validation": {"mae": 1.1}, "forest_blend": {**blend, "weight": 1.0, "installed": False}}]}}}
    first, second = held_out_report(summary)
    assert "CrossMat's weight 0.7 in the blend with a magpie forest" in first
    assert "kept the magpie forest out of the blend" in second and "fold 1" in second


def test_a_classifier_is_tempered_before_the_blend_chooses_its_weight(data_dir, tmp_path):
    """Calibration order for a classifier: the temperature first (on CrossMat's own probabilities), so the blend's
    weight and the decision threshold see honest probabilities; a new fine-tuning starts again from 1."""
    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_glass.csv.gz").iloc[:300]
    frame = df.rename(columns={df.columns[2]: "target"}).assign(target=lambda d: d["target"].astype(int))
    recipe = _recipe(frame, max_steps=20, forest_blend_tasks="classification")  # acts on a classifier
    run = train_recipe(recipe, tmp_path / "glass")
    info = json.loads((run.folder / "training_info.json").read_text())["metrics"]
    cal, blend = info["calibration"], info["forest_blend"]
    assert run.model.config.probability_temperature == cal["temperature"] != 1.0
    assert cal["log_loss_after_temperature"] < cal["log_loss_before_temperature"]
    assert blend["validation_loss_crossmat"] == pytest.approx(cal["log_loss_after_temperature"], rel=1e-4)
    assert 0.0 <= cal["decision_threshold"] <= 1.0
    assert f"class probabilities at temperature {cal['temperature']:.3g}" in (run.folder / "README.md").read_text()
    again = train_recipe({**recipe, "model": {"init_from": str(run.folder)}, "train": {**STEPS, "calibrate": False}},
                         tmp_path / "again")
    assert again.model.config.probability_temperature == 1.0 and again.model.config.decision_threshold is None


def test_console_report_says_what_the_temperature_did():
    from crossmat.evaluation.cli import held_out_report

    cal = {"rows": 40, "temperature": 2.5, "log_loss_before_temperature": 0.61, "log_loss_after_temperature": 0.32,
           "decision_threshold": 0.41}
    (line,) = held_out_report({"folds": [0], "n_validation": [40],
                               "variants": {"crossmat": {"validation": [{"validation": {"roc_auc": 0.9},
                                                                          "calibration": cal}]}}})
    assert "probability temperature 2.5 (log loss 0.61 -> 0.32)" in line and "P(1) >= 0.410" in line
    (named,) = held_out_report({"folds": [0], "n_validation": [40], "class_labels": ["insulator", "metal"],
                                "variants": {"crossmat": {"validation": [{"calibration": cal}]}}})
    assert "P(metal) >= 0.410" in named
