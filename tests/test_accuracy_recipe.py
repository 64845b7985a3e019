"""The accuracy-recipe options: compact element-slot fast path (exact), frozen element features,
fraction encodings, fraction jitter, ensembles with uncertainty, output clipping, SWA, auto batch size,
training on every row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from crossmat.modeling import CrossMatConfig, CrossMatForMaskedLM, CrossMatForPropertyPrediction
from crossmat.modeling.element_features import element_feature_table, install_element_features
from crossmat.tokenization import CrossMatTokenizerFast
from crossmat.tokenization.vocabulary import ELEMENT_START, ELEMENTS, MASK_ID, token_layout
from crossmat.training import apply_overrides, run_recipe, validate_recipe
from crossmat.training.loop import auto_batch_size

FORMULAS = ["Fe2O3", "Li0.5Co0.5O2", "(NH4)2SO4", "Si", "Ba2Ca(Cu(OH)2)3", "CuSO4(H2O)5", "Al0.25Ga0.75N", "O3Fe2"]


def _config(**kw) -> CrossMatConfig:
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1,
                problem_type="regression", pooling="mean", hidden_dropout_prob=0.0)
    return CrossMatConfig(**token_layout(), **{**base, **kw})


def _encode(formulas=FORMULAS):
    return CrossMatTokenizerFast()(formulas, padding=True, return_tensors="pt")


def _full_length_reference(model, ids, att):
    """The pre-compaction computation, as benchmarked in ``benchmarks/modeling/fast_path.py`` (one copy)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "modeling" / "fast_path.py"
    spec = importlib.util.spec_from_file_location("fast_path_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.full_length(model, ids, att)


@pytest.mark.parametrize("pooling", ["mean", "cls", "fraction_weighted"])
def test_compact_fast_path_is_exact(pooling):
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(_config(pooling=pooling, target_mean=[1.5], target_std=[2.0])).eval()
    enc = _encode()
    with torch.no_grad():
        fast = model(**enc).logits
        ref = _full_length_reference(model, enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(fast, ref, atol=1e-5), (fast - ref).abs().max()
    # hidden states come back at token positions: element slots filled, digits/groups/padding zero
    out = model.crossmat(**enc)
    nonzero = out.last_hidden_state.abs().sum(-1) > 0
    keys = out.slot_mask | (enc["input_ids"] == model.config.cls_token_id)
    assert torch.equal(nonzero, keys)


def test_compact_path_serves_mlm_and_inputs_embeds():
    torch.manual_seed(0)
    cfg = _config(hidden_size=32)
    mlm = CrossMatForMaskedLM(cfg).eval()
    enc = _encode(["Fe2O3", "LiCoO2"])
    ids = enc["input_ids"].clone()
    ids[0, 1] = MASK_ID  # mask Fe
    labels = torch.full_like(ids, -100)
    labels[0, 1] = enc["input_ids"][0, 1]
    out = mlm(input_ids=ids, attention_mask=enc["attention_mask"], labels=labels)
    assert out.logits.shape == (*ids.shape, cfg.vocab_size) and torch.isfinite(out.loss)
    prop = CrossMatForPropertyPrediction(_config()).eval()
    embeds = prop.crossmat.embeddings.embed_tokens(enc["input_ids"])
    with torch.no_grad():
        a = prop(**enc).logits
        b = prop(**enc, inputs_embeds=embeds).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_element_features_frozen_saved_and_reloaded(tmp_path):
    table, covered = element_feature_table("magpie")
    assert table.shape[0] == 136 and 80 < int(covered.sum()) < 118  # magpie lacks the heaviest elements
    z = covered.nonzero().flatten()
    assert torch.allclose(table[z].mean(0), torch.zeros(table.shape[1]), atol=1e-4)  # standardised
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(_config(element_features="magpie", element_feature_dim=table.shape[1]))
    assert install_element_features(model, "magpie") == int(covered.sum())
    names = {n for n, _ in model.named_parameters()}
    assert not any("element_feature_table" in n for n in names)  # a buffer: never trained
    emb = model.crossmat.embeddings
    fe = ELEMENT_START + ELEMENTS.index("Fe")
    og = ELEMENT_START + ELEMENTS.index("Og")
    vec = emb.embed_tokens(torch.tensor([[fe, og]]))
    assert torch.allclose(vec[0, 0], emb.element_projection(table[fe]))
    assert torch.equal(vec[0, 1], emb.word_embeddings.weight[og])  # not covered: trainable embedding
    model.save_pretrained(tmp_path)
    assert "crossmat.embeddings.element_feature_table" in load_file(tmp_path / "model.safetensors")
    again = CrossMatForPropertyPrediction.from_pretrained(tmp_path).eval()
    enc = _encode()
    with torch.no_grad():
        assert torch.allclose(again(**enc).logits, model.eval()(**enc).logits, atol=1e-6)


def test_sinusoid_table_fraction_encoding_distinguishes_fractions_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(_config(fraction_encoding="sinusoid_table")).eval()
    enc_mod = model.crossmat.embeddings.fraction_encoding
    codes = enc_mod(torch.tensor([0.5, 0.49, 0.01]))
    assert codes.shape == (3, 32) and not torch.allclose(codes[0], codes[1]) and not torch.allclose(codes[0], codes[2])
    enc = _encode(["Fe2O3", "O3Fe2", "Fe4O6"])
    with torch.no_grad():
        out = model(**enc).logits
    assert torch.allclose(out, out[0].expand_as(out), atol=1e-6)  # a set, not a sequence
    model.save_pretrained(tmp_path)
    again = CrossMatForPropertyPrediction.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(**enc).logits, out, atol=1e-6)
    with pytest.raises(ValueError, match="fraction_encoding"):
        _config(fraction_encoding="learned")


def test_fraction_jitter_only_in_training():
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(_config(fraction_jitter=0.05))
    enc = _encode()
    model.train()
    a, b = model.crossmat(**enc), model.crossmat(**enc)
    assert not torch.allclose(a.fractions, b.fractions)
    assert torch.allclose(a.fractions.sum(1), torch.ones(len(FORMULAS)), atol=1e-5)
    model.eval()
    c, d = model.crossmat(**enc), model.crossmat(**enc)
    assert torch.equal(c.fractions, d.fractions)


def test_ensemble_mean_uncertainty_and_loss(tmp_path):
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(_config(ensemble_size=3, target_mean=[1.0], target_std=[2.0])).eval()
    enc = _encode()
    labels = torch.linspace(0, 3, len(FORMULAS))[:, None]
    with torch.no_grad():
        out = model(**enc, labels=labels)
        members = [h(e(**enc).pooler_output) * 2.0 + 1.0 for e, h in model.members()]
    stack = torch.stack(members)
    assert torch.allclose(out.logits, stack.mean(0), atol=1e-6)
    assert torch.allclose(out.uncertainty, stack.std(0, unbiased=False), atol=1e-6)
    assert float(out.uncertainty.min()) > 0  # members are initialised independently
    single = sum(float(torch.nn.functional.l1_loss((m - 1.0) / 2.0, (labels - 1.0) / 2.0)) for m in members)
    assert abs(float(out.loss) - single) < 1e-5  # each member's own loss, summed
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(**enc, inputs_embeds=model.crossmat.embeddings.embed_tokens(enc["input_ids"]))
    model.save_pretrained(tmp_path)
    again = CrossMatForPropertyPrediction.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(**enc).uncertainty, out.uncertainty, atol=1e-6)
    clf = CrossMatForPropertyPrediction(_config(ensemble_size=2, num_labels=2, problem_type="single_label_classification")).eval()
    with torch.no_grad():
        o = clf(**enc, labels=torch.tensor([0, 1] * 4))
        probs = torch.stack([torch.softmax(h(e(**enc).pooler_output), -1) for e, h in clf.members()])
    assert torch.allclose(torch.softmax(o.logits, -1), probs.mean(0), atol=1e-5)
    assert o.uncertainty.shape == (len(FORMULAS), 2)
    assert CrossMatForPropertyPrediction(_config()).eval()(**enc).uncertainty is None


def test_target_min_clips_outputs_not_the_loss():
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(_config(target_mean=[-5.0], target_std=[1.0], target_min=[0.0])).eval()
    enc = _encode()
    labels = torch.full((len(FORMULAS), 1), -5.0)
    with torch.no_grad():
        out = model(**enc, labels=labels)
    assert float(out.logits.min()) >= 0.0
    assert float(out.loss) < 1.0  # the loss sees the unclipped (near -5) values


def test_auto_batch_size_rule():
    assert [auto_batch_size(n) for n in (20, 250, 600, 1000, 4140, 20000)] == [16, 16, 32, 32, 128, 128]
    assert [auto_batch_size(n) for n in (1, 5, 10, 15, 16)] == [1, 4, 8, 8, 16]  # tiny splits still train


@pytest.fixture(scope="module")
def gap_csv(expt_gap_csv) -> Path:
    return expt_gap_csv(256)


def _recipe(gap_csv: Path, **extra) -> dict:
    recipe = {
        "stage": "finetune",
        "model": {"config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                             "element_features": "mat2vec", "fraction_encoding": "sinusoid_table",
                             "fraction_jitter": 0.02, "ensemble_size": 2}},
        "data": {"train": str(gap_csv), "target_column": "gap", "validation_fraction": 0.0, "test_fraction": 0.2,
                 "clip_predictions": "auto"},
        "train": {"epochs": 4, "batch_size": "auto", "swa_epochs": 2, "progress_bar": False, "trackers": "none"},
    }
    for key, value in extra.items():
        recipe = apply_overrides(recipe, [f"{key}={json.dumps(value)}"])
    return recipe


def test_recipe_trains_with_every_option_and_swa_averages(gap_csv, tmp_path):
    out = run_recipe(_recipe(gap_csv), tmp_path / "run")
    info = json.loads((out / "training_info.json").read_text())
    assert info["training"]["swa_epochs_averaged"] == 2
    assert info["data"]["rows"].get("validation") is None  # trained on every non-test row
    assert info["model"]["elements_with_features"] == 118
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["target_min"] == [0.0] and cfg["ensemble_size"] == 2 and cfg["element_feature_dim"] == 200
    model = CrossMatForPropertyPrediction.from_pretrained(out).eval()
    enc = _encode()
    pred = model(**enc)
    assert pred.uncertainty is not None and float(pred.logits.min()) >= 0
    with pytest.raises(Exception, match="swa_epochs"):
        validate_recipe(_recipe(gap_csv, **{"train.swa_epochs": -1}))


def test_swa_weights_are_the_epoch_average(gap_csv, tmp_path):
    """Run 4 epochs with a checkpoint every epoch and no SWA, then the same run with SWA over the last 2
    epochs: the SWA model equals the mean of the epoch-3 and epoch-4 weights of the first run."""
    steps = 256 * 8 // 10 // 16  # rows after the 20% test split, batch 16 by the auto rule
    plain = _recipe(gap_csv, **{"train.swa_epochs": 0, "train.checkpoint_every": steps, "train.keep_checkpoints": 4,
                                "model.config.fraction_jitter": 0.0, "model.config.ensemble_size": 1,
                                "model.config.hidden_dropout_prob": 0.0})
    a = run_recipe(plain, tmp_path / "plain")
    ckpts = sorted((a / "checkpoints").glob("step_*"))
    w3, w4 = (load_file(c / "model.safetensors") for c in ckpts[-2:])
    swa = run_recipe(apply_overrides(plain, ["train.swa_epochs=2"]), tmp_path / "swa")
    got = load_file(swa / "model.safetensors")
    key = "crossmat.layers.0.fc1.weight"
    assert torch.allclose(got[key], (w3[key] + w4[key]) / 2, atol=1e-6)
    assert not torch.allclose(got[key], w4[key])


def test_evaluation_trains_on_every_row_when_the_recipe_says_so(data_dir):
    from crossmat.evaluation.baselines import FoldData
    from crossmat.evaluation.crossmat_predictor import CrossMatPredictor
    from crossmat.evaluation.tasks import matbench_task

    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_expt_gap.csv.gz").iloc[:40]
    df = df.rename(columns={df.columns[2]: "target"})
    fold = FoldData(0, df.iloc[:30], df.iloc[30:35], df.iloc[35:])
    task = matbench_task("matbench_expt_gap")
    all_rows = CrossMatPredictor("x", recipe={"stage": "finetune", "data": {"validation_fraction": 0.0}})
    stage = all_rows.fold_recipe(fold, task, 0)
    assert len(stage["data"]["train"]) == 35 and len(stage["data"]["validation"]) == 0
    carved = CrossMatPredictor("y", recipe={"stage": "finetune"}).fold_recipe(fold, task, 0)
    assert len(carved["data"]["train"]) == 30 and len(carved["data"]["validation"]) == 5
    # the fold model learns the task's own target name (its config, card and predict columns say it)
    assert stage["data"]["target_column"] == task.target == "gap expt"
    assert np.isfinite(stage["data"]["train"]["gap expt"]).all()


def test_attributions_explain_the_model_with_element_features():
    """Integrated gradients must perturb the vectors the model really uses (projected element features), so
    the explained prediction equals the model's own prediction."""
    from crossmat.interpretability.attributions import explain_attributions

    torch.manual_seed(0)
    table, _ = element_feature_table("mat2vec")
    model = CrossMatForPropertyPrediction(_config(element_features="mat2vec", element_feature_dim=table.shape[1])).eval()
    install_element_features(model, "mat2vec")
    tok = CrossMatTokenizerFast()
    res = explain_attributions(model, tok, ["Fe2O3", "LiCoO2"], n_steps=8)
    with torch.no_grad():
        direct = model(**_encode(["Fe2O3", "LiCoO2"])).logits[:, 0]
    assert np.allclose([r.prediction for r in res], direct.numpy(), atol=1e-5)


def test_attributions_explain_an_ensemble_as_a_whole():
    """The default recipe trains two members: integrated gradients move every member's embeddings together, so
    the explained prediction is the ensemble's own and the attributions still add up to prediction - baseline."""
    from crossmat.interpretability.attributions import explain_attributions

    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(_config(ensemble_size=2)).eval()
    tok = CrossMatTokenizerFast()
    res = explain_attributions(model, tok, ["Fe2O3", "LiCoO2"], n_steps=32)
    with torch.no_grad():
        direct = model(**_encode(["Fe2O3", "LiCoO2"])).logits[:, 0]
        members = [head(enc(**_encode(["Fe2O3"])).pooler_output) for enc, head in model.members()]
    assert np.allclose([r.prediction for r in res], direct.numpy(), atol=1e-5)
    assert not torch.allclose(members[0], members[1])  # two different members, both explained
    for r in res:
        assert abs(sum(r.attributions) - (r.prediction - r.baseline_prediction)) <= 1e-2 * max(1.0, abs(r.prediction))
    with pytest.raises(ValueError, match="one tensor per member"):
        emb = model.crossmat.embeddings.embed_tokens(_encode(["Fe2O3"])["input_ids"])
        model(**_encode(["Fe2O3"]), inputs_embeds=emb)
