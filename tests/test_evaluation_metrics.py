"""Metric values against hand-computed ones, fold handling and the MatBench JSON format."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from crossmat.evaluation import carve_validation, fold_indices, load_matbench_frame, score
from crossmat.evaluation.matbench_json import benchmark_dict, check_matbench_dict, hash_dictionary, task_results


def test_matbench_regression_hand_computed():
    # errors p - y = [-0.5, 0, 1, -2]
    s = score("matbench", "regression", [1, 2, 3, 4], [1.5, 2, 2, 6])
    assert s["mae"] == pytest.approx(0.875)
    assert s["rmse"] == pytest.approx(math.sqrt(5.25 / 4))
    assert s["max_error"] == pytest.approx(2.0)
    assert s["mape"] == pytest.approx((0.5 / 1.5 + 0 + 0.5 + 2 / 6) / 4)


def test_matbench_classification_hand_computed():
    s = score("matbench", "classification", [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert s["rocauc"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered correctly
    assert s["accuracy"] == pytest.approx(0.75)  # labels at 0.5: [0, 0, 0, 1]
    assert s["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert s["f1"] == pytest.approx(2 / 3)  # precision 1, recall 1/2



def test_multiclass_classification_hand_computed():
    """Your own files of three classes: label metrics of the most probable class, macro one-vs-rest ROC-AUC."""
    probs = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]]
    refs = [0, 1, 2, 2, 0]  # predicted classes 0, 1, 1, 2, 0: 4 of 5 right
    s = score("csv", "classification", probs, refs)
    assert s["accuracy"] == pytest.approx(0.8)
    assert s["balanced_accuracy"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert s["f1"] == pytest.approx((1.0 + 2 / 3 + 2 / 3) / 3)
    # one-vs-rest AUCs: class 0 1.0; class 1 (0.5 vs 0.2, 0.6, 0.3, 0.1) 0.75; class 2 (0.3, 0.4 vs 0.1, 0.3, 0.4) 4/6
    assert s["rocauc"] == pytest.approx((1.0 + 0.75 + 4 / 6) / 3)
    with pytest.raises(ValueError, match="class indices 0..2"):
        score("csv", "classification", probs, [0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match="shape"):
        score("csv", "classification", [0.1, 0.9], [0, 1])


def test_llm4mat_regression_mad_on_test_targets():
    s = score("llm4mat", "regression", [1, 2, 4, 4], [1, 2, 3, 6])
    assert s["mad"] == pytest.approx(1.5)  # mean |y - 3|
    assert s["mae"] == pytest.approx(0.75)
    assert s["mad_mae"] == pytest.approx(2.0)


def test_llm4mat_official_rounded_auc_differs_from_true_auc():
    s = score("llm4mat", "classification", [0.1, 0.2, 0.3, 0.45, 0.7], [0, 0, 1, 1, 1])
    assert s["roc_auc"] == pytest.approx(1.0)  # probabilities rank every positive above every negative
    # rounded [0,0,0,0,1]: pairs (pos, neg) = 4 ties (0.5 each) + 2 wins -> 4/6
    assert s["official_auc_rounded"] == pytest.approx(4 / 6)


def test_score_rejects_bad_input():
    with pytest.raises(ValueError, match="predictions for"):
        score("matbench", "regression", [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="probabilities"):
        score("matbench", "classification", [1.2, 0.1], [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        score("matbench", "regression", [np.nan, 1.0], [1.0, 1.0])


def test_official_folds_of_steels():
    frame = load_matbench_frame("matbench_steels")
    seen = np.zeros(len(frame), dtype=int)
    sizes = []
    for k in range(5):
        train, test = fold_indices(frame["test_fold"], k)
        assert not set(train) & set(test)
        assert len(train) + len(test) == len(frame)
        seen[test] += 1
        sizes.append(len(test))
    assert (seen == 1).all()  # every row is a test row exactly once
    assert sizes == [63, 63, 62, 62, 62]
    # official order of fold 0's test ids (matbench_v0.1_validation.json starts with these)
    _, test0 = fold_indices(frame["test_fold"], 0)
    assert frame["id"].iloc[test0[:3]].tolist() == ["mb-steels-003", "mb-steels-005", "mb-steels-020"]
    with pytest.raises(ValueError, match="fold must be"):
        fold_indices(frame["test_fold"], 5)


def test_validation_is_carved_from_training_rows_only():
    frame = load_matbench_frame("matbench_glass")
    train, test = fold_indices(frame["test_fold"], 2)
    labels = frame["target"].to_numpy()[train]
    fit, val = carve_validation(train, 0.1, seed=3, labels=labels)
    assert not set(val) & set(test) and not set(fit) & set(val)
    assert set(fit) | set(val) == set(train)
    assert len(val) == pytest.approx(0.1 * len(train), abs=2)
    pos_rate = frame["target"].to_numpy()
    assert pos_rate[val].mean() == pytest.approx(pos_rate[train].mean(), abs=0.01)  # stratified
    fit2, val2 = carve_validation(train, 0.1, seed=3, labels=labels)
    assert (val == val2).all()  # seeded


def test_a_rare_class_keeps_a_row_on_each_side_of_the_validation_carve():
    """4 positives in 60 rows at 10%: round(0.4) would give validation no positive, so the classifier's
    temperature and threshold would be calibrated on one class. Each class of two or more rows keeps one in each part."""
    labels = np.array([1] * 4 + [0] * 56)
    fit, val = carve_validation(np.arange(60), 0.1, seed=0, labels=labels)
    assert sorted(set(labels[val])) == [0, 1] and sorted(set(labels[fit])) == [0, 1]
    assert (labels[val] == 1).sum() == 1 and len(val) == 7
    single = np.array([1] + [0] * 59)  # a class of one row stays in training
    fit, val = carve_validation(np.arange(60), 0.1, seed=0, labels=single)
    assert 0 in fit and set(single[val]) == {0}


def _fake_results(frame, task_type):
    ids, preds, scores = [], [], []
    for k in range(5):
        _, test = fold_indices(frame["test_fold"], k)
        y = frame["target"].to_numpy()[test]
        p = np.full(len(test), 0.5) if task_type == "classification" else y + 1.0
        ids.append(frame["id"].iloc[test].tolist())
        preds.append(p)
        scores.append(score("matbench", task_type, p, y))
    return ids, task_results(ids, preds, scores, [{"k": k} for k in range(5)])


def test_matbench_json_format_and_hash():
    frame = load_matbench_frame("matbench_steels")
    ids, results = _fake_results(frame, "regression")
    d = benchmark_dict({"matbench_steels": results}, {"algorithm": "test"})
    folds = {"matbench_steels": {f"fold_{k}": ids[k] for k in range(5)}}
    check_matbench_dict(d, folds, {"matbench_steels": "regression"})
    assert set(d) == {"@module", "@class", "version", "benchmark_name", "tasks", "user_metadata", "datestamp", "hash"}
    fold0 = d["tasks"]["matbench_steels"]["results"]["fold_0"]
    assert set(fold0["scores"]) == {"mae", "rmse", "mape", "max_error"}
    assert fold0["scores"]["mae"] == pytest.approx(1.0)  # every prediction is off by exactly +1 MPa
    tampered = copy.deepcopy(d)
    tampered["tasks"]["matbench_steels"]["results"]["fold_0"]["scores"]["mae"] = 0.0
    with pytest.raises(ValueError, match="hash"):
        check_matbench_dict(tampered)
    missing = copy.deepcopy(d)
    missing["tasks"]["matbench_steels"]["results"]["fold_1"]["data"].popitem()
    missing["hash"] = hash_dictionary({k: v for k, v in missing.items() if k != "hash"})
    with pytest.raises(ValueError, match="official test ids"):
        check_matbench_dict(missing, folds)


def test_matbench_json_classification_scores():
    frame = load_matbench_frame("matbench_expt_is_metal")
    ids, results = _fake_results(frame, "classification")
    d = benchmark_dict({"matbench_expt_is_metal": results})
    check_matbench_dict(d, task_types={"matbench_expt_is_metal": "classification"})
    assert d["tasks"]["matbench_expt_is_metal"]["results"]["fold_3"]["scores"]["rocauc"] == pytest.approx(0.5)
