"""CrossMat models: composition decoding, heads and losses, save/load round trips, remote code."""

from __future__ import annotations

import textwrap

import pytest
import torch
from pymatgen.core import Composition
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
)

from crossmat.modeling import (
    AUTO_MAP,
    CrossMatConfig,
    CrossMatForMaskedLM,
    CrossMatForPropertyPrediction,
    CrossMatForStructureAlignment,
    CrossMatModel,
    decode_composition,
)
from crossmat.modeling.modeling_crossmat import alignment_loss
from crossmat.tokenization import CrossMatTokenizerFast, build_backend_tokenizer
from crossmat.tokenization.vocabulary import MASK_ID, token_layout

from .test_tokenizer import _run_isolated

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, structure_embedding_dim=8)
FORMULAS = ["Fe2O3", "Li0.5Co0.5O2", "H8SN2O4", "NaCl", "Fe0.620C0.000953Mn0.000521Nb0.0000616Co0.146"]


@pytest.fixture(scope="module")
def tokenizer():
    return CrossMatTokenizerFast()


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(FORMULAS, padding=True, return_tensors="pt")


def test_config_layout_matches_tokenizer():
    cfg = CrossMatConfig()
    for key, value in token_layout().items():
        assert getattr(cfg, key) == value, key


def _fractions(ids, cfg, tokens):
    slots, fr = decode_composition(ids, cfg)
    return {tokens[j]: float(fr[0, j]) for j in range(ids.shape[1]) if slots[0, j]}


@pytest.mark.parametrize(
    "formula",
    ["(NH4)2SO4", "Ag(W3Br7)2", "K4[Fe(CN)6]", "Ca3(PO4)2", "((Fe2O)2)3Li", "CH3COOH", "Fe2 O3",
     "Fe0.620C0.000953Mn0.000521Si0.00102Cr0.000110Ni0.192Mo0.0176V0.000112Nb0.0000616Co0.146Al0.00318Ti0.0185"],
)
def test_model_reads_exact_fractions_from_raw_tokens(formula):
    """The bare tokenizer.json output (groups, repeats, whitespace) decodes to pymatgen's fractions."""
    enc = build_backend_tokenizer().encode(formula)
    got = _fractions(torch.tensor([enc.ids]), CrossMatConfig(), enc.tokens)
    want = {el.symbol: frac for el, frac in Composition(formula).fractional_composition.items()}
    assert got.keys() == want.keys()
    for el, frac in want.items():
        assert got[el] == pytest.approx(frac, rel=1e-6), el


def test_element_order_does_not_matter(tokenizer):
    model = CrossMatModel(CrossMatConfig(**TINY)).eval()
    backend = build_backend_tokenizer()
    ids = [backend.encode(f).ids for f in ["Fe2O3", "O3Fe2", "Fe4O6"]]
    out = model(torch.tensor(ids[:2])).pooler_output
    torch.testing.assert_close(out[0], out[1])
    same = model(torch.tensor([ids[0]])).pooler_output
    torch.testing.assert_close(model(torch.tensor([ids[2]])).pooler_output, same)


def test_masked_lm_forward_and_loss(batch):
    model = CrossMatForMaskedLM(CrossMatConfig(**TINY))
    ids = batch["input_ids"].clone()
    labels = torch.full_like(ids, -100)
    labels[:, 1], ids[:, 1] = ids[:, 1], MASK_ID  # first element of every formula
    out = model(input_ids=ids, attention_mask=batch["attention_mask"], labels=labels)
    assert out.logits.shape == (*ids.shape, model.config.vocab_size)
    assert out.loss.item() == pytest.approx(torch.log(torch.tensor(136.0)).item(), rel=0.2)
    out.loss.backward()
    assert model.lm_head.decoder.weight is model.crossmat.embeddings.word_embeddings.weight


@pytest.mark.parametrize("kind", ["cosine", "mse", "infonce"])
def test_structure_alignment_losses(batch, kind):
    torch.manual_seed(0)
    model = CrossMatForStructureAlignment(CrossMatConfig(**TINY, alignment_loss=kind, alignment_loss_weight=2.0))
    target = torch.randn(len(FORMULAS), 8)
    out = model(**batch, structure_embeddings=target)
    assert out.mlm_loss is None and out.projected_embedding.shape == (len(FORMULAS), 8)
    torch.testing.assert_close(out.loss, 2.0 * out.alignment_loss)
    out.loss.backward()
    # a few steps pull the projection onto the targets
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = out.alignment_loss.item()
    for _ in range(30):
        opt.zero_grad()
        loss = model(**batch, structure_embeddings=target).loss
        loss.backward()
        opt.step()
    assert loss.item() / 2.0 < first * 0.5
    with pytest.raises(ValueError, match="structure_embedding_dim"):
        model(**batch, structure_embeddings=torch.randn(len(FORMULAS), 5))


@pytest.mark.parametrize("kind", ["cosine", "infonce"])
def test_alignment_loss_skips_rows_without_a_structure(batch, kind):
    torch.manual_seed(0)
    model = CrossMatForStructureAlignment(CrossMatConfig(**TINY, alignment_loss=kind)).eval()
    target = torch.randn(len(FORMULAS), 8)
    mask = torch.tensor([True, False, True, True, False])
    out = model(**batch, structure_embeddings=target, structure_mask=mask)
    want = alignment_loss(out.projected_embedding[mask], target[mask], kind, model.config.infonce_temperature)
    torch.testing.assert_close(out.alignment_loss, want)
    # the targets of rows without a structure do not matter
    other = target.clone()
    other[~mask] = 1e3
    torch.testing.assert_close(model(**batch, structure_embeddings=other, structure_mask=mask).loss, out.loss)
    # a batch with no (InfoNCE: one) structure row has a zero alignment loss that still reaches the projection
    none = model(**batch, structure_embeddings=target, structure_mask=torch.zeros(len(FORMULAS), dtype=torch.bool))
    assert none.alignment_loss.item() == 0.0 and none.alignment_loss.requires_grad


def test_clean_view_alignment_reads_the_unmasked_formula(batch):
    """alignment_input="clean": the projection reads a second pass over clean_input_ids; MLM still reads the masked
    ids. "masked" (the default) ignores clean_input_ids, so old recipes and backbones behave as before."""
    torch.manual_seed(0)
    clean_ids = batch["input_ids"]
    masked = clean_ids.clone()
    labels = torch.full_like(masked, -100)
    labels[:, 1], masked[:, 1] = masked[:, 1], MASK_ID
    target = torch.randn(len(FORMULAS), 8)
    cfg = CrossMatConfig(**TINY, alignment_loss="mse", alignment_input="clean", initializer_range=0.5)
    model = CrossMatForStructureAlignment(cfg).eval()
    args = {"attention_mask": batch["attention_mask"], "labels": labels, "structure_embeddings": target}
    out = model(input_ids=masked, clean_input_ids=clean_ids, **args)
    on_clean = model(input_ids=clean_ids, **args)  # the same weights, alignment on the unmasked formula
    on_masked = model(input_ids=masked, **args)
    torch.testing.assert_close(out.projected_embedding, on_clean.projected_embedding)
    torch.testing.assert_close(out.alignment_loss, on_clean.alignment_loss)
    torch.testing.assert_close(out.mlm_loss, on_masked.mlm_loss)
    assert (out.projected_embedding - on_masked.projected_embedding).abs().max() > 1e-2
    model.config.alignment_input = "masked"
    torch.testing.assert_close(model(input_ids=masked, clean_input_ids=clean_ids, **args).loss, on_masked.loss)
    with pytest.raises(ValueError, match="alignment_input"):
        CrossMatConfig(**TINY, alignment_input="unmasked")


def test_property_regression_in_physical_units(batch):
    cfg = CrossMatConfig(**TINY, num_labels=2, problem_type="regression", target_mean=[100.0, -1.0],
                         target_std=[50.0, 0.5], regression_loss="mse")
    model = CrossMatForPropertyPrediction(cfg).eval()
    labels = torch.tensor([[100.0, -1.0]] * len(FORMULAS))
    out = model(**batch, labels=labels)
    raw = model.head(model.crossmat(**batch).pooler_output)
    torch.testing.assert_close(out.logits, raw * torch.tensor([50.0, 0.5]) + torch.tensor([100.0, -1.0]))
    torch.testing.assert_close(out.loss, (raw**2).mean())


def test_property_binary_classification(batch):
    model = CrossMatForPropertyPrediction(CrossMatConfig(**TINY, num_labels=2))
    labels = torch.tensor([0, 1, 0, 1, 1])
    out = model(**batch, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


HEADS = [
    (CrossMatModel, AutoModel, "last_hidden_state"),
    (CrossMatForMaskedLM, AutoModelForMaskedLM, "logits"),
    (CrossMatForStructureAlignment, AutoModelForPreTraining, "projected_embedding"),
    (CrossMatForPropertyPrediction, AutoModelForSequenceClassification, "logits"),
]


@pytest.mark.parametrize(("cls", "auto", "field"), HEADS)
def test_save_and_auto_reload_identical(tmp_path, batch, tokenizer, cls, auto, field):
    torch.manual_seed(0)
    model = cls(CrossMatConfig(**TINY, target_mean=[3.0], target_std=[2.0], num_labels=1)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), CrossMatConfig)
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is cls
    with torch.no_grad():
        torch.testing.assert_close(getattr(loaded(**batch), field), getattr(model(**batch), field), rtol=0, atol=0)


def test_trust_remote_code_load_without_package(tmp_path, batch, tokenizer):
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(CrossMatConfig(**TINY, target_mean=[3.0], target_std=[2.0], num_labels=1)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    import json

    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == AUTO_MAP
    with torch.no_grad():
        expected = model(**tokenizer(FORMULAS, padding=True, return_tensors="pt")).logits[:, 0].tolist()
    code = textwrap.dedent(
        f"""
        import json, sys
        from blocker import block; block()
        try:
            import crossmat.modeling as modeling
            raise SystemExit("project package importable")
        except ImportError:
            pass
        import torch
        from transformers import (AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining,
                                  AutoModelForSequenceClassification, AutoTokenizer)
        path = {str(tmp_path)!r}
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
        kinds = [type(a.from_pretrained(path, trust_remote_code=True)).__name__
                 for a in (AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining)]
        with torch.no_grad():
            out = model(**tok({FORMULAS!r}, padding=True, return_tensors="pt")).logits[:, 0].tolist()
        print("RESULT:" + json.dumps({{"module": type(model).__module__, "logits": out, "kinds": kinds}}))
        """
    )
    out = _run_isolated(code, tmp_path)
    assert out["module"].startswith("transformers_modules.")
    assert out["kinds"] == ["CrossMatModel", "CrossMatForMaskedLM", "CrossMatForStructureAlignment"]
    assert out["logits"] == pytest.approx(expected, abs=1e-6)


def test_remote_code_files_import_only_transformers_and_torch():
    import ast
    from pathlib import Path

    allowed = {"torch", "transformers", "math", "dataclasses", "collections", "typing", "__future__"}
    for path in Path(__file__).resolve().parents[1].glob("modeling/*_crossmat.py"):
        if not (path.name.startswith("configuration_") or path.name.startswith("modeling_")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, (path.name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, (path.name, alias.name)


@pytest.mark.parametrize("formula", ["Xx2O", "Fe0O", "22"])
def test_unreadable_rows_are_refused(formula):
    enc = build_backend_tokenizer().encode_batch(["NaCl", formula])
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(e.ids) for e in enc], batch_first=True)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        CrossMatModel(CrossMatConfig(**TINY))(ids)
