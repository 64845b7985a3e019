"""Calibrated uncertainty and decision thresholds (crossmat.modeling.calibration): fitted on held-out rows, stored
in the weights, carried through save/load, the Hub pipeline, remote code and the evaluation scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossmat.evaluation.crossmat_predictor import decision_scores
from crossmat.modeling import CrossMatConfig, CrossMatForPropertyPrediction, calibration
from crossmat.modeling.calibration import (
    calibrate_property_model,
    coverage,
    fit_prior_exponent,
    fit_temperature,
    fit_threshold,
)
from crossmat.modeling.pipeline_crossmat import label_indices
from crossmat.tokenization import CrossMatTokenizerFast

from .test_inference_support import last_json, run_without_package
from .test_tokenizer import remote_property_outputs

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return CrossMatTokenizerFast()


@pytest.fixture(scope="module")
def held_out(matbench_formulas):
    """200 real formulas with a synthetic target whose noise grows with the oxygen fraction (heteroscedastic)."""
    from pymatgen.core import Composition

    formulas = matbench_formulas["matbench_expt_gap"][:200]
    rng = np.random.default_rng(0)
    oxy = np.array([Composition(f).get_atomic_fraction("O") for f in formulas])
    noise = rng.normal(size=len(formulas)) * (0.1 + 2.0 * oxy)
    return formulas, noise


def _model(**extra) -> CrossMatForPropertyPrediction:
    torch.manual_seed(0)
    return CrossMatForPropertyPrediction(CrossMatConfig(**TINY, num_labels=1, problem_type="regression",
                                                        target_mean=[0.0], target_std=[1.0], **extra)).eval()


def _encode(tokenizer, formulas):
    enc = tokenizer(formulas, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_regression_calibration_covers_held_out_rows_and_is_heteroscedastic(tokenizer, held_out):
    formulas, noise = held_out
    model = _model()
    ids, mask = _encode(tokenizer, formulas)
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()
        assert model(input_ids=ids, attention_mask=mask).uncertainty is None  # uncalibrated: no sigma
    result = calibrate_property_model(model, ids, mask, pred + noise)
    assert result.rows == 200 and result.k and result.scale > 0
    assert abs(result.coverage_1sigma - 0.683) < 0.1 and abs(result.coverage_2sigma - 0.954) < 0.1
    with torch.no_grad():
        sigma = model(input_ids=ids, attention_mask=mask).uncertainty[:, 0].numpy()
    assert sigma.shape == (200,) and (sigma > 0).all()
    from pymatgen.core import Composition

    oxy = np.array([Composition(f).get_atomic_fraction("O") for f in formulas])
    assert np.corrcoef(sigma, oxy)[0, 1] > 0.2  # noisier rows get wider bands
    assert model.config.uncertainty_rows == 200


def test_ensemble_spread_joins_the_sigma_when_it_tracks_the_errors(tokenizer, matbench_formulas):
    """A two-member ensemble whose errors grow with the members' spread: calibration gives the spread a weight,
    and on new rows the stored model's sigma is scale * sqrt(local**2 + weight * spread**2) and covers them."""
    formulas = matbench_formulas["matbench_expt_gap"][:400]
    model = _model(ensemble_size=2)
    ids, mask = _encode(tokenizer, formulas)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        pred, spread = out.logits[:, 0].numpy(), out.uncertainty[:, 0].numpy()
    z = (spread - spread.mean()) / spread.std()  # an untrained ensemble's spread varies little: standardise it
    targets = pred + np.random.default_rng(3).normal(size=len(pred)) * np.exp(z)
    cal, new = slice(0, 200), slice(200, 400)
    result = calibrate_property_model(model, ids[cal], mask[cal], targets[cal])
    assert result.spread_weight and result.spread_weight > 0 and model.config.uncertainty_spread_weight > 0
    assert abs(result.coverage_1sigma - 0.683) < 0.08 and abs(result.coverage_2sigma - 0.954) < 0.08
    with torch.no_grad():
        out = model(input_ids=ids[new], attention_mask=mask[new])
        local = model.local_residual_scale(out.pooler_output)[:, 0].numpy()
    expected = result.scale * np.sqrt(local**2 + result.spread_weight * spread[new].astype(np.float64) ** 2)
    assert out.uncertainty[:, 0].numpy() == pytest.approx(expected, rel=1e-4)
    c1, c2 = coverage(targets[new] - pred[new], out.uncertainty[:, 0].numpy())
    assert abs(c1 - 0.683) < 0.1 and abs(c2 - 0.954) < 0.1


def test_calibration_survives_save_load_and_runs_as_remote_code(tokenizer, held_out, tmp_path):
    formulas, noise = held_out
    model = _model()
    ids, mask = _encode(tokenizer, formulas)
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()
    calibrate_property_model(model, ids, mask, pred + noise)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    test = ["Fe2O3", "NaCl", "LiCoO2"]
    with torch.no_grad():
        expected = model(**tokenizer(test, padding=True, return_tensors="pt")).uncertainty[:, 0].tolist()
    import crossmat

    assert crossmat.predict(str(tmp_path), test).uncertainty[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
    from transformers import pipeline

    pipe = pipeline("composition-property-prediction", model=str(tmp_path), trust_remote_code=True)
    assert [r["std"] for r in pipe(test)] == pytest.approx(expected, abs=1e-6)
    assert remote_property_outputs(tmp_path, test, "uncertainty") == pytest.approx(expected, abs=1e-6)
    # the prediction intervals: value ± m * std with the stored multipliers, in the pipeline, the CSV and the app
    m68, m95 = model.config.uncertainty_interval_multipliers
    assert 0 < m68 < m95
    for r in pipe(test):
        for name, m in (("interval_68", m68), ("interval_95", m95)):
            assert r[name] == pytest.approx([r["value"] - m * r["std"], r["value"] + m * r["std"]], abs=1e-5)
    from crossmat.inference.predict import predict_file

    (tmp_path / "in.csv").write_text("formula\n" + "\n".join([*test, "Xx2"]) + "\n")
    predict_file(tmp_path, tmp_path / "in.csv", tmp_path / "out.csv")
    import pandas as pd

    out = pd.read_csv(tmp_path / "out.csv")
    name = model.config.target_names[0] if model.config.target_names else "LABEL_0"
    value, std = out[f"predicted_{name}"][:3].to_numpy(), out[f"std_{name}"][:3].to_numpy()
    assert (out[f"high95_{name}"][:3].to_numpy() - value).tolist() == pytest.approx([m95 * s for s in expected],
                                                                                     abs=1e-5)
    assert out[f"low68_{name}"][:3].tolist() == pytest.approx((value - m68 * std).tolist())
    assert out[f"low95_{name}"].isna().tolist() == [False, False, False, True]  # the invalid row: no interval
    from crossmat.inference.engine import FormulaPredictor

    one = FormulaPredictor(tmp_path).predict_one("Fe2O3")["predictions"][0]
    assert one["interval_95"] == pytest.approx([one["value"] - m95 * one["std"], one["value"] + m95 * one["std"]])
    # the Hub route without this package: the folder's remote-code pipeline gives the same intervals
    from crossmat.inference import add_pipeline_to_model_dir

    add_pipeline_to_model_dir(tmp_path)
    code = (f"import json\nfrom transformers import pipeline\npipe = pipeline('composition-property-prediction', "
            f"model={str(tmp_path)!r}, trust_remote_code=True)\nprint(json.dumps(pipe({test!r})))\n")
    proc = run_without_package(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = last_json(proc.stdout)
    assert [b for r in remote for b in r["interval_95"]] == pytest.approx(
        [b for r in pipe(test) for b in r["interval_95"]], abs=1e-5)


def test_conformal_multipliers_are_split_conformal_quantiles():
    ratios = np.arange(1, 100, dtype=float)  # 99 rows: ranks ceil(100 * q)
    assert calibration.conformal_multipliers(ratios) == [69.0, 96.0]
    assert calibration.conformal_multipliers(np.array([3.0, 1.0, 2.0])) == [3.0, 3.0]  # too few: the largest
    with pytest.raises(ValueError, match="finite"):
        calibration.conformal_multipliers(np.array([1.0, np.nan]))


def test_intervals_cover_heavy_tailed_errors_where_one_sigma_cannot(tokenizer, matbench_formulas):
    """Heavy-tailed errors (Student t, 2 degrees of freedom): no Gaussian sigma covers both 68% at 1 sigma and
    95% at 2 sigma, but the conformal intervals fitted on 1,000 held-out rows cover 1,000 new rows at the nominal
    levels."""
    formulas = matbench_formulas["matbench_expt_gap"][:2000]
    model = _model()
    ids, mask = _encode(tokenizer, formulas)
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()
    targets = pred + np.random.default_rng(5).standard_t(2, size=len(pred))
    cal, new = slice(0, 1000), slice(1000, 2000)
    result = calibrate_property_model(model, ids[cal], mask[cal], targets[cal])
    m68, m95 = result.interval_multiplier_68, result.interval_multiplier_95
    assert model.config.uncertainty_interval_multipliers == [m68, m95]
    with torch.no_grad():
        sigma = model(input_ids=ids[new], attention_mask=mask[new]).uncertainty[:, 0].numpy()
    err = np.abs(targets[new] - pred[new])
    c1, c2 = coverage(err, sigma)
    assert max(abs(c1 - 0.683), abs(c2 - 0.954)) > 0.05  # the Gaussian sigma misses one of the two levels
    assert abs((err <= m68 * sigma).mean() - 0.683) < 0.05 and abs((err <= m95 * sigma).mean() - 0.954) < 0.03


def test_uncalibrated_folders_load_without_new_weights(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    loaded, info = CrossMatForPropertyPrediction.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.uncertainty_rows == 0


def test_too_few_rows_leave_the_model_uncalibrated(tokenizer):
    model = _model()
    ids, mask = _encode(tokenizer, ["Fe2O3", "NaCl", "LiCoO2"])
    result = calibrate_property_model(model, ids, mask, np.zeros(3))
    assert result.as_dict() == {"rows": 3} and model.config.uncertainty_rows == 0
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=mask).uncertainty is None


def test_threshold_maximises_balanced_accuracy_and_scores_keep_the_ranking():
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.15).astype(int)  # imbalanced: the 0.5 cut misses most positives
    prob = np.clip(0.25 * labels + rng.normal(0.2, 0.1, 400), 0, 1)
    t, bal = fit_threshold(prob, labels)
    at_half = 0.5 * (((prob >= 0.5) & (labels == 1)).sum() / labels.sum()
                     + ((prob < 0.5) & (labels == 0)).sum() / (1 - labels).sum())
    assert t < 0.5 and bal > at_half + 0.2
    scores = decision_scores(prob, t)
    assert ((scores >= 0.5) == (prob >= t)).all()  # a 0.5 cut on the scores is the model's decision rule
    assert (np.argsort(scores, kind="stable") == np.argsort(prob, kind="stable")).all()  # ROC-AUC unchanged
    assert fit_threshold(prob, np.zeros(400))[0] == 0.5


def _classifier(tokenizer, formulas: list[str], classes: int):
    """An untrained tiny classifier of ``classes`` classes (seed 0) and the encoded ``formulas``."""
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(CrossMatConfig(**TINY, num_labels=classes,
                                                         problem_type="single_label_classification")).eval()
    return (model, *_encode(tokenizer, formulas))


def test_binary_classifier_gets_its_threshold(tokenizer, held_out):
    formulas, noise = held_out
    model, ids, mask = _classifier(tokenizer, formulas, 2)
    result = calibrate_property_model(model, ids, mask, (noise > 1.0).astype(float))
    assert model.config.decision_threshold == result.decision_threshold
    assert 0.0 <= result.decision_threshold <= 1.0 and result.balanced_accuracy >= 0.5



def test_prior_exponent_gives_rare_classes_their_recall_for_balanced_accuracy():
    """Three classes, the third rare (5%) and never the most probable class: dividing each probability by the class's
    training frequency (alpha 1) recovers its recall; balanced probabilities keep the most probable class (ties go to
    alpha 0); the weights drive the label everywhere a label is given (label_indices)."""
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=600, p=[0.6, 0.35, 0.05])
    frequencies = np.bincount(labels, minlength=3) / len(labels)
    logits = rng.normal(0, 0.3, (600, 3)) + np.log(frequencies) + 0.8 * np.eye(3)[labels]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert (prob.argmax(1) == 2).sum() == 0  # the most probable class never names the rare class
    alpha, weights, bal = fit_prior_exponent(prob, labels, frequencies)
    assert alpha > 0 and bal > 0.75 and weights is not None and max(weights) == 1.0
    chosen = label_indices(torch.from_numpy(prob), None, weights).numpy()
    assert (chosen == 2).sum() > 10 and (chosen == (prob * np.asarray(weights)).argmax(1)).all()
    assert fit_prior_exponent(np.eye(3)[labels], labels, frequencies)[:2] == (0.0, None)  # already perfect: alpha 0
    assert fit_prior_exponent(prob, np.zeros(600), frequencies)[:2] == (0.0, None)  # one class: nothing to choose
    assert (label_indices(torch.from_numpy(prob[:, :2]), 0.3, weights) == torch.from_numpy(prob[:, 1] >= 0.3)).all()


def test_a_classifier_of_three_classes_gets_its_decision_weights(tokenizer, held_out):
    formulas, noise = held_out
    model, ids, mask = _classifier(tokenizer, formulas, 3)
    targets = np.digitize(noise, [0.5, 1.5]).astype(float)
    assert calibrate_property_model(model, ids, mask, targets).as_dict() == {"rows": len(formulas)}  # no frequencies
    result = calibrate_property_model(model, ids, mask, targets, class_frequencies=np.array([0.2, 0.3, 0.5]))
    assert result.prior_exponent in (0.0, 0.5, 1.0) and 0.0 <= result.balanced_accuracy <= 1.0
    assert (model.config.class_decision_weights is None) == (result.prior_exponent == 0)


def test_coverage_counts_within_one_and_two_sigma():
    assert coverage(np.array([0.5, 1.5, 2.5, -0.5]), np.ones(4)) == (0.5, 0.75)
    got = calibration.coverage_metrics(np.array([0.5, 1.5, 2.5, -0.5]), np.ones(4), [0.4, 3.0])
    assert got == {"coverage_1sigma": 0.5, "coverage_2sigma": 0.75, "coverage_interval68": 0.0,
                   "coverage_interval95": 1.0}
    assert set(calibration.coverage_metrics(np.ones(2), np.ones(2))) == {"coverage_1sigma", "coverage_2sigma"}


def test_rows_whose_neighbours_had_zero_error_keep_a_positive_sigma(tokenizer, held_out):
    """Half the held-out rows have exactly zero residual (e.g. metals predicted 0 eV): the shrinkage towards the
    global residual keeps every sigma positive (a chosen prior of 0 once gave 786 expt_gap test rows sigma 0)."""
    formulas, noise = held_out
    model = _model()
    ids, mask = _encode(tokenizer, formulas)
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()
    residual = np.where(np.arange(len(formulas)) % 2 == 0, 0.0, noise)
    result = calibrate_property_model(model, ids, mask, pred + residual)
    assert result.prior > 0 and min(calibration._PRIOR_GRID) > 0  # no choice can switch the shrinkage off
    with torch.no_grad():
        sigma = model(input_ids=ids, attention_mask=mask).uncertainty[:, 0].numpy()
    assert (sigma > 0).all()


def test_temperature_undoes_an_overconfident_scale():
    """Labels drawn from sigmoid(z), logits 3z: the fitted temperature is about 3 and lowers the log loss; an
    ensemble's members are tempered before their probabilities are averaged; nothing to fit leaves 1."""
    rng = np.random.default_rng(0)
    z = rng.normal(scale=1.5, size=4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    logits = np.stack([np.zeros_like(z), 3 * z], -1)
    t, before, after = fit_temperature(logits, labels)
    assert 2.6 < t < 3.4 and after < before
    members = np.stack([logits + rng.normal(scale=0.3, size=logits.shape) for _ in range(2)])
    t2, _, after2 = fit_temperature(members, labels)
    assert 2.4 < t2 < 3.6 and after2 < fit_temperature(members, labels)[1]
    t_few, before_few, after_few = fit_temperature(logits[:10], labels[:10])  # under TEMPERATURE_MIN_ROWS
    assert t_few == 1.0 and before_few == after_few > 0
    assert fit_temperature(logits, np.ones(4000))[0] == 1.0


def test_classifier_temperature_is_applied_everywhere_and_keeps_the_ranking(tokenizer, data_dir, tmp_path):
    import pandas as pd

    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_glass.csv.gz").iloc[:300]
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(CrossMatConfig(**TINY, num_labels=2,
                                                         problem_type="single_label_classification")).eval()
    ids, mask = _encode(tokenizer, df["formula"].tolist())
    with torch.no_grad():
        raw = model(input_ids=ids, attention_mask=mask).logits
    chosen = calibration.calibrate_temperature(model, ids, mask, df.iloc[:, 2].astype(int).to_numpy())
    t = model.config.probability_temperature
    assert chosen["temperature"] == t != 1.0 and chosen["log_loss_after_temperature"] < chosen[
        "log_loss_before_temperature"]
    with torch.no_grad():
        tempered = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(tempered, raw / t)
    p_raw, p_t = torch.softmax(raw, -1)[:, 1].numpy(), torch.softmax(tempered, -1)[:, 1].numpy()
    assert (np.diff(p_raw[np.argsort(p_t)]) >= -1e-7).all()  # the same order: ROC-AUC unchanged
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    test = ["Fe2O3", "CuZr", "Al10Co31B9"]
    with torch.no_grad():
        expected = model(**tokenizer(test, padding=True, return_tensors="pt")).logits
    import crossmat

    prob = torch.softmax(expected, -1)
    np.testing.assert_allclose(crossmat.predict(str(tmp_path), test).values, prob.numpy(), atol=1e-6)
    from transformers import pipeline

    pipe = pipeline("composition-property-prediction", model=str(tmp_path), trust_remote_code=True)
    assert [list(r["probabilities"].values())[1] for r in pipe(test)] == pytest.approx(prob[:, 1].tolist(), abs=1e-6)
    assert remote_property_outputs(tmp_path, test, "logits") == pytest.approx(expected[:, 0].tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="probability_temperature"):
        CrossMatConfig(probability_temperature=0.0)
