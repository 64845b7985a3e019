"""Bring-your-own-data: the worked example of docs/your_own_data.md runs on small real CSVs and prints
CrossMat and baseline metrics in one table; nothing is written outside the output folder."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossmat.evaluation.cli import main
from crossmat.evaluation.own_data import load_own_data

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "your_own_data.md"
FAST = ["--set", "train.max_steps=6", "--set", "train.batch_size=32", "--rf-trees", "10"]  # the default recipe, 6 steps


def _block(marker: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"<!-- test: {marker} -->\n```\w+\n(.*?)```", text, re.S)
    assert m, f"docs/your_own_data.md lost its '{marker}' block"
    return m.group(1)


@pytest.fixture(scope="module")
def own_csvs(tmp_path_factory, data_dir: Path) -> Path:
    """The documented data-preparation snippet, run on 300 real rows."""
    work = tmp_path_factory.mktemp("own")
    code = _block("make-data")
    assert "rows = len(df)" in code
    env = {**os.environ, "CROSSMAT_DATA_DIR": str(data_dir)}
    subprocess.run([sys.executable, "-c", code.replace("rows = len(df)", "rows = 300")], cwd=work, env=env, check=True)
    return work


def test_documented_worked_example_runs_with_baselines_in_one_table(own_csvs: Path):
    before = sorted(p.relative_to(REPO) for p in (REPO / "benchmarks" / "results").rglob("*"))
    cmd = shlex.split(_block("evaluate").replace("\\\n", " "))
    assert cmd[:2] == ["python", "evaluate.py"]
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), *cmd[2:], *FAST], cwd=own_csvs,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("predictor"))
    assert lines[header].split()[1:4] == ["MAE", "RMSE", "R2"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[header + 1:header + 4]}
    assert set(rows) == {"crossmat", "dummy", "rf_magpie"}  # the default recipe, named by what it is
    assert "[crossmat] crossmat: CrossMat from the pretrained backbone crossmat-imkt-mp-small" in proc.stdout
    # the validation file is used, visibly: its metrics and the calibration it did are printed
    held = next(line for line in lines if line.startswith("crossmat validation (30 held-out rows, never trained on)"))
    assert "calibrated the standard deviation" in held and "coverage_1sigma" in held
    assert "68% / 95% prediction intervals" in held
    assert all(float(v) == float(v) for vals in rows.values() for v in vals)  # numbers, not NaN
    out = own_csvs / "runs" / "my_gap"
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["variant"]) == set(rows) and {"mae", "rmse", "r2"} <= set(summary.columns)
    assert len(pd.read_csv(out / "rf_magpie" / "fold_0" / "predictions.csv")) == 30
    # the unit reached the fold model; nothing was recorded in the repository
    import json

    cfg = json.loads((out / "crossmat" / "fold_0" / "model" / "config.json").read_text())
    assert cfg["target_units"] == ["eV"] and cfg["uncertainty_rows"] == 30
    assert cfg["target_names"] == ["band_gap"]  # the user's column name, not the harness's internal "target"
    card = (out / "crossmat" / "fold_0" / "model" / "README.md").read_text()
    assert "band_gap (eV)" in card and "fold 0 validation rows" in card and "in-memory DataFrame" not in card
    preds = pd.read_csv(out / "crossmat" / "fold_0" / "predictions.csv")
    assert len(preds) == 30 and (preds["uncertainty"] > 0).all()  # every test prediction carries a sigma
    assert {"coverage_1sigma", "coverage_2sigma", "coverage_interval68", "coverage_interval95"} <= set(summary.columns)
    assert len(cfg["uncertainty_interval_multipliers"]) == 2
    assert sorted(p.relative_to(REPO) for p in (REPO / "benchmarks" / "results").rglob("*")) == before


def test_classification_table_and_results_dir_only_when_asked(own_csvs: Path, tmp_path: Path, capsys):
    df = pd.read_csv(own_csvs / "train.csv")
    df["is_metal"] = (df["band_gap"] == 0).map({True: "true", False: "false"})
    df.iloc[:180].to_csv(tmp_path / "a.csv", index=False)
    df.iloc[180:].to_csv(tmp_path / "b.csv", index=False)
    rc = main(["--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"), "--target", "is_metal",
               "--output-dir", str(tmp_path / "o"), "--baselines-only", "--results-dir", str(tmp_path / "rec"),
               "--rf-trees", "10"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "classification" in out and "BALANCED_ACCURACY" in out and "ROCAUC" in out
    assert (tmp_path / "rec" / "csv" / "is_metal" / "rf_magpie.json").is_file()


def test_own_data_errors_name_file_and_row(tmp_path: Path, capsys):
    pd.DataFrame({"formula": ["NaCl", "KBr"], "y": [1.0, "high"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(FileNotFoundError, match=r"t\.csv: target column 'y' is not numeric \(row 1 holds 'high'"):
        load_own_data(tmp_path / "t.csv", tmp_path / "t.csv", "y")
    with pytest.raises(FileNotFoundError, match="no column 'gap'"):
        load_own_data(tmp_path / "t.csv", tmp_path / "t.csv", "gap")
    with pytest.raises(SystemExit):
        main(["--train", str(tmp_path / "t.csv"), "--output-dir", str(tmp_path / "o")])
    assert "needs --test --target" in capsys.readouterr().err


def test_rows_with_unreadable_formulas_or_missing_targets_are_left_out_and_reported(tmp_path: Path):
    """A formula the tokenizer cannot read (unknown element, stray character) does not stop the run: the row is
    left out with the file, row, id and reason, as a row without a target is."""
    pd.DataFrame({"formula": ["NaCl", "Xx2O3", "KBr", "LiF", "H2O+", "CsI", None],
                  "y": [1.0, 2.0, None, 3.0, 4.0, float("inf"), 5.0]}).to_csv(tmp_path / "t.csv", index=False)
    _, frames, rejected = load_own_data(tmp_path / "t.csv", tmp_path / "t.csv", "y", tmp_path / "t.csv")
    assert frames["test"]["formula"].tolist() == ["NaCl", "LiF"]
    assert rejected[:5] == ["t.csv row 1 (train-1): formula 'Xx2O3': unknown element 'Xx'",
                            "t.csv row 2 (train-2): missing target",
                            "t.csv row 4 (train-4): formula 'H2O+': unexpected character(s) '+'",
                            "t.csv row 5 (train-5): target is inf (not a finite number)",
                            "t.csv row 6 (train-6): missing formula"]
    assert len(rejected) == 15  # the same five rows of each of the three files


def test_results_dir_defaults_to_none():
    from crossmat.evaluation.cli import build_parser

    args = build_parser().parse_args(["--benchmark", "matbench", "--task", "matbench_steels", "--output-dir", "x"])
    assert args.results_dir is None
    for script in (REPO / "benchmarks").glob("*/*.sh"):
        text = script.read_text()
        if "evaluate.py" in text:
            assert "--results-dir benchmarks/results" in text, script


def test_forest_features_read_formulas_as_crossmat_does_and_do_not_remember_failures(tmp_path: Path):
    """Magpie features: a hydrate dot parses as CrossMat reads it, an unknown element rejects its row only (matminer
    would fail the whole batch on it), and a failure is not cached (a later, better parser tries again)."""
    import numpy as np

    from crossmat.evaluation.baselines import MagpieFeaturizer

    X, msgs = MagpieFeaturizer(tmp_path).transform(pd.Series(["NaCl", "CuSO4·5H2O", "Xx2O3", "CuH10SO9"]))
    assert msgs == ["row 2 ('Xx2O3'): Magpie features unavailable"]
    assert np.isfinite(X[[0, 1, 3]]).all() and np.array_equal(X[1], X[3])
    cached = pd.read_parquet(tmp_path / "magpie_features.parquet")
    assert sorted(cached.index) == ["CuH10SO9", "CuSO4·5H2O", "NaCl"]


def test_console_table_keeps_large_and_tiny_metrics_apart():
    """Targets in the tens of thousands (or tiny ones) once ran two columns together; every cell stays separated."""
    from crossmat.evaluation.cli import results_table

    def st(x: float) -> dict:
        return {"mean": x, "std": x / 10}

    summary = {"task_type": "regression", "metric": "mae", "folds": [0, 1],
               "variants": {"crossmat": {"summary": {"mae": st(80090.0279), "rmse": st(119133.2022), "r2": st(-0.9067)},
                                         "wall_seconds": 3.0},
                            "dummy": {"summary": {"mae": st(2.5e-6), "rmse": st(0.0), "r2": st(0.0)},
                                      "wall_seconds": 0.0}}}
    header, *rows = results_table(summary).splitlines()
    assert header.split() == ["predictor", "MAE", "RMSE", "R2", "time"]
    big = rows[0].split()
    assert big[:4] == ["crossmat", "80090", "±", "8009.0028"] and big[4:7] == ["1.1913e+05", "±", "11913"]
    assert rows[1].split()[1:4] == ["2.5e-06", "±", "2.5e-07"] and rows[1].split()[4] == "0.0000"
    assert len({len(line) for line in (header, *rows)}) == 1  # columns line up


def test_two_text_labels_make_a_classifier_with_named_classes(own_csvs: Path, tmp_path: Path):
    """A target column of two text labels (metal / insulator) is a classification task: the label that sorts last
    is class 1 unless --positive-label says otherwise, and the names reach the summary, config, card and pipeline."""
    from transformers import pipeline

    df = pd.read_csv(own_csvs / "train.csv")
    df["kind"] = (df["band_gap"] == 0).map({True: "metal", False: "insulator"})
    df.iloc[:180].to_csv(tmp_path / "a.csv", index=False)
    df.iloc[180:].to_csv(tmp_path / "b.csv", index=False)
    rc = main(["--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"), "--target", "kind",
               "--output-dir", str(tmp_path / "o"), "--baselines", "dummy", *FAST])
    assert rc == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["task_type"] == "classification" and summary["class_labels"] == ["insulator", "metal"]
    model = tmp_path / "o" / "crossmat" / "fold_0" / "model"
    assert json.loads((model / "config.json").read_text())["id2label"] == {"0": "insulator", "1": "metal"}
    assert "kind — classification (class 1: metal, class 0: insulator)" in (model / "README.md").read_text()
    out = pipeline("composition-property-prediction", model=str(model), trust_remote_code=True)(["Cu", "NaCl"])
    assert {o["label"] for o in out} <= {"metal", "insulator"} and set(out[0]["probabilities"]) == {"metal", "insulator"}

    task, frames, _ = load_own_data(tmp_path / "a.csv", tmp_path / "b.csv", "kind", positive_label="insulator")
    assert task.labels == ("metal", "insulator")
    assert (frames["test"]["target"].to_numpy() == (df.iloc[180:]["band_gap"] > 0).to_numpy()).all()



def test_three_text_labels_make_a_classifier_of_three_classes_and_more(own_csvs: Path, tmp_path: Path, caplog):
    """A column of three or more text labels is a classifier of that many classes (band gap: metal / semiconductor /
    insulator; a fourth label only in the test file, which no model can learn, is warned about): every predictor
    writes each class's probability, the scores are multi-class ones, the names reach the config and the pipeline,
    and a rerun reuses the finished predictions."""
    from transformers import pipeline

    def kind(gap: pd.Series) -> pd.Series:
        return pd.Series(np.where(gap == 0, "metal", np.where(gap < 1.5, "semiconductor", "insulator")))

    df = pd.read_csv(own_csvs / "train.csv")
    df["kind"] = kind(df["band_gap"])
    test = df.iloc[180:].copy()
    test.loc[test.index[:2], "kind"] = "topological"
    df.iloc[:180].to_csv(tmp_path / "a.csv", index=False)
    test.to_csv(tmp_path / "b.csv", index=False)
    args = ["--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"), "--target", "kind",
            "--output-dir", str(tmp_path / "o"), *FAST]
    assert main(args) == 0
    names = ["insulator", "metal", "semiconductor", "topological"]
    assert "class(es) 'topological' have no training or validation row" in caplog.text
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["task_type"] == "classification" and summary["class_labels"] == names
    model = tmp_path / "o" / "crossmat" / "fold_0" / "model"
    config = json.loads((model / "config.json").read_text())
    weights = np.asarray(config["class_decision_weights"] or [1.0] * 4)  # chosen on validation for balanced accuracy
    for variant in ("crossmat", "dummy", "rf_magpie"):
        pred = pd.read_csv(tmp_path / "o" / variant / "fold_0" / "predictions.csv")
        probs = pred[[f"probability_{n}" for n in names]].to_numpy()
        label = (probs * (weights if variant == "crossmat" else 1.0)).argmax(1)
        assert np.allclose(probs.sum(1), 1.0, atol=1e-5) and (pred["prediction"] == label).all()
        assert (probs[:, 3] == 0).all() or variant == "crossmat"  # a forest or a frequency never gives it a chance
        scores = summary["variants"][variant]["per_fold"][0]
        assert set(scores) == {"accuracy", "balanced_accuracy", "f1", "rocauc"}
        assert scores["accuracy"] == pytest.approx((pred["prediction"] == pred["target"]).mean())  # the labels written
    dummy = summary["variants"]["dummy"]["per_fold"][0]
    assert dummy["rocauc"] == pytest.approx(0.5) and dummy["balanced_accuracy"] == pytest.approx(1 / 4)
    assert config["id2label"] == dict(zip("0123", names, strict=True))
    assert "prior_exponent" in summary["variants"]["crossmat"]["validation"][0]["calibration"]
    out = pipeline("composition-property-prediction", model=str(model), trust_remote_code=True)(["Cu", "NaCl"])
    assert set(out[0]["probabilities"]) == set(names) and {o["label"] for o in out} <= set(names)
    fold = tmp_path / "o" / "crossmat" / "fold_0" / "fold.json"
    written = fold.stat().st_mtime_ns
    assert main(args) == 0
    assert fold.stat().st_mtime_ns == written  # read back from predictions.csv, not retrained
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["variants"]["crossmat"]["per_fold"] == \
        summary["variants"]["crossmat"]["per_fold"]


def test_text_label_errors_say_what_the_column_holds(tmp_path: Path):
    pd.DataFrame({"formula": ["NaCl", "Cu", "KBr"], "y": ["insulator", "metal", "insulator"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(FileNotFoundError, match=r"--positive-label 'conductor': .* holds 'insulator', 'metal'"):
        load_own_data(tmp_path / "t.csv", tmp_path / "t.csv", "y", positive_label="conductor")
    with pytest.raises(FileNotFoundError, match=r"task type regression: target column 'y' holds the text labels 'insulator', 'metal'"):
        load_own_data(tmp_path / "t.csv", tmp_path / "t.csv", "y", task_type="regression")
    pd.DataFrame({"formula": ["NaCl", "Cu", "Fe"], "y": ["insulator", "metal", "magnet"]}).to_csv(tmp_path / "u.csv", index=False)
    pd.DataFrame({"formula": ["KCl"], "y": ["insulator"]}).to_csv(tmp_path / "v.csv", index=False)
    with pytest.raises(FileNotFoundError, match=r"target column 'y' is not numeric \(row 0 holds 'insulator'\)"):
        load_own_data(tmp_path / "u.csv", tmp_path / "v.csv", "y")  # three labels in four cells: words, not classes


def test_recipe_route_reads_two_text_labels_too(tmp_path: Path):
    """`crossmat train` recipes: the same two-label rule, data.positive_label, the names into id2label."""
    from crossmat.tokenization import CrossMatTokenizerFast
    from crossmat.training.data import DataError, prepare_stage_data
    from crossmat.training.recipe import resolve_stage

    formulas = ["NaCl", "Cu", "KBr", "Fe", "LiF", "Al", "MgO", "Ag", "CaO", "Au"]
    pd.DataFrame({"formula": formulas, "kind": ["insulator", "metal"] * 5}).to_csv(tmp_path / "t.csv", index=False)
    base = {"train": str(tmp_path / "t.csv"), "target_column": "kind", "validation_fraction": 0}
    recipe = resolve_stage({"stage": "finetune", "data": base})
    data = prepare_stage_data(recipe, CrossMatTokenizerFast())
    assert data.info["task"] == "classification" and data.info["class_labels"] == ["insulator", "metal"]
    assert data.train.tensors["labels"].tolist() == [0, 1] * 5
    cfg = recipe.kind.model_config(recipe, data)
    assert cfg["id2label"] == {0: "insulator", 1: "metal"}
    flipped = resolve_stage({"stage": "finetune", "data": {**base, "positive_label": "insulator"}})
    assert prepare_stage_data(flipped, CrossMatTokenizerFast()).train.tensors["labels"].tolist() == [1, 0] * 5
    with pytest.raises(DataError, match="task type regression: target column 'kind' holds the text labels"):
        prepare_stage_data(resolve_stage({"stage": "finetune", "data": {**base, "task": "regression"}}),
                           CrossMatTokenizerFast())



def test_recipe_route_reads_three_classes_and_whole_number_classes(tmp_path: Path):
    """`crossmat train` recipes: three text labels make three classes (sorted, or in card.class_labels' order), and
    whole numbers make classes with data.task=classification; a misnamed class list fails before training."""
    from crossmat.tokenization import CrossMatTokenizerFast
    from crossmat.training.data import DataError, prepare_stage_data
    from crossmat.training.recipe import RecipeError, resolve_stage

    formulas = ["NaCl", "Cu", "Si", "KBr", "Fe", "GaAs", "LiF", "Al", "Ge"]
    kinds = ["insulator", "metal", "semiconductor"] * 3
    pd.DataFrame({"formula": formulas, "kind": kinds, "n": [7, 1, 12] * 3}).to_csv(tmp_path / "t.csv", index=False)
    base = {"train": str(tmp_path / "t.csv"), "target_column": "kind", "validation_fraction": 0}
    recipe = resolve_stage({"stage": "finetune", "data": base})
    data = prepare_stage_data(recipe, CrossMatTokenizerFast())
    assert data.info["task"] == "classification" and data.train.tensors["labels"].tolist() == [0, 1, 2] * 3
    cfg = recipe.kind.model_config(recipe, data)
    assert cfg["num_labels"] == 3 and cfg["id2label"] == {0: "insulator", 1: "metal", 2: "semiconductor"}
    ordered = resolve_stage({"stage": "finetune", "data": base, "card": {"class_labels": ["metal", "semiconductor",
                                                                                           "insulator"]}})
    data = prepare_stage_data(ordered, CrossMatTokenizerFast())
    assert data.train.tensors["labels"].tolist() == [2, 0, 1] * 3
    assert ordered.kind.model_config(ordered, data)["id2label"] == {0: "metal", 1: "semiconductor", 2: "insulator"}
    numbers = resolve_stage({"stage": "finetune", "data": {**base, "target_column": "n", "task": "classification"}})
    data = prepare_stage_data(numbers, CrossMatTokenizerFast())
    assert data.train.tensors["labels"].tolist() == [1, 0, 2] * 3 and data.info["class_labels"] == ["1", "7", "12"]
    misnamed = resolve_stage({"stage": "finetune", "data": base, "card": {"class_labels": ["metal", "semi", "insulator"]}})
    with pytest.raises(DataError, match=r"train row 2: target 'semiconductor' is not one of the classes card.class_labels"):
        prepare_stage_data(misnamed, CrossMatTokenizerFast())
    wrong = resolve_stage({"stage": "finetune", "data": base, "card": {"class_labels": ["metal", "insulator"]}})
    with pytest.raises(RecipeError, match="card.class_labels must name the target's 3 classes"):
        wrong.kind.model_config(wrong, prepare_stage_data(wrong, CrossMatTokenizerFast()))


def test_test_rows_whose_composition_was_trained_on_are_counted(tmp_path: Path, caplog):
    """A test row whose composition is also a training row's (Fe4O6 after Fe2O3) is counted and named: its error
    measures recall of a known compound, which a user comparing models should know."""
    from crossmat.evaluation.own_data import seen_compositions

    formulas = ["Fe2O3", "NaCl", "KBr", "LiF", "CuO"] * 4
    pd.DataFrame({"formula": formulas, "y": [float(i) for i in range(20)]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"formula": ["Fe4O6", "Fe0.4O0.6", "MgO", "CaO", "ZnS"], "y": [1.0, 2.0, 3.0, 4.0, 5.0]}).to_csv(
        tmp_path / "b.csv", index=False)
    rc = main(["--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"), "--target", "y",
               "--output-dir", str(tmp_path / "o"), "--baselines-only", "--baselines", "dummy"])
    assert rc == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["test_rows_with_a_training_composition"] == 2
    assert "2 of 5 test rows (1 distinct composition(s)) have a composition that is also among the training" in caplog.text
    assert seen_compositions(pd.Series(["MgO", "ZnS"]), pd.Series(["Fe2O3"])) == (0, 0)


def test_test_rows_of_one_class_are_named_and_scored_without_sklearn_noise(tmp_path: Path, caplog, recwarn):
    """A test file of one class cannot measure a classifier (ROC-AUC undefined): the run says so once, in words,
    instead of scikit-learn's per-metric warnings, and still scores what is defined."""
    train = ["NaCl", "KBr", "LiF", "CuO", "MgO", "CaO", "ZnS", "FeO", "NiO", "CoO"] * 2
    pd.DataFrame({"formula": train, "y": ["metal", "insulator"] * 10}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"formula": ["SrO", "BaO", "CdS"], "y": ["metal"] * 3}).to_csv(tmp_path / "b.csv", index=False)
    rc = main(["--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"), "--target", "y",
               "--output-dir", str(tmp_path / "o"), "--baselines-only", "--baselines", "dummy"])
    assert rc == 0
    assert "every test row is of class 'metal': ROC-AUC is undefined there" in caplog.text
    assert "every validation row" not in caplog.text  # the carve keeps both classes in validation
    assert not [w for w in recwarn if "single label" in str(w.message) or "not in y_true" in str(w.message)]
    dummy = json.loads((tmp_path / "o" / "summary.json").read_text())["variants"]["dummy"]["per_fold"][0]
    assert math.isnan(dummy["rocauc"]) and dummy["accuracy"] in (0.0, 1.0)


def test_too_few_training_rows_or_one_class_fail_before_any_model(tmp_path: Path):
    """A training file whose only usable row went to validation, or whose 0/1 column held only 1s (a one-class
    'classifier': the forest's IndexError traceback), now fails at loading, naming the file and the reason."""
    pd.DataFrame({"formula": ["Fe2O3", "Xx2O"], "y": [1.5, 2.0]}).to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(Exception, match=r"one.csv: 0 usable training row\(s\) after the validation rows were set aside; at least 2 are needed"):
        load_own_data(tmp_path / "one.csv", tmp_path / "one.csv", "y")
    pd.DataFrame({"formula": ["Fe2O3", "NaCl", "KBr", "LiF"] * 6, "y": [1] * 24}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(Exception, match="every training row is of class 1; a classifier needs rows of two classes or more"):
        load_own_data(tmp_path / "c.csv", tmp_path / "c.csv", "y")
    frame = pd.DataFrame({"formula": ["Fe2O3", "NaCl", "KBr", "LiF"] * 6, "kind": ["metal"] * 24})
    frame.loc[0, "kind"] = "insulator"  # two labels, but the only insulator row is the test file's
    frame.to_csv(tmp_path / "test.csv", index=False)
    frame.assign(kind="metal").to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(Exception, match="every training row is of class 'metal'"):
        load_own_data(tmp_path / "train.csv", tmp_path / "test.csv", "kind")
    pd.DataFrame({"formula": ["Fe2O3", "NaCl", "KBr", "LiF"] * 6, "y": [0.5] * 24}).to_csv(tmp_path / "n.csv", index=False)
    pd.DataFrame({"formula": ["ZnS", "CaO"], "y": [None, None]}).to_csv(tmp_path / "unlabelled.csv", index=False)
    with pytest.raises(Exception, match=r"no rows with both a formula and a target \(2 row\(s\): 2 without a target, 0 "
                                        r"with a formula CrossMat cannot read\); test rows are scored.*crossmat predict"):
        load_own_data(tmp_path / "n.csv", tmp_path / "unlabelled.csv", "y")


def test_a_formula_column_that_holds_no_formulas_names_the_one_that_does(data_dir: Path):
    """The LLM4Mat-Bench layout names its formulas ``formula_pretty`` and also has ``material_id``, a CIF column and
    a pymatgen-JSON column. A missing ``formula`` column, or a formula column of ids or structures, used to end in
    "no column" or "no rows with both a formula and a target"; now the error says which column holds formulas,
    and a pages-long CIF is shown cut."""
    files = data_dir / "llm4mat_bench_mp_sample"
    with pytest.raises(Exception, match=r"no column 'formula' \(column 'formula_pretty' holds formulas: "
                                        r"--formula-column formula_pretty\)"):
        load_own_data(files / "train.csv", files / "test.csv", "band_gap")
    for column, why in (("material_id", "'mp-"), ("cif_structure", "# generated using pymatgen")):
        with pytest.raises(Exception) as err:
            load_own_data(files / "train.csv", files / "test.csv", "band_gap", formula_column=column)
        message = str(err.value)
        assert f"no row of column {column!r} reads as a formula (row 0: formula " in message and why in message
        assert message.endswith("(column 'formula_pretty' holds formulas: --formula-column formula_pretty)")
        assert len(message) < 400
    _, frames, rejected = load_own_data(files / "train.csv", files / "test.csv", "band_gap",
                                        formula_column="formula_pretty")
    assert len(frames["train"]) + len(frames["validation"]) == 10 and not rejected


def test_a_rerun_reuses_a_fold_only_when_its_data_is_unchanged(tmp_path: Path, caplog):
    """Rerunning into the same --output-dir used to reuse a finished fold whenever the settings and the test ids
    matched; the ids of files without an id column are row numbers, so corrected training targets, or a different
    --target, silently returned the old predictions. The fold's data is now part of the check."""
    import logging

    formulas = ["Fe2O3", "NaCl", "KBr", "LiF", "CuO", "MgO"] * 4
    test = pd.DataFrame({"formula": ["ZnS", "CaO"], "y": [1.0, 2.0], "z": [3.0, 4.0]})
    test.to_csv(tmp_path / "test.csv", index=False)
    argv = ["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--output-dir",
            str(tmp_path / "o"), "--baselines-only", "--baselines", "dummy"]

    def dummy_predictions(target: str, y: list[float]) -> list[float]:
        pd.DataFrame({"formula": formulas, "y": y, "z": [10.0] * 24}).to_csv(tmp_path / "train.csv", index=False)
        assert main([*argv, "--target", target]) == 0
        return pd.read_csv(tmp_path / "o" / "dummy" / "fold_0" / "predictions.csv")["prediction"].tolist()

    first = dummy_predictions("y", [1.0] * 24)
    with caplog.at_level(logging.INFO):
        assert dummy_predictions("y", [1.0] * 24) == first and "already done" in caplog.text  # unchanged: reused
    assert dummy_predictions("y", [5.0] * 24) == [5.0, 5.0]  # corrected training targets: retrained
    assert dummy_predictions("z", [5.0] * 24) == [10.0, 10.0]  # another target column: retrained


def test_an_interrupted_fold_resumes_from_its_checkpoint_to_the_same_predictions(tmp_path: Path, monkeypatch, capsys,
                                                                                    caplog):
    """A fold killed mid-training used to start again from step 0 on the rerun (a default-recipe fold of a large
    file is hours). Now the rerun continues from the fold's newest checkpoint and gives exactly the predictions of
    an uninterrupted run; Ctrl-C says how to continue; changed data never resumes another run's checkpoint."""
    import logging
    import os

    from crossmat.training.loop import FAULT_ENV

    recipe = REPO / "benchmarks" / "matbench" / "recipes" / "tiny_scratch.yaml"
    rows = pd.read_csv(Path(os.environ.get("CROSSMAT_DATA_DIR", REPO.parent / "shared" / "data")) / "matbench_v0.1"
                       / "matbench_expt_gap.csv.gz").iloc[:120]
    rows.iloc[:100].to_csv(tmp_path / "train.csv", index=False)
    rows.iloc[100:].to_csv(tmp_path / "test.csv", index=False)

    def run(out: str) -> int:
        return main(["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--target",
                     "gap expt", "--config", str(recipe), "--set", "train.max_steps=6", "--set", "train.batch_size=16",
                     "--set", "train.checkpoint_every=2", "--baselines", "none", "--output-dir", str(tmp_path / out)])

    def predictions(out: str) -> list[float]:
        return pd.read_csv(tmp_path / out / "tiny_scratch" / "fold_0" / "predictions.csv")["prediction"].tolist()

    assert run("clean") == 0

    def interrupt(pid: int, sig: int) -> None:  # the training loop's fault hook, as a Ctrl-C
        raise KeyboardInterrupt

    def cut(out: str) -> None:
        with monkeypatch.context() as m:
            m.setenv(FAULT_ENV, "5")
            m.setattr(os, "kill", interrupt)
            assert run(out) == 130
        assert "interrupted: finished folds are kept in" in capsys.readouterr().err

    cut("cut")
    with caplog.at_level(logging.INFO):
        assert run("cut") == 0
    assert "continuing the interrupted training" in caplog.text
    assert "resumed from" in capsys.readouterr().out
    assert predictions("cut") == predictions("clean")
    assert json.loads((tmp_path / "cut" / "tiny_scratch" / "fold_0" / "fold.json").read_text())["resumed"] is True
    cut("changed")  # interrupted, then the training targets are corrected: a fresh start, not the old checkpoint
    caplog.clear()
    rows.iloc[:100].assign(**{"gap expt": rows["gap expt"].iloc[:100] + 1.0}).to_csv(tmp_path / "train.csv", index=False)
    with caplog.at_level(logging.INFO):
        assert run("changed") == 0
    assert "continuing" not in caplog.text and "resumed from" not in capsys.readouterr().out


def test_a_log_target_is_modelled_and_scored_on_one_scale_for_every_predictor(tmp_path: Path, capsys):
    """``--set data.target_transform=log10`` used to train CrossMat on log10(y) and score its log-scale predictions
    against the raw targets (MAE 75,257 for a 0.88 model, beside baselines scored on y). Now the recipe key is
    refused in evaluate with what to use, and ``--target-transform`` puts every predictor and score on log10."""
    conductivity = [3.2e-4, 5.0e2, 1.0e6, 7.7, 0.05, 12.0] * 4
    formulas = ["Fe2O3", "NaCl", "Cu", "ZnS", "SiO2", "GaAs"] * 4
    pd.DataFrame({"formula": [*formulas, "KBr"], "sigma": [*conductivity, 0.0]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"formula": ["MgO", "Ag"], "sigma": [1.0e-3, 6.3e7]}).to_csv(tmp_path / "b.csv", index=False)
    files = ["--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"), "--target", "sigma"]
    recipe = str(REPO / "benchmarks" / "matbench" / "recipes" / "tiny_scratch.yaml")
    assert main([*files, "--config", recipe, "--set", "data.target_transform=log10", "--baselines", "none",
                 "--output-dir", str(tmp_path / "refused")]) == 2
    assert "use --target-transform log10, which puts every predictor and every score on that scale" in capsys.readouterr().err
    assert main([*files, "--target-transform", "log10", "--unit", "S/m", "--baselines-only", "--baselines", "dummy",
                 "--output-dir", str(tmp_path / "o")]) == 0
    assert "csv log10(sigma) (regression" in capsys.readouterr().out
    dummy = pd.read_csv(tmp_path / "o" / "dummy" / "fold_0" / "predictions.csv")
    assert dummy["target"].tolist() == pytest.approx([-3.0, math.log10(6.3e7)])
    assert abs(dummy["prediction"].iloc[0]) < 7  # a mean of log10 values, not of raw conductivities
    assert "a.csv row 24 (train-24): target <= 0 has no log10" in (tmp_path / "o" / "rejected_rows.txt").read_text()
    info, _, _ = load_own_data(tmp_path / "a.csv", tmp_path / "b.csv", "sigma", unit="S/m", target_transform="log10")
    assert (info.target, info.unit) == ("log10(sigma)", "log10(S/m)")


def test_fold_and_row_options_do_what_they_say_on_your_own_files(tmp_path: Path, capsys, caplog):
    """``--folds 3`` and ``--max-train-rows 10`` were silently ignored on your own files (one fixed split), and
    ``--validation-fraction 0`` printed an empty validation line. Now: an error, a seeded subsample the summary
    counts, and a line saying nothing calibrated the model."""
    formulas = ["Fe2O3", "NaCl", "KBr", "LiF", "CuO", "MgO", "ZnS", "CaO"] * 5
    pd.DataFrame({"formula": formulas, "y": [float(i) for i in range(40)]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"formula": ["SrO", "BaO"], "y": [1.0, 2.0]}).to_csv(tmp_path / "b.csv", index=False)
    files = ["--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"), "--target", "y"]
    dummy = ["--baselines-only", "--baselines", "dummy"]
    assert main([*files, *dummy, "--folds", "3", "--output-dir", str(tmp_path / "f")]) == 2
    assert "has one fixed split (fold 0); --folds selects among MatBench's 5 official folds" in capsys.readouterr().err
    assert main([*files, *dummy, "--max-train-rows", "10", "--output-dir", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["n_train"] == [10]
    assert "training on 10 of the 36 training rows (--max-train-rows)" in caplog.text
    recipe = str(REPO / "benchmarks" / "matbench" / "recipes" / "tiny_scratch.yaml")
    capsys.readouterr()
    assert main([*files, "--config", recipe, "--set", "train.batch_size=16", "--baselines", "none",
                 "--validation-fraction", "0", "--output-dir", str(tmp_path / "v")]) == 0
    assert ("tiny_scratch had no held-out validation rows (--validation-fraction 0 and no --validation file): nothing "
            "calibrated its uncertainty") in capsys.readouterr().out


def test_a_model_folder_is_fine_tuned_with_the_default_recipe_and_its_card_gets_the_scores(tmp_path: Path, capsys):
    """``--model DIR`` (a backbone you pretrained, or a property model) used an old recipe (30 epochs, batch 128: 40
    rows failed with 'fewer than one optimizer step'), ignored --quick, and a finished run ended in a traceback when
    writing DIR's model card (huggingface_hub refuses a source name without a URL). Now it gets the default recipe
    (the folder's own size and features), and the card its scores."""
    import yaml

    import crossmat.modeling as modeling
    from crossmat.tokenization import CrossMatTokenizerFast

    cfg = modeling.CrossMatConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  num_labels=1, problem_type="regression", target_mean=[0.0], target_std=[1.0])
    folder = tmp_path / "mine"
    modeling.CrossMatForPropertyPrediction(cfg).save_pretrained(folder)
    CrossMatTokenizerFast().save_pretrained(folder)
    formulas = ["Fe2O3", "NaCl", "KBr", "LiF", "CuO", "MgO", "ZnS", "CaO"] * 5
    pd.DataFrame({"formula": formulas, "y": [float(i % 7) for i in range(40)]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"formula": ["SrO", "BaO"], "y": [1.0, 2.0]}).to_csv(tmp_path / "b.csv", index=False)
    rc = main(["--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"), "--target", "y", "--model",
               str(folder), "--quick", "--baselines", "none", "--output-dir", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    assert f"model-index updated: {folder / 'README.md'}" in out.out and "Traceback" not in out.err
    assert "metric_value" not in (folder / "README.md").read_text() and "value:" in (folder / "README.md").read_text()
    fold_model = tmp_path / "o" / "mine_quick" / "fold_0" / "model"
    used = yaml.safe_load((fold_model / "recipe.yaml").read_text())
    assert used["train"]["epochs"] == 10 and used["train"]["calibrate"] and used["train"]["same_composition"]
    config = json.loads((fold_model / "config.json").read_text())
    assert config["ensemble_size"] == 2 and config["hidden_size"] == 32  # the recipe's ensemble, the folder's size
