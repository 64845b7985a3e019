"""Evaluation scores the fold model it just trained in memory with the predictor users run
(``FormulaPredictor.from_model``), and the numbers are exactly those of the saved folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossmat.evaluation.baselines import FoldData
from crossmat.evaluation.crossmat_predictor import CrossMatPredictor, fold_predictor, predict_folder
from crossmat.evaluation.tasks import TaskInfo
from crossmat.inference import FormulaPredictor
from crossmat.training import train_recipe

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
STEPS = {"max_steps": 3, "batch_size": 16, "progress_bar": False, "checkpoint_every": 1000}
PROBE = ["NaCl", "Fe2O3", "LiCoO2", "(NH4)2SO4", "Xx2O", "", "SrTiO3"]  # two invalid rows


@pytest.fixture(scope="module")
def frame(expt_gap_csv) -> pd.DataFrame:
    return pd.read_csv(expt_gap_csv(160))


def _same(a: FormulaPredictor, b: FormulaPredictor, formulas: list[str]) -> None:
    pa, pb = a.predict(formulas), b.predict(formulas)
    assert pa.errors == pb.errors and pa.n_invalid == 2
    np.testing.assert_array_equal(pa.values, pb.values)  # bit for bit, NaN rows included
    assert (pa.uncertainty is None) == (pb.uncertainty is None)
    if pa.uncertainty is not None:
        np.testing.assert_array_equal(pa.uncertainty, pb.uncertainty)
    assert a.output_columns() == b.output_columns() and a.target_units == b.target_units


@pytest.mark.parametrize("extra", [
    {"model": {"config": {**TINY, "ensemble_size": 2}}, "data": {"clip_predictions": "auto"}, "card": {"property_unit": "eV"}},
    {"model": {"config": TINY}, "data": {"target_transform": "log10_abs", "on_invalid": "skip"}, "train": {"swa_epochs": 1, "max_steps": None,
                                                                                    "epochs": 2}},
], ids=["ensemble-clip-unit", "log10-swa"])
def test_in_memory_model_predicts_exactly_like_its_folder(tmp_path: Path, frame: pd.DataFrame, extra: dict) -> None:
    recipe = {"stage": "finetune", "seed": 1, "model": extra["model"], "card": extra.get("card", {}),
              "data": {"train": frame, "target_column": "gap", "validation_fraction": 0.2, **extra["data"]},
              "train": {**STEPS, **extra.get("train", {})}}
    run = train_recipe(recipe, tmp_path / "fold")
    assert run.folder == tmp_path / "fold" and run.model is not None and run.tokenizer is not None
    memory = fold_predictor(run, batch_size=4)
    assert memory.model is run.model  # no reload
    formulas = [*PROBE, *frame["formula"].tolist()[:40]]
    _same(memory, FormulaPredictor(run.folder, batch_size=4), formulas)


def test_lora_adapter_folds_are_loaded_and_merged_ones_are_not(tmp_path: Path, frame: pd.DataFrame) -> None:
    """Loading an adapter folder merges it (other arithmetic than the unmerged peft model): evaluation loads it;
    a merged LoRA run is a full folder and is scored in memory."""
    recipe = {"seed": 2, "pipeline": [
        {"name": "mlm", "stage": "mlm", "model": {"config": TINY}, "data": {"train": frame}, "train": STEPS},
        {"name": "ft", "stage": "finetune", "model": {"init_from": "@mlm"}, "lora": {"enabled": True, "r": 2},
         "data": {"train": frame, "target_column": "gap"}, "train": STEPS}]}
    run = train_recipe(recipe, tmp_path / "p")
    assert run.folder == tmp_path / "p" / "ft" and run.model is not None
    predictor = fold_predictor(run)
    assert predictor.model is not run.model and predictor.model_path == str(run.folder)
    # merged LoRA (lora.merge: true) saves a full folder: scored in memory, same numbers
    merged = train_recipe({"stage": "finetune", "seed": 2, "model": {"init_from": str(tmp_path / "p" / "mlm")},
                           "lora": {"enabled": True, "r": 2, "merge": True},
                           "data": {"train": frame, "target_column": "gap"}, "train": STEPS}, tmp_path / "merged")
    memory = fold_predictor(merged)
    assert memory.model is merged.model
    _same(memory, FormulaPredictor(merged.folder), [*PROBE, *frame["formula"].tolist()[:40]])


def test_fit_predict_scores_the_fold_model_like_its_saved_folder(tmp_path: Path, frame: pd.DataFrame) -> None:
    task = TaskInfo(benchmark="own", name="gap", task_type="regression", target="gap", unit="eV")
    cols = frame.rename(columns={"gap": "target"})[["id", "formula", "target"]]
    fold = FoldData(0, cols.iloc[:100], cols.iloc[100:130], cols.iloc[130:])
    predictor = CrossMatPredictor("crossmat", {"stage": "finetune", "model": {"config": {**TINY, "ensemble_size": 2}},
                                               "train": STEPS})
    got = predictor.fit_predict(fold, task, tmp_path, seed=0)
    folder = Path(got.params["model_dir"])
    assert folder == tmp_path / "model"
    values, unc = predict_folder(folder, fold.test["formula"].tolist(), "regression", return_uncertainty=True)
    np.testing.assert_array_equal(got.predictions, values)
    np.testing.assert_array_equal(got.uncertainty, unc)
