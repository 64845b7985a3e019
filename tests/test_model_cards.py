"""Model cards: metadata that parses and validates, and usage snippets that really run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from crossmat.model_cards import KINDS, write_model_card
from crossmat.tokenization import CrossMatTokenizerFast

from .test_inference_support import make_pretrained_model, make_property_model, run_without_package

METRIC = {
    "name": "MAE (5-fold mean)",
    "type": "mae",
    "value": 0.3712,
    "dataset_name": "MatBench expt_gap",
    "dataset_type": "matbench_expt_gap",
    "split": "test",
    "task_type": "tabular-regression",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cards")
    out = {
        "property": make_property_model(root / "prop-model"),
        "clm-mlm": make_pretrained_model(root / "mlm-model"),
        "clm-imkt": make_pretrained_model(root / "imkt-model", imkt=True),
    }
    # a LoRA adapter trained on top of the MLM checkpoint: adapter weights + head config + tokenizer
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    import crossmat.modeling  # noqa: F401

    base = AutoModelForSequenceClassification.from_pretrained(
        out["clm-mlm"],
        num_labels=1,
        problem_type="regression",
        target_mean=[2.0],
        target_std=[0.5],
        target_names=["band_gap"],
        target_units=["eV"],
    )
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["qkv", "out_proj"], modules_to_save=["head"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = root / "lora-adapter"
    peft_model.save_pretrained(adapter)
    base.config.save_pretrained(adapter)
    CrossMatTokenizerFast().save_pretrained(adapter)
    out["lora-adapter"] = adapter
    structure = root / "structure-model"
    structure.mkdir()
    (structure / "config.json").write_text(json.dumps({"model": "CHGNet", "head": "linear", "embedding_dim": 64}))
    out["structure-predictor"] = structure
    from crossmat.explicit_transfer.cif_lm import build_cif_tokenizer, new_cif_lm

    cif_tok = build_cif_tokenizer()
    new_cif_lm(cif_tok, n_embd=16, n_layer=1, n_head=2, n_positions=64).save_pretrained(root / "cif-lm-model")
    cif_tok.save_pretrained(root / "cif-lm-model")
    out["cif-lm"] = root / "cif-lm-model"
    return out


def _write(kind: str, folder: Path) -> Path:
    extra = {}
    if kind == "cif-lm":
        from crossmat.training.cif_lm_stage import USAGE

        extra["usage"] = USAGE.format(model_id=folder.name)
    if kind == "structure-predictor":
        extra["usage"] = (
            "import json, pathlib\n"
            f"cfg = json.loads(pathlib.Path('{folder.name}/config.json').read_text())\n"
            "print(cfg['model'])"
        )
    base = {"lora-adapter": str(folder.parent / "mlm-model"), "property": "crossmat/clm-imkt"}.get(kind)
    return write_model_card(
        folder,
        kind=kind,
        base_model=base,
        datasets=["matbench_expt_gap"] if kind in ("property", "lora-adapter") else ["materials-project-formulas"],
        recipe={"learning_rate": 5e-4, "epochs": 3, "seed": 0},
        metrics=[METRIC] if kind in ("property", "lora-adapter") else [],
        leakage_notes=["Formulas in the MatBench test folds were removed from the pretraining corpus."],
        **extra,
    )


def test_cards_for_every_kind_parse_and_validate(folders: dict[str, Path]) -> None:
    assert set(folders) == set(KINDS)
    for kind, folder in folders.items():
        path = _write(kind, folder)
        text = path.read_text()
        meta = yaml.safe_load(text.split("---")[1])
        assert meta["library_name"] == KINDS[kind].library_name
        assert meta.get("pipeline_tag") == KINDS[kind].pipeline_tag
        assert "crossmat" in meta["tags"] and meta["datasets"]
        card = ModelCard.load(path)
        assert card.data.library_name == meta["library_name"]
        for section in (
            "## How to use",
            "## Training data",
            "### Leakage notes",
            "## Limitations",
            "learning_rate: 0.0005",
        ):
            assert section in text, (kind, section)
        assert "removed from the pretraining corpus" in text
        if kind in ("property", "lora-adapter"):
            (res,) = card.data.eval_results
            assert (res.metric_type, res.metric_value, res.dataset_type, res.dataset_split) == (
                "mae",
                0.3712,
                "matbench_expt_gap",
                "test",
            )
            name, results = model_index_to_eval_results(meta["model-index"])
            assert results == card.data.eval_results and name == folder.name
            assert eval_results_to_model_index(name, results) == meta["model-index"]
            assert meta["widget"][0]["text"] == "Fe2O3" and "| MatBench expt_gap | test | MAE" in text
            assert meta["base_model"]
        else:
            assert "model-index" not in meta
        if kind == "cif-lm":  # a plain transformers GPT-2: no remote code, no composition-only caveats
            assert "trust_remote_code" not in text and "Composition only" not in text and "GPT-2" in text


def test_property_card_details(folders: dict[str, Path]) -> None:
    text = _write("property", folders["property"]).read_text()
    assert "band_gap (eV) — regression" in text and "hidden 32, 2 layers" in text
    assert "crossmat-predict --model prop-model" in text and "python app.py --model prop-model" in text
    assert "## Interpretability" not in text  # cards do not run models: the section is opt-in


def test_explanation_section_is_passed_in_not_computed(folders: dict[str, Path]) -> None:
    section = "## Interpretability\n\n| element | value |\n|---|---:|\n| Fe | +0.1 |\n"
    text = write_model_card(folders["property"], kind="property", explanation=section).read_text()
    assert "## Interpretability" in text and "| Fe | +0.1 |" in text
    with pytest.raises(ValueError, match="explanation section is for property models"):
        write_model_card(folders["clm-mlm"], kind="clm-mlm", explanation=section)


def test_card_argument_errors(folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown card kind"):
        write_model_card(folders["property"], kind="gpt")
    with pytest.raises(ValueError, match=r"metrics\[0\] lacks \['split'"):
        bad = {k: v for k, v in METRIC.items() if k != "split"}
        write_model_card(folders["property"], kind="property", metrics=[bad])
    with pytest.raises(ValueError, match="NaN"):
        write_model_card(folders["property"], kind="property", metrics=[{**METRIC, "value": float("nan")}])
    with pytest.raises(TypeError, match="unknown model card argument"):
        write_model_card(folders["property"], kind="property", colour="red")
    with pytest.raises(ValueError, match="needs usage"):
        write_model_card(folders["structure-predictor"], kind="structure-predictor")
    with pytest.raises(ValueError, match="needs base_model"):
        write_model_card(folders["lora-adapter"], kind="lora-adapter")
    with pytest.raises(FileNotFoundError):
        write_model_card(tmp_path / "nope", kind="property")


def test_usage_snippets_run_without_the_package(folders: dict[str, Path]) -> None:
    """Every ```python block of every card runs in an interpreter that cannot import crossmat."""
    scripts = []
    for kind, folder in folders.items():
        text = _write(kind, folder).read_text()
        blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
        assert blocks, kind
        scripts += [(kind, b) for b in blocks]
    root = next(iter(folders.values())).parent
    code = "\n".join(
        f"print('=== {kind}', flush=True)\nexec(compile({block!r}, '<{kind} card>', 'exec'), {{}})"
        for kind, block in scripts
    )
    proc = run_without_package(code + "\nprint('ALL SNIPPETS RAN')", root, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "ALL SNIPPETS RAN" in out
    assert "'property': 'band_gap'" in out and "'unit': 'eV'" in out  # the property pipeline snippet
    assert "torch.Size([3, 32])" in out and "torch.Size([3, 16])" in out  # embeddings / imKT projection
    assert "=== cif-lm\ndata_SrTiO3\n" in out  # the CIF LM snippet samples from the prompt


def test_card_metadata_holds_hub_ids_only_and_tags_follow_the_data(folders: dict[str, Path]) -> None:
    """Local paths stay out of `datasets:`; the matbench tag and MatBench leakage notes only for MatBench data."""
    text = write_model_card(folders["property"], kind="property", metrics=[METRIC],
                            datasets=["/home/someone/private/train.csv", "my_data.csv"]).read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert not meta.get("datasets") and "matbench" not in meta["tags"]
    assert "/home/someone/private/train.csv" in text.split("## Training data")[1]  # described in the prose
    assert "test_fold" not in text  # no MatBench leakage notes for a custom dataset
    text = write_model_card(folders["property"], kind="property", metrics=[METRIC], datasets=["someone/matbench-expt-gap"],
                            benchmark="matbench").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["datasets"] == ["someone/matbench-expt-gap"] and "matbench" in meta["tags"]
    assert "test_fold != k" in text
