"""The composition-property-prediction pipeline, with and without the crossmat package importable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from crossmat.inference import TASK, FormulaPredictor, load_pipeline
from crossmat.tokenization import CrossMatTokenizerFast

from .test_inference_support import last_json, make_property_model, run_without_package

FORMULAS = ["Fe2O3", "NaCl", "(NH4)2SO4", "Li0.5Co0.5O2", "SrTiO3", "Cs2AgBiBr6"]
# issue 13: strings the Hub-widget path without the package used to answer with a number
ISSUE13 = ["((Fe)", "Fe2O3)", "Fe2.5.3O", "Fe()O", "Fe..5O", "H" * 10_000, "Fe1e3O", "Fe2O3 LiCoO2", "Fe2O3\nLiCoO2",
           "Fe\x00O", "Fe2O3."]
ISSUE13_REASONS = ["unclosed", "unbalanced", "malformed amount", "empty brackets", "does not follow", "characters long",
                   "scientific notation", "whitespace", "line break", "control character", "malformed amount"]


@pytest.fixture(scope="module")
def reg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_property_model(tmp_path_factory.mktemp("models") / "tiny-gap")


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_property_model(tmp_path_factory.mktemp("models") / "tiny-metal", classification=True, seed=1)


def _reference(model_dir: Path, formulas: list[str]) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = CrossMatTokenizerFast.from_pretrained(model_dir)
    with torch.no_grad():
        return model(**tok(formulas, padding=True, return_tensors="pt")).logits


def test_saved_folder_carries_the_pipeline(reg_dir: Path) -> None:
    cfg = json.loads((reg_dir / "config.json").read_text())
    assert cfg["custom_pipelines"][TASK]["impl"] == "pipeline_crossmat.CompositionPropertyPipeline"
    assert (reg_dir / "pipeline_crossmat.py").is_file() and (reg_dir / "modeling_crossmat.py").is_file()
    assert cfg["problem_type"] == "regression" and cfg["id2label"] == {"0": "band_gap (eV)"}


def test_regression_pipeline_with_package(reg_dir: Path) -> None:
    pipe = pipeline(TASK, model=str(reg_dir), trust_remote_code=True)
    ref = _reference(reg_dir, FORMULAS)[:, 0].tolist()
    one = pipe("Fe2O3")
    assert one["property"] == "band_gap" and one["unit"] == "eV" and one["formula"] == "Fe2O3"
    assert one["value"] == pytest.approx(ref[0], abs=1e-5)
    many = pipe(FORMULAS, batch_size=4)
    assert [r["formula"] for r in many] == FORMULAS
    assert [r["value"] for r in many] == pytest.approx(ref, abs=1e-5)
    assert len({round(v, 4) for v in ref}) == len(ref)  # the tiny model really distinguishes formulas
    # the package tokenizer canonicalises: a hydrate and a reordered formula work
    assert pipe("CuSO4·5H2O")["value"] == pytest.approx(pipe("CuS(H2O)5O4")["value"], abs=1e-5)
    assert load_pipeline(reg_dir)("NaCl")["value"] == pytest.approx(ref[1], abs=1e-5)


def test_bad_input_errors(reg_dir: Path) -> None:
    pipe = load_pipeline(reg_dir)
    with pytest.raises(ValueError, match=r"row 1: 'Xx2O3'.*unknown element 'Xx'"):
        pipe(["Fe2O3", "Xx2O3"])
    with pytest.raises(ValueError, match="empty input"):
        pipe([])
    with pytest.raises(ValueError, match="empty string"):
        pipe("   ")
    with pytest.raises(ValueError, match="10000 characters long"):
        pipe("H" * 10_000)
    with pytest.raises(TypeError, match="expected a formula string"):
        pipe(42)
    out = pipe(["Fe2O3", "Xx2O3", "", "NaCl", "Fe(O"], on_error="return")
    assert "value" in out[0] and "value" in out[3]
    assert out[1] == {"formula": "Xx2O3", "error": "unknown element 'Xx'"}
    assert out[2]["error"] == "empty string" and "unclosed" in out[4]["error"]


def test_classification_pipeline(cls_dir: Path) -> None:
    pipe = load_pipeline(cls_dir)
    probs = torch.softmax(_reference(cls_dir, FORMULAS[:3]), -1)
    out = pipe(FORMULAS[:3])
    for row, p in zip(out, probs, strict=True):
        best = int(p.argmax())
        assert row["label"] == ["not_metal", "metal"][best]
        assert row["probability"] == pytest.approx(float(p[best]), abs=1e-5)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_text_classification_pipeline_gives_regression_values(reg_dir: Path) -> None:
    clf = pipeline("text-classification", model=str(reg_dir), trust_remote_code=True)
    ref = _reference(reg_dir, ["Fe2O3"])[0, 0].item()
    (out,) = clf(["Fe2O3"])
    assert out["label"] == "band_gap (eV)" and out["score"] == pytest.approx(ref, abs=1e-5)


def test_predictor_matches_model_forward(reg_dir: Path, cls_dir: Path, matbench_formulas) -> None:
    formulas = matbench_formulas["matbench_expt_gap"][:300] + matbench_formulas["matbench_steels"][:100]
    for d in (reg_dir, cls_dir):
        pred = FormulaPredictor(d, batch_size=64)
        got = pred.predict(formulas)
        assert got.n_invalid == 0 and got.uncertainty is None
        ref = pred._postprocess(_reference(d, formulas)).double().numpy()
        assert abs(got.values - ref).max() < 1e-5


def test_pipeline_without_package(reg_dir: Path, cls_dir: Path, tmp_path: Path) -> None:
    """A fresh interpreter with the project packages blocked: only transformers + the saved remote code."""
    code = f"""
import json
from transformers import pipeline
ISSUE13 = {ISSUE13!r}
pipe = pipeline({TASK!r}, model={str(reg_dir)!r}, trust_remote_code=True)
clf = pipeline("text-classification", model={str(reg_dir)!r}, trust_remote_code=True)
cls = pipeline({TASK!r}, model={str(cls_dir)!r}, trust_remote_code=True)
res = {{
    "tokenizer": type(pipe.tokenizer).__name__,
    "many": pipe({FORMULAS!r}, batch_size=4),
    "bad": pipe(["Xx2", "", "Fe(O", "fe2o3", "Fe0O", "H" * 10000, "CuSO4·5H2O", "NaCl"], on_error="return"),
    "hydrate": [pipe("CuSO4·5H2O")["value"], pipe("CuS(H2O)5O4")["value"]],
    "issue13": pipe(ISSUE13, on_error="return"),
    "text": clf("Fe2O3"),
    "text_bad": [],
    "cls": cls("NaCl"),
}}
for bad in ISSUE13:  # the Hub-widget path validates with the same grammar
    try:
        clf(bad)
        res["text_bad"].append(None)
    except ValueError as err:
        res["text_bad"].append(str(err))
try:
    pipe(["NaCl", "Q2"])
except ValueError as err:
    res["raised"] = str(err)
print(json.dumps(res))
"""
    proc = run_without_package(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = last_json(proc.stdout)
    assert res["tokenizer"] == "CrossMatBaseTokenizerFast"  # the folder's remote-code tokenizer
    ref = _reference(reg_dir, FORMULAS)[:, 0].tolist()
    assert [r["value"] for r in res["many"]] == pytest.approx(ref, abs=1e-5)
    assert all(r["unit"] == "eV" and r["property"] == "band_gap" for r in res["many"])
    reasons = [r.get("error") for r in res["bad"]]
    assert reasons[0] == "unknown element 'Xx'" and reasons[1] == "empty string"
    assert reasons[2] == "unclosed '('" and "start" in reasons[3] and "not positive" in reasons[4]
    assert "10000 characters" in reasons[5] and reasons[6] is None and reasons[7] is None
    assert res["hydrate"][0] == pytest.approx(res["hydrate"][1], abs=1e-5)
    for row, expected in zip(res["issue13"], ISSUE13_REASONS, strict=True):
        assert expected in row.get("error", ""), row
    for err, expected in zip(res["text_bad"], ISSUE13_REASONS, strict=True):
        assert err is not None and expected in err
    assert res["text"][0]["score"] == pytest.approx(ref[0], abs=1e-5)
    assert res["cls"]["label"] in ("metal", "not_metal")
    assert "row 1" in res["raised"] and "unknown element 'Q'" in res["raised"]


def test_reduced_precision_predictors_stay_close(tmp_path: Path, matbench_formulas) -> None:
    # weights at a trained model's scale (the 0.3-std test models are chaotic: any rounding flips them)
    reg_dir = make_property_model(tmp_path / "smooth", scale=0.1)
    formulas = matbench_formulas["matbench_expt_gap"][:200]
    ref = FormulaPredictor(reg_dir).predict(formulas).values[:, 0]
    target_std = 1.6  # make_property_model's config.target_std: errors in units of the target's spread
    for precision, mean_tol, max_tol in (("bfloat16", 0.03, 0.1), ("int8", 0.01, 0.05)):
        pred = FormulaPredictor(reg_dir, precision=precision)
        assert pred.precision == precision
        err = abs(pred.predict(formulas).values[:, 0] - ref) / target_std
        assert err.mean() < mean_tol and err.max() < max_tol, (precision, err.mean(), err.max())
        assert err.max() > 0  # really ran in reduced precision
    with pytest.raises(ValueError, match="precision must be one of"):
        FormulaPredictor(reg_dir, precision="fp8")
