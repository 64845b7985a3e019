"""Interpretability: integrated-gradients completeness, exact Shapley identities, a known synthetic
interaction, approximation switch, bad input, CLI and aggregate outputs (tiny models trained here)."""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import crossmat.modeling  # noqa: F401
from crossmat.interpretability import (
    BudgetError,
    ModelOutputSpec,
    NotAPropertyModelError,
    aggregate_interactions,
    card_section,
    coalition_inputs,
    explain_attributions,
    explain_interactions,
    formula_players,
    load_property_model,
    minimum_budget,
)
from crossmat.interpretability.cli import main as cli_main
from crossmat.modeling import CrossMatConfig, CrossMatForMaskedLM, CrossMatForPropertyPrediction, decode_composition
from crossmat.tokenization import CrossMatTokenizerFast, FormulaError
from crossmat.tokenization.vocabulary import CLS_ID, ELEMENT_START, MASK_ID, NUM_ELEMENTS, SEP_ID

DATA = Path(os.environ.get("CROSSMAT_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
POOL = ["Li", "Na", "K", "Mg", "Fe", "O", "S", "Cl"]


def _tiny_config(**kw) -> CrossMatConfig:
    return CrossMatConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
        fraction_frequencies=4, **kw,
    )


def _train(model, tok, formulas, targets, steps, mask_prob=0.0, lr=3e-3, seed=0):
    """Plain Adam on standardised targets; optional random [MASK] augmentation (label from a callback)."""
    torch.manual_seed(seed)
    enc = tok(list(formulas), padding=True, return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]
    y = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        b = torch.randint(0, len(ids), (64,))
        bi, ba, by = ids[b].clone(), att[b], y[b].clone()
        if mask_prob:
            is_el = (bi >= ELEMENT_START) & (bi < ELEMENT_START + NUM_ELEMENTS)
            drop = is_el & (torch.rand(bi.shape) < mask_prob)
            bi = torch.where(drop, torch.full_like(bi, MASK_ID), bi)
            by = _cooccur_label(bi)
        loss = model(input_ids=bi, attention_mask=ba, labels=by.unsqueeze(-1)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


FE_ID, O_ID = ELEMENT_START + 25, ELEMENT_START + 7


def _cooccur_label(ids: torch.Tensor) -> torch.Tensor:
    return ((ids == FE_ID).any(1) & (ids == O_ID).any(1)).float()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is ~50x faster than two when the 2 CI cores are shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tok():
    return CrossMatTokenizerFast()


@pytest.fixture(scope="module")
def synthetic_model(tok):
    """Predicts 1 exactly when Fe and O (visible, not [MASK]ed) co-occur, else 0."""
    rng = np.random.default_rng(0)
    formulas = []
    for _ in range(1500):
        k = rng.integers(1, 6)
        els = rng.choice(POOL, size=k, replace=False)
        formulas.append("".join(f"{e}{rng.integers(1, 5)}" for e in els))
    labels = _cooccur_label(tok(formulas, padding=True, return_tensors="pt")["input_ids"]).numpy()
    model = CrossMatForPropertyPrediction(_tiny_config(num_labels=1, problem_type="regression", regression_loss="mse"))
    return _train(model, tok, formulas, labels, steps=400, mask_prob=0.3)


@pytest.fixture(scope="module")
def gap_model(tok):
    """Tiny regression model trained briefly on 600 real MatBench expt_gap rows (eV)."""
    path = DATA / "matbench_v0.1" / "matbench_expt_gap.csv.gz"
    if not path.is_file():
        pytest.fail(f"MatBench data not found at {path} (set CROSSMAT_DATA_DIR)")
    df = pd.read_csv(path).head(600)
    y = df["gap expt"].to_numpy(np.float32)
    cfg = _tiny_config(num_labels=1, problem_type="regression", target_mean=[float(y.mean())],
                       target_std=[float(y.std())], target_names=["gap expt"], target_units=["eV"])
    return _train(CrossMatForPropertyPrediction(cfg), tok, df["formula"].tolist(), y, steps=150)


def test_synthetic_model_learned_the_rule(synthetic_model, tok):
    enc = tok(["LiFeO2", "LiFeS2", "MgO", "NaFe2O3Cl"], padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = synthetic_model(**enc).logits[:, 0].numpy()
    assert pred[0] > 0.8 and pred[3] > 0.8 and pred[1] < 0.2 and pred[2] < 0.2, pred


@pytest.mark.parametrize("strategy", ["mask", "remove"])
@pytest.mark.parametrize("index", ["k-SII", "STII", "FSII"])
def test_known_cooccurrence_is_the_top_pair(synthetic_model, tok, strategy, index):
    res = explain_interactions(synthetic_model, tok, ["LiFeOS", "NaMgFe2O3Cl"], index=index, strategy=strategy)
    for r in res:
        top = r.of_order(2)[0]
        assert sorted(top["elements"]) == ["Fe", "O"], (r.formula, r.of_order(2)[:3])
        assert top["value"] > 0.5
        others = [abs(p["value"]) for p in r.of_order(2)[1:]]
        assert max(others) < 0.5 * top["value"]


def test_aggregate_finds_synthetic_pair_and_resumes(synthetic_model, tok, tmp_path):
    formulas = ["LiFeOS", "NaMgFe2O3", "KFeO2Cl", "Li2S", "MgCl2", "Fe(OH)3", "not a formula", "FeS2", "NaO"]
    summary = aggregate_interactions(synthetic_model, tok, formulas, tmp_path, task="synthetic", min_count=3,
                                     progress=False)
    assert summary["n_rejected"] == 1 and summary["n_explained"] == 8
    assert summary["top_pairs"][0]["pair"] == "Fe-O"
    assert summary["top_pairs_by_total"][0]["pair"] == "Fe-O"
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    fe_o = pairs[pairs.pair == "Fe-O"].iloc[0]
    assert fe_o["count"] == 4 and fe_o["sum_abs"] == pytest.approx(4 * fe_o["mean_abs"])
    rejected = pd.read_csv(tmp_path / "rejected.csv")
    assert rejected.loc[0, "row"] == 6 and "not a formula" in rejected.loc[0, "formula"]
    assert (tmp_path / "top_pairs.png").stat().st_size > 1000
    lines = (tmp_path / "interactions.jsonl").read_text().splitlines()
    assert len(lines) == 8
    # Resume: finished formulas are not recomputed, new ones are appended.
    summary2 = aggregate_interactions(synthetic_model, tok, [*formulas, "KFeO"], tmp_path, progress=False)
    assert summary2["n_explained"] == 9
    assert len((tmp_path / "interactions.jsonl").read_text().splitlines()) == 9


@pytest.mark.parametrize("baseline", ["mask", "pad"])
def test_integrated_gradients_completeness(gap_model, tok, baseline):
    formulas = ["Fe2O3", "LiCoO2", "(NH4)2SO4", "Cu2ZnSnS4", "GaAs"]
    res = explain_attributions(gap_model, tok, formulas, baseline=baseline, n_steps=64)
    enc = tok(formulas, padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = gap_model(**enc).logits[:, 0].numpy()
    for r, p in zip(res, pred, strict=True):
        assert r.unit == "eV" and len(r.attributions) == len(r.elements)
        assert r.prediction == pytest.approx(float(p), abs=1e-4)
        diff = r.prediction - r.baseline_prediction
        assert abs(diff) > 1e-3  # a trained model: identities matter
        assert sum(r.attributions) == pytest.approx(diff, abs=1e-2 * max(1.0, abs(diff)))


def test_integrated_gradients_refines_steps_when_gap_too_large(gap_model, tok):
    with pytest.warns(UserWarning, match="even with 32 steps"):
        (r,) = explain_attributions(gap_model, tok, ["Cu2ZnSnS4"], n_steps=8, max_steps=32, tolerance=1e-15)
    assert r.n_steps == 32
    (r,) = explain_attributions(gap_model, tok, ["Cu2ZnSnS4"], n_steps=8)
    assert r.n_steps in (8, 32, 128, 512, 1024)
    assert abs(r.delta) <= 1e-2 * max(1.0, abs(r.prediction - r.baseline_prediction))


def test_mask_baseline_prediction_is_the_masked_formula(gap_model, tok):
    (r,) = explain_attributions(gap_model, tok, ["LiCoO2"])
    ids = tok("LiCoO2", return_tensors="pt")["input_ids"]
    is_el = (ids >= ELEMENT_START) & (ids < ELEMENT_START + NUM_ELEMENTS)
    with torch.no_grad():
        masked = gap_model(input_ids=torch.where(is_el, MASK_ID, ids)).logits[0, 0].item()
    assert r.baseline_prediction == pytest.approx(masked, abs=1e-5)


@pytest.mark.parametrize("strategy", ["mask", "remove"])
def test_exact_ksii_order1_equals_shapley_values_and_efficiency(gap_model, tok, strategy):
    formulas = ["LiCoO2", "Cu2ZnSnS4", "BaTiO3", "Fe"]
    sv = explain_interactions(gap_model, tok, formulas, index="SV", strategy=strategy)
    k1 = explain_interactions(gap_model, tok, formulas, index="k-SII", order=1, strategy=strategy)
    k2 = explain_interactions(gap_model, tok, formulas, index="k-SII", order=2, strategy=strategy)
    for a, b, c in zip(sv, k1, k2, strict=True):
        assert a.method == "exact" and a.budget == 2 ** len(a.elements)
        for el in a.elements:
            assert b.value(el) == pytest.approx(a.value(el), abs=1e-6)
        for r in (a, c):  # efficiency: all values plus the empty-coalition value give the prediction
            total = r.baseline_value + sum(x["value"] for x in r.interactions)
            assert total == pytest.approx(r.prediction, abs=1e-5)
    assert sum(abs(sv[0].value(el)) for el in sv[0].elements) > 1e-3


def test_coalition_inputs_mask_keeps_fractions_remove_renormalises(tok):
    p = formula_players("LiCoO2", tok)
    assert p.elements == ["Li", "Co", "O"]
    coal = np.array([[True, False, True], [True, True, True], [False, False, False]])
    ids, att = coalition_inputs(p, coal, "remove")
    expect = tok(["LiO2", "LiCoO2"], padding=True, return_tensors="pt")["input_ids"]
    assert ids[0, : int(att[0].sum())].tolist() == expect[0][expect[0] > 0].tolist()
    assert ids[1].tolist() == expect[1].tolist()
    assert ids[2, : int(att[2].sum())].tolist() == [CLS_ID, MASK_ID, SEP_ID]  # empty: one unknown element
    cfg = _tiny_config()
    ids_m, _ = coalition_inputs(p, coal, "mask")
    full = decode_composition(ids_m[1:2], cfg)[1]
    masked = decode_composition(ids_m[0:1], cfg)[1]
    assert torch.allclose(full, masked)
    assert (ids_m[0] == MASK_ID).sum() == 1


def test_coalitions_are_evaluated_in_batches(gap_model, tok):
    calls = []
    handle = gap_model.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        explain_interactions(gap_model, tok, ["LiCoO2", "Cu2ZnSnS4", "BaTiO3", "NaCl"], batch_size=512)
    finally:
        handle.remove()
    assert len(calls) == 1  # 8 + 16 + 8 + 4 coalitions in one forward


def test_long_formula_switches_to_approximation(gap_model, tok):
    steel = pd.read_csv(DATA / "matbench_v0.1" / "matbench_steels.csv.gz")["formula"].iloc[1]
    n = len(formula_players(steel, tok).elements)
    assert n > 12
    with pytest.warns(UserWarning, match="approximated with KernelSHAPIQ"):
        (r,) = explain_interactions(gap_model, tok, steel, budget=400)
    assert r.method == "approximate" and r.budget == 400 and "too many" in r.note
    assert r.baseline_value + sum(x["value"] for x in r.interactions) == pytest.approx(r.prediction, abs=1e-3)
    with pytest.raises(BudgetError, match="too small for order 2"):
        explain_interactions(gap_model, tok, steel, budget=minimum_budget(n, 2) - 1)
    with pytest.warns(UserWarning, match="below 4x the minimum"):
        (r2,) = explain_interactions(gap_model, tok, steel, index="STII", budget=300, approximator="svarmiq",
                                     method="approximate")
    assert r2.approximator == "SVARMIQ"
    with pytest.raises(ValueError, match="cannot estimate"):
        explain_interactions(gap_model, tok, steel, index="STII", approximator="kernelshapiq")


def test_bad_inputs_raise_clear_errors(gap_model, tok, tmp_path):
    with pytest.raises(FormulaError, match="row 1.*unknown element 'Xx'"):
        explain_interactions(gap_model, tok, ["NaCl", "XxO2"])
    with pytest.raises(FormulaError, match="row 0"):
        explain_attributions(gap_model, tok, ["Fe2O-3", "NaCl"])
    mlm = CrossMatForMaskedLM(_tiny_config())
    with pytest.raises(NotAPropertyModelError, match="no property head"):
        explain_interactions(mlm, tok, "NaCl")
    mlm.save_pretrained(tmp_path / "mlm")
    with pytest.raises(NotAPropertyModelError, match="not a CrossMatForPropertyPrediction"):
        load_property_model(tmp_path / "mlm")
    assert cli_main(["explain", "--model", str(tmp_path / "mlm"), "--out", str(tmp_path / "o"), "--formula", "NaCl"]) == 2
    with pytest.raises(ValueError, match="index must be one of"):
        explain_interactions(gap_model, tok, "NaCl", index="banzhaf")
    with pytest.raises(ValueError, match="needs a classifier"):
        explain_interactions(gap_model, tok, "NaCl", output=ModelOutputSpec("probability"))



def test_the_explained_class_or_target_can_be_named(gap_model):
    """`--target metal` / `--target 2`: a class (or regression target) by name or index; an unknown name is refused with
    the model's names. A classifier of three classes explains its first class unless told."""
    classes = CrossMatForPropertyPrediction(_tiny_config(num_labels=3, problem_type="single_label_classification",
                                                         id2label={0: "insulator", 1: "metal", 2: "semiconductor"}))
    assert ModelOutputSpec().resolve(classes)[1:3] == (0, "P(insulator)")
    assert ModelOutputSpec(target="semiconductor").resolve(classes)[1:3] == (2, "P(semiconductor)")
    assert ModelOutputSpec("logit", "1").resolve(classes)[1:3] == (1, "logit(metal)")
    with pytest.raises(ValueError, match="'superconductor' is not one of the model's classes: 'insulator', 'metal'"):
        ModelOutputSpec(target="superconductor").resolve(classes)
    assert ModelOutputSpec(target="gap expt").resolve(gap_model)[1:4] == (0, "gap expt", "eV")



def test_what_integrated_gradients_cannot_move_is_said(gap_model, tok):
    """A blended forest (and the head's element statistics) read the real formula, so integrated gradients hold them at
    the formula's value: the explanation says so, with the forest's share, instead of a silent all-zero column."""
    from crossmat.interpretability.attributions import held_fixed_parts
    from crossmat.interpretability.explain import format_table

    assert held_fixed_parts(gap_model) == ""
    (attr,) = explain_attributions(gap_model, tok, ["LiCoO2"], n_steps=8)
    (inter,) = explain_interactions(gap_model, tok, ["LiCoO2"])
    assert "hold" not in format_table(attr, inter) and "[MASK]ed: " in format_table(attr, inter)
    blended = copy.deepcopy(gap_model)
    blended.forest, blended.config.forest_weight = torch.nn.Identity(), 0.25  # what held_fixed_parts looks at
    assert held_fixed_parts(blended) == "the blended random forest (share 0.75 of the output)"
    attr.held_fixed = held_fixed_parts(blended)
    text = format_table(attr, inter)
    assert "[MASK]ed in the network: " in text and "hold the blended random forest (share 0.75 of the output)" in text


def test_cli_and_model_card_section(gap_model, tok, tmp_path, capsys):
    folder = tmp_path / "model"
    gap_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "explain"
    rc = cli_main(["explain", "--model", str(folder), "--out", str(out), "--formula", "LiCoO2",
                   "--formula", "Cu2ZnSnS4", "--format", "png,svg"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| Co |" in printed and "wrote 2 explanation(s)" in printed
    data = json.loads((out / "explanations.json").read_text())
    assert data[0]["interactions"]["elements"] == ["Li", "Co", "O"]
    assert {"formula", "element", "attribution"} <= set(pd.read_csv(out / "attributions.csv").columns)
    assert set(pd.read_csv(out / "interactions.csv")["order"]) == {1, 2}
    assert (out / "000_LiCoO2.png").stat().st_size > 5000 and (out / "001_Cu2ZnSnS4.svg").is_file()
    csv = tmp_path / "rows.csv"
    pd.DataFrame({"id": ["a", "b", "c", "d"], "formula": ["NaCl", "Q2", "LiCoO2", "KCl"],
                  "test_fold": [0, 0, 0, 1]}).to_csv(csv, index=False)
    agg = tmp_path / "agg"
    rc = cli_main(["aggregate", "--model", str(folder), "--out", str(agg), "--input", str(csv), "--id-column", "id",
                   "--test-fold", "0", "--min-count", "1"])
    assert rc == 0
    summary = json.loads((agg / "summary.json").read_text())
    assert summary["n_formulas"] == 3 and summary["n_rejected"] == 1 and summary["unit"] == "eV"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md = card_section(gap_model, tok, "LiCoO2")
    assert md.startswith("## Interpretability") and "| O |" in md and "Li x Co" in md.replace("Co x Li", "Li x Co")
