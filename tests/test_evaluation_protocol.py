"""The harness end to end: ``evaluate.py`` shim, bad input caught before training, the MatBench
protocol on matbench_steels with a tiny CrossMat model, and the LLM4Mat-Bench protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossmat.evaluation.cli import main
from crossmat.evaluation.matbench_json import check_matbench_dict
from crossmat.evaluation.records import RECORD_KEYS
from crossmat.evaluation.tasks import fold_indices, load_matbench_frame

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "benchmarks" / "matbench" / "recipes" / "tiny_scratch.yaml"


def test_import_evaluate_from_repo_root_gives_hf_library():
    code = (
        "import evaluate, json; m = evaluate.load('evaluation/metrics/matbench_regression');"
        "print(json.dumps([evaluate.__file__, m.compute(predictions=[1.0, 3.0], references=[2.0, 2.0])]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    path, scores = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(path).resolve() != (REPO / "evaluate.py").resolve()
    assert "site-packages" in path or "dist-packages" in path
    assert scores["mae"] == pytest.approx(1.0)
    usage = subprocess.run([sys.executable, "evaluate.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert usage.returncode == 0 and "--benchmark" in usage.stdout


def test_unknown_task_fails_before_training(tmp_path, capsys):
    rc = main(["--benchmark", "matbench", "--task", "matbench_nope", "--config", str(TINY), "--output-dir",
               str(tmp_path / "o"), "--results-dir", "none"])
    assert rc == 2
    assert "unknown MatBench task 'matbench_nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_dataset_folder_fails_before_training(tmp_path, capsys):
    rc = main(["--benchmark", "matbench", "--task", "matbench_steels", "--config", str(TINY), "--output-dir",
               str(tmp_path / "o"), "--results-dir", "none", "--data-dir", str(tmp_path / "empty")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
    rc = main(["--benchmark", "llm4mat", "--task", "mp/band_gap", "--baselines-only", "--output-dir",
               str(tmp_path / "o"), "--results-dir", "none", "--data-dir", str(tmp_path / "empty")])
    assert rc == 2
    assert "LLM4Mat-Bench dataset 'mp' not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_head_mismatch_fails_before_training(tmp_path, capsys):
    import crossmat.modeling as modeling
    from crossmat.tokenization import CrossMatTokenizerFast

    cfg = modeling.CrossMatConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  num_labels=1, problem_type="regression", target_mean=[0.0], target_std=[1.0])
    folder = tmp_path / "reg_model"
    modeling.CrossMatForPropertyPrediction(cfg).save_pretrained(folder)
    CrossMatTokenizerFast().save_pretrained(folder)
    rc = main(["--benchmark", "matbench", "--task", "matbench_glass", "--model", str(folder), "--output-dir",
               str(tmp_path / "o"), "--results-dir", "none"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "regression head" in err and "classification task" in err
    assert not (tmp_path / "o").exists()


def test_matbench_protocol_end_to_end_on_steels(tmp_path):
    out, results = tmp_path / "run", tmp_path / "results"
    args = ["--benchmark", "matbench", "--task", "matbench_steels", "--config", str(TINY), "--baselines", "dummy",
            "--output-dir", str(out), "--results-dir", str(results)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == [0, 1, 2, 3, 4] and summary["n_test"] == [63, 63, 62, 62, 62]
    frame = load_matbench_frame("matbench_steels")
    official = {f"fold_{k}": frame["id"].iloc[fold_indices(frame["test_fold"], k)[1]].tolist() for k in range(5)}
    for variant in ("tiny_scratch", "dummy"):
        d = json.loads((out / variant / "matbench_results.json").read_text())
        check_matbench_dict(d, {"matbench_steels": official}, {"matbench_steels": "regression"})
        for k in range(5):  # scores recomputed by hand from the saved predictions
            pred = pd.read_csv(out / variant / f"fold_{k}" / "predictions.csv")
            assert pred["id"].tolist() == official[f"fold_{k}"]
            mae = float(np.mean(np.abs(pred["prediction"] - pred["target"])))
            assert summary["variants"][variant]["per_fold"][k]["mae"] == pytest.approx(mae)
            assert d["tasks"]["matbench_steels"]["results"][f"fold_{k}"]["scores"]["mae"] == pytest.approx(mae)
    # dummy = mean of the fold's training rows (fit + validation), checked by hand on fold 0
    train0, _ = fold_indices(frame["test_fold"], 0)
    pred0 = pd.read_csv(out / "dummy" / "fold_0" / "predictions.csv")["prediction"]
    assert np.allclose(pred0, frame["target"].to_numpy()[train0].mean())
    rec = json.loads((results / "matbench" / "matbench_steels" / "tiny_scratch.json").read_text())
    assert set(RECORD_KEYS) <= set(rec) and rec["metric"] == "mae" and len(rec["folds"]) == 5
    assert rec["mean"] == pytest.approx(np.mean(rec["folds"])) and rec["std"] == pytest.approx(np.std(rec["folds"]))
    assert rec["baseline_same_run"]["dummy"]["mean"] == pytest.approx(summary["variants"]["dummy"]["summary"]["mae"]["mean"])
    # the tiny model's fold models were fine-tuned through training.run_recipe and saved with a tokenizer
    assert (out / "tiny_scratch" / "fold_4" / "model" / "tokenizer.json").is_file()
    # the fold model says what it is: MatBench tag and notes, the task's unit in its config
    fold_model = out / "tiny_scratch" / "fold_4" / "model"
    card = (fold_model / "README.md").read_text()
    assert "- matbench" in card.split("---")[1] and "test_fold != k" in card and "matbench_steels, fold 4" in card
    assert json.loads((fold_model / "config.json").read_text())["target_units"] == ["MPa"]
    # resume: rerunning reuses every finished fold (no training) and reproduces the numbers
    mtime = (out / "tiny_scratch" / "fold_0" / "predictions.csv").stat().st_mtime
    assert main(args) == 0
    assert (out / "tiny_scratch" / "fold_0" / "predictions.csv").stat().st_mtime == mtime
    again = json.loads((out / "summary.json").read_text())
    assert again["variants"]["tiny_scratch"]["per_fold"] == summary["variants"]["tiny_scratch"]["per_fold"]


def _llm4mat_dir() -> Path:
    root = Path(os.environ.get("CROSSMAT_DATA_DIR", REPO.parent / "shared" / "data"))
    return root / "llm4mat_bench_mp_sample"


def test_llm4mat_protocol_regression_and_classification(tmp_path):
    test = pd.read_csv(_llm4mat_dir() / "test.csv")
    train = pd.concat([pd.read_csv(_llm4mat_dir() / f"{s}.csv") for s in ("train", "validation")])
    assert main(["--benchmark", "llm4mat", "--task", "mp/band_gap", "--baselines-only", "--baselines", "dummy",
                 "--output-dir", str(tmp_path / "bg"), "--results-dir", str(tmp_path / "res")]) == 0
    s = json.loads((tmp_path / "bg" / "summary.json").read_text())["variants"]["dummy"]["per_fold"][0]
    y = test["band_gap"].to_numpy()
    mad = np.mean(np.abs(y - y.mean()))  # MAD of the *test* targets, as the official code
    mae = np.mean(np.abs(train["band_gap"].mean() - y))
    assert s["mad"] == pytest.approx(mad) and s["mad_mae"] == pytest.approx(mad / mae)
    rec = json.loads((tmp_path / "res" / "llm4mat" / "mp__band_gap" / "dummy.json").read_text())
    assert rec["metric"] == "mad_mae" and rec["mean"] == pytest.approx(mad / mae)
    assert main(["--benchmark", "llm4mat", "--task", "mp/is_stable", "--baselines-only", "--baselines", "dummy",
                 "--output-dir", str(tmp_path / "st"), "--results-dir", "none"]) == 0
    c = json.loads((tmp_path / "st" / "summary.json").read_text())
    assert c["task_type"] == "classification"
    assert c["variants"]["dummy"]["per_fold"][0] == {"official_auc_rounded": 0.5, "roc_auc": 0.5}
    assert main(["--benchmark", "llm4mat", "--task", "mp/not_a_property", "--baselines-only", "--output-dir",
                 str(tmp_path / "x"), "--results-dir", "none"]) == 2


def test_ensemble_uncertainty_recorded_and_calibrated(tmp_path):
    """An ensemble recipe's per-row std reaches predictions.csv, the MatBench JSON (per-sample uncertainty)
    and the summary's calibration block (coverage of the test errors by 1 and 2 sigma)."""
    out = tmp_path / "run"
    assert main(["--benchmark", "matbench", "--task", "matbench_steels", "--config", str(TINY), "--baselines", "none",
                 "--set", "model.config.ensemble_size=2", "--output-dir", str(out), "--results-dir", "none"]) == 0
    pred = pd.read_csv(out / "tiny_scratch" / "fold_0" / "predictions.csv")
    assert (pred["uncertainty"] > 0).all()
    d = json.loads((out / "tiny_scratch" / "matbench_results.json").read_text())
    frame = load_matbench_frame("matbench_steels")
    official = {f"fold_{k}": frame["id"].iloc[fold_indices(frame["test_fold"], k)[1]].tolist() for k in range(5)}
    check_matbench_dict(d, {"matbench_steels": official}, {"matbench_steels": "regression"})
    unc = d["tasks"]["matbench_steels"]["results"]["fold_0"]["uncertainty"]
    assert list(unc) == official["fold_0"] and np.allclose(list(unc.values()), pred["uncertainty"])
    cal = json.loads((out / "summary.json").read_text())["variants"]["tiny_scratch"]["uncertainty_calibration"]
    err = np.abs(pred["prediction"] - pred["target"])
    assert 0.0 <= cal["within_1_sigma"] <= cal["within_2_sigma"] <= 1.0
    assert cal["mean_sigma"] > 0 and np.isfinite(cal["spearman_sigma_error"]) and err.mean() > 0


def test_llm4mat_harness_scores_the_published_dataset(tmp_path):
    """The harness's frames are exactly what ``python -m crossmat.dataset_builders llm4mat`` publishes, also for
    rows the two used to treat differently (an unparseable formula, a duplicated test material)."""
    from crossmat.dataset_builders.llm4mat import build_llm4mat
    from crossmat.evaluation.tasks import load_llm4mat

    sample = tmp_path / "llm4mat_bench_mp_sample"
    sample.mkdir()
    for split in ("train", "validation", "test"):
        frame = pd.read_csv(_llm4mat_dir() / f"{split}.csv")
        if split == "train":
            frame.loc[3, "formula_pretty"] = "Xx2O3"
        if split == "test":
            frame = pd.concat([frame, frame.iloc[[2]]], ignore_index=True)
        frame.to_csv(sample / f"{split}.csv", index=False)
    props = ["band_gap", "is_stable", "is_gap_direct"]
    build_llm4mat(sample, "mp", tmp_path / "built", properties=props, on_bad="report", keep_cif=False)
    for prop in props:
        info, frames, rejected = load_llm4mat(f"mp/{prop}", tmp_path)
        for split, frame in frames.items():
            published = pd.read_parquet(tmp_path / "built" / prop / f"{split}.parquet")
            pd.testing.assert_frame_equal(frame.reset_index(drop=True), published, check_dtype=True)
        assert "Xx2O3" not in set(frames["train"]["formula"]) and frames["test"]["id"].is_unique
        assert any("train row 3" in r and "unparseable formula" in r for r in rejected)
        assert info.task_type == ("regression" if prop == "band_gap" else "classification")
