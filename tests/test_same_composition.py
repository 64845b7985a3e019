"""The same-composition correction (crossmat.modeling.same_composition): composition keys, the weight chosen on
validation rows against their training rows' mean targets, the stored compositions applied by every predict route (in memory, the
saved folder, the Hub pipeline, remote code without this package), on real MatBench rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from crossmat.modeling import CrossMatConfig, CrossMatForPropertyPrediction
from crossmat.modeling.modeling_crossmat import composition_keys
from crossmat.modeling.same_composition import (
    MIN_ROWS,
    MIN_SE,
    WEIGHT_GRID,
    fit_same_composition,
    key_multipliers,
    significant_gain,
)
from crossmat.tokenization import CrossMatTokenizerFast
from crossmat.training import RecipeError, train_recipe

from .test_tokenizer import remote_property_outputs

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
STEPS = {"max_steps": 3, "batch_size": 16, "progress_bar": False, "checkpoint_every": 1000}


@pytest.fixture(scope="module")
def tokenizer():
    return CrossMatTokenizerFast()


@pytest.fixture(scope="module")
def perovskites(data_dir) -> pd.DataFrame:
    """600 matbench_perovskites rows: the rows of 250 compositions listed twice (the two A/B site orders) and 100
    rows of compositions listed once, shuffled."""
    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_perovskites.csv.gz")
    df = df.rename(columns={df.columns[2]: "target"})
    twice = df.formula.duplicated(keep=False)
    pairs = df[twice & df.formula.isin(df.formula[twice].drop_duplicates().iloc[:250])]
    return pd.concat([pairs, df[~twice].iloc[:100]]).sample(frac=1.0, random_state=0).reset_index(drop=True)


def _split(tokenizer, frame: pd.DataFrame, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    enc = tokenizer(frame["formula"].tolist(), padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def _labels(frame: pd.DataFrame) -> torch.Tensor:
    return torch.as_tensor(frame["target"].to_numpy(), dtype=torch.float32).view(-1, 1)


def _regression_model(frame: pd.DataFrame) -> CrossMatForPropertyPrediction:
    torch.manual_seed(0)
    y = frame["target"].to_numpy()
    return CrossMatForPropertyPrediction(CrossMatConfig(**TINY, num_labels=1, problem_type="regression",
                                                        target_mean=[float(y.mean())], target_std=[float(y.std())])).eval()


def test_one_key_per_composition(tokenizer):
    config = CrossMatConfig(**TINY)
    mult = key_multipliers(config.num_elements)
    same = ["Fe2O3", "Fe4O6", "O3Fe2", "Fe2O2O", "(FeO1.5)2"]
    other = ["FeO", "Fe3O4", "Fe2O3.001", "Co2O3", "Fe"]
    keys = composition_keys(tokenizer(same + other, padding=True, return_tensors="pt")["input_ids"], mult, config)
    assert len(set(keys[:5].tolist())) == 1
    assert len(set(keys.tolist())) == 6
    # batching and padding do not change a key
    alone = composition_keys(tokenizer(["Fe2O3"], return_tensors="pt")["input_ids"], mult, config)
    assert alone.item() == keys[0].item()


def test_weight_chosen_on_leave_one_out_rows_and_applied_to_stored_compositions(tokenizer, perovskites):
    train, val = perovskites.iloc[:450], perovskites.iloc[450:]
    model = _regression_model(train)
    new = ["SrTiO3", "BaZrO3", "LaAlO3"]  # not among these rows
    stored = train["formula"].iloc[:3].tolist()
    enc = tokenizer(stored + new, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits[:, 0]
    held, info = fit_same_composition(model, _split(tokenizer, train, _labels(train)),
                                      _split(tokenizer, val, _labels(val)), min_se=0.0)  # unguarded: any gain
    # a validation row's target of the correction is its composition's training rows' mean, by pandas
    everything = pd.concat([train, val])
    expected = val["formula"].map(train.groupby("formula")["target"].mean()).to_numpy()
    np.testing.assert_allclose(held[:, 0].numpy(), expected, rtol=1e-5)  # NaN where no training row has it
    assert info["validation_rows_with_composition"] == int(np.isfinite(expected).sum()) >= MIN_ROWS
    losses = info["validation_loss_by_weight"]
    assert set(losses) == {f"{w:.2f}" for w in WEIGHT_GRID}
    assert info["validation_loss_with"] == min(losses.values()) <= info["validation_loss_without"]
    assert info["installed"] and info["weight"] == info["best_weight"] != 0.0
    w = model.config.same_composition_weight
    means = everything.groupby("formula")["target"].mean()
    with torch.no_grad():
        after = model(**enc).logits[:, 0]
    target = torch.as_tensor(means.loc[stored].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(after[:3], before[:3] + w * (target - before[:3]))
    torch.testing.assert_close(after[3:], before[3:])  # unseen compositions are left alone


def test_duplicates_pick_the_full_correction_and_every_route_applies_it(tokenizer, data_dir, tmp_path):
    """Validation rows that repeat training rows (same formula, same target) are best answered by the stored mean:
    the weight is 1; the folder, crossmat.predict, the Hub pipeline and remote code give the stored target."""
    import crossmat

    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_steels.csv.gz")
    frame = df.rename(columns={df.columns[2]: "target"}).iloc[:200]
    train, val = frame.iloc[:150], pd.concat([frame.iloc[:40], frame.iloc[150:170]])
    model = _regression_model(train)
    _, info = fit_same_composition(model, _split(tokenizer, train, _labels(train)), _split(tokenizer, val, _labels(val)))
    assert info["weight"] == 1.0 and info["validation_rows_with_composition"] == 40
    assert model.config.same_composition_rows == info["training_compositions"] == 170
    formulas = frame["formula"].iloc[:5].tolist() + ["Fe0.7Ni0.2Cr0.1"]
    expected = frame["target"].iloc[:5].tolist()
    model.save_pretrained(tmp_path)
    CrossMatTokenizerFast().save_pretrained(tmp_path)
    loaded, load_info = CrossMatForPropertyPrediction.from_pretrained(tmp_path, output_loading_info=True)
    assert not load_info["missing_keys"] and not load_info["unexpected_keys"]
    got = crossmat.predict(str(tmp_path), formulas).values[:, 0].tolist()
    assert got[:5] == pytest.approx(expected, rel=1e-5)
    from transformers import pipeline

    pipe = pipeline("composition-property-prediction", model=str(tmp_path), trust_remote_code=True)
    assert [r["value"] for r in pipe(formulas)] == pytest.approx(got, rel=1e-5)
    assert remote_property_outputs(tmp_path, formulas, "logits") == pytest.approx(got, rel=1e-5)


def test_too_few_shared_compositions_change_nothing(tokenizer, data_dir):
    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_expt_gap.csv.gz")  # one row per composition
    frame = df.rename(columns={df.columns[2]: "target"}).iloc[:300]
    model = _regression_model(frame)
    held, info = fit_same_composition(model, _split(tokenizer, frame.iloc[:200], _labels(frame.iloc[:200])),
                                     _split(tokenizer, frame.iloc[200:], _labels(frame.iloc[200:])))
    assert info["validation_rows_with_composition"] == 0 and not info["installed"]
    assert torch.isnan(held).all() and model.config.same_composition_weight == 0.0
    assert model.config.same_composition_rows == 0


def test_classifier_moves_probabilities_towards_class_fractions(tokenizer, data_dir):
    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_glass.csv.gz").iloc[:300]
    labels = torch.as_tensor(df.iloc[:, 2].astype(int).to_numpy())
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(CrossMatConfig(**TINY, num_labels=2,
                                                         problem_type="single_label_classification")).eval()
    val_rows = list(range(30)) + list(range(250, 300))  # 30 repeat training rows
    _, info = fit_same_composition(model, _split(tokenizer, df.iloc[:250], labels[:250]),
                                   _split(tokenizer, df.iloc[val_rows], labels[val_rows]))
    assert info["installed"] and info["weight"] > 0.5
    enc = tokenizer(df["formula"].iloc[:4].tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        p = torch.softmax(model(**enc).logits, -1)
    w = model.config.same_composition_weight
    model.config.same_composition_weight = 0.0
    with torch.no_grad():
        alone = torch.softmax(model(**enc).logits, -1)
    onehot = torch.nn.functional.one_hot(labels[:4], 2).float()
    torch.testing.assert_close(p, alone + w * (onehot - alone), atol=2e-6, rtol=1e-5)


def test_training_reports_the_correction_and_scores_validation_rows_leave_one_out(perovskites, tmp_path):
    # a random (not grouped by formula) validation split, as MatBench's calibration carve-out
    recipe = {"stage": "finetune", "seed": 3, "model": {"config": TINY},
              "data": {"train": perovskites.iloc[:420], "validation": perovskites.iloc[420:],
                       "formula_column": "formula", "target_column": "target"},
              "train": {**STEPS, "same_composition": True}}
    run = train_recipe(recipe, tmp_path / "run")
    info = json.loads((run.folder / "training_info.json").read_text())["metrics"]
    same, cal = info["same_composition"], info["calibration"]
    assert same["validation_rows"] == cal["rows"] == 180 and same["validation_rows_with_composition"] >= MIN_ROWS
    assert run.model.config.same_composition_weight == same["weight"]
    assert ("same-composition" in (run.folder / "README.md").read_text()) == same["installed"]
    again = train_recipe({**recipe, "model": {"init_from": str(run.folder)}, "train": {**STEPS}}, tmp_path / "again")
    assert again.model.config.same_composition_weight == 0.0 and again.model.config.same_composition_rows == 0
    with pytest.raises(RecipeError, match="same_composition"):
        train_recipe({**recipe, "train": {**STEPS, "same_composition": "yes"}}, tmp_path / "bad")


def test_a_corrected_fold_keeps_the_model_alone_beside_it(data_dir, tmp_path):
    """The evaluation harness writes the fold model's test outputs without the correction next to the corrected ones,
    so its effect is paired on the same trained model."""
    from crossmat.evaluation.baselines import FoldData
    from crossmat.evaluation.crossmat_predictor import WITHOUT_SAME_COMPOSITION_FILE, CrossMatPredictor
    from crossmat.evaluation.tasks import TaskInfo

    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_steels.csv.gz")
    cols = df.rename(columns={df.columns[2]: "target"}).assign(id=[f"r{i}" for i in range(len(df))])
    cols = cols[["id", "formula", "target"]]
    # validation and test rows repeat training compositions: the correction is chosen and applied
    fold = FoldData(0, cols.iloc[:150], pd.concat([cols.iloc[:30], cols.iloc[150:170]]),
                    pd.concat([cols.iloc[30:40], cols.iloc[200:220]]))
    task = TaskInfo(benchmark="own", name="steels", task_type="regression", target="target", unit="MPa")
    predictor = CrossMatPredictor("crossmat", {"stage": "finetune", "model": {"config": TINY},
                                               "train": {**STEPS, "same_composition": True}})
    got = predictor.fit_predict(fold, task, tmp_path, seed=0)
    assert got.params["same_composition"]["weight"] == 1.0
    alone = pd.read_csv(tmp_path / WITHOUT_SAME_COMPOSITION_FILE)
    assert alone["id"].tolist() == fold.test["id"].tolist()
    np.testing.assert_allclose(got.predictions[:10], fold.test["target"].iloc[:10], rtol=1e-5)
    np.testing.assert_allclose(got.predictions[10:], alone["prediction"].iloc[10:], rtol=1e-6)


def test_console_report_says_what_the_correction_did():
    from crossmat.evaluation.cli import held_out_report

    same = {"weight": -0.3, "installed": True, "validation_rows_with_composition": 120}
    summary = {"folds": [0, 1], "n_validation": [300, 301], "variants": {"crossmat": {"validation": [
        {"validation": {"mae": 1.0}, "same_composition": same},
        {"validation": {"mae": 1.1}, "same_composition": {**same, "weight": 0.0, "installed": False,
                                                          "validation_rows_with_composition": 3}}]}}}
    first, second = held_out_report(summary)
    assert "same-composition correction's weight -0.30 (on the 120 rows" in first
    assert "3 of them share their composition with a training row: no same-composition correction" in second
    guarded = {**same, "weight": 0.0, "installed": False, "best_weight": 0.85, "min_se": 2.0}
    (line,) = held_out_report({"folds": [0], "n_validation": [300], "variants": {"crossmat": {"validation": [
        {"validation": {"mae": 1.0}, "same_composition": guarded}]}}})
    assert "best same-composition weight 0.85 did not beat no correction by 2 SE" in line


def test_a_weight_that_does_not_beat_no_correction_by_two_standard_errors_is_dropped(tokenizer, perovskites):
    """The significance guard: a tiny, noisy gain on the matched rows keeps no correction; a large one is kept."""
    noisy = torch.tensor([0.0, -0.3, 0.28, -0.1, 0.1] * 8)  # mean -0.004, SE about 0.03
    assert significant_gain(noisy, torch.zeros(40), MIN_SE)[0] is False
    assert significant_gain(noisy, torch.zeros(40), 0.0)[0] is True  # unguarded: any lower mean
    assert significant_gain(noisy - 0.2, torch.zeros(40), MIN_SE)[0] is True
    train, val = perovskites.iloc[:450], perovskites.iloc[450:]
    model = _regression_model(train)
    _, info = fit_same_composition(model, _split(tokenizer, train, _labels(train)), _split(tokenizer, val, _labels(val)))
    assert info["min_se"] == MIN_SE and "best_weight" in info
    kept = info["loss_change"] < -MIN_SE * info["loss_change_se"]
    assert info["weight"] == (info["best_weight"] if kept else 0.0) and info["installed"] == (info["weight"] != 0.0)
