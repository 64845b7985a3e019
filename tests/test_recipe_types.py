"""The typed recipe (:class:`training.recipe.StageRecipe`) and the stage registry (:mod:`training.stage_kinds`):
every shipped YAML recipe resolves unchanged, defaults and error messages are those of the schema, in-memory
data survives, and the stage-specific behaviour lives on the stage objects."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from crossmat.training import RecipeError, apply_overrides, load_recipe, validate_recipe
from crossmat.training.recipe import STAGE_DEFAULTS, DataSection, StageRecipe, resolve_stage
from crossmat.training.stage_kinds import (
    STAGE_TYPES,
    FinetuneStage,
    ImktStage,
    MLMStage,
    Stage,
    register_stage,
    stage_kind,
)

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(REPO.glob("configs/*.yaml")) + sorted(REPO.glob("benchmarks/**/recipes/*.yaml"))
FRAME = pd.DataFrame({"formula": ["NaCl", "KCl"], "target": [1.0, 2.0]})


def _with_fold_data(recipe: dict) -> dict:
    """Evaluation recipes carry no data: inject a fold frame into every stage without ``data.train``."""
    for stage in recipe["pipeline"] if "pipeline" in recipe else [recipe]:
        data = stage.get("data") or {}
        if data.get("train") is None:
            data = {**data, "train": FRAME}
            if stage.get("stage") == "finetune":
                data.setdefault("target_column", "target")
        stage["data"] = data
    return recipe


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO)) for p in RECIPES])
def test_every_shipped_recipe_resolves(path: Path) -> None:
    assert RECIPES, "no recipes found"
    stages = validate_recipe(_with_fold_data(load_recipe(path)))
    for stage in stages:
        assert isinstance(stage, StageRecipe) and stage.name
        assert isinstance(stage.kind, STAGE_TYPES[stage.stage])
        plain = stage.to_dict()
        assert list(plain) == list(STAGE_DEFAULTS)
        for section in ("model", "data", "train", "lora"):
            assert list(plain[section]) == list(STAGE_DEFAULTS[section])
        again = resolve_stage(plain)  # the plain view resolves to the same recipe
        assert again.to_dict().keys() == plain.keys() and again.train == stage.train and again.model == stage.model


def test_defaults_and_sections() -> None:
    r = resolve_stage({"stage": "mlm", "data": {"train": "x.csv"}})
    assert r.seed == 42 and r.train.epochs == 3 and r.train.adam_betas == [0.9, 0.999] and r.lora.r == 8
    assert r.data.validation_fraction == 0.1 and r.data.standardize_embeddings is False and r.card == {}
    assert STAGE_DEFAULTS["train"]["batch_size"] == 256 and STAGE_DEFAULTS["data"]["train"] is None
    assert STAGE_DEFAULTS["model"] == {"init_from": None, "config": {}, "element_embedding_init": None,
                                       "gradient_checkpointing": False}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.train.epochs = 5  # type: ignore[misc]
    changed = dataclasses.replace(r, train=dataclasses.replace(r.train, epochs=5))
    assert changed.train.epochs == 5 and r.train.epochs == 3
    # two recipes never share a mutable default
    assert resolve_stage({"stage": "mlm", "data": {"train": "x"}}).model.config is not r.model.config


def test_in_memory_data_is_kept_as_is() -> None:
    r = resolve_stage({"stage": "finetune", "data": {"train": FRAME, "validation": FRAME.iloc[:1], "target_column": "target"}})
    assert r.data.train is FRAME and isinstance(r.data.validation, pd.DataFrame)
    assert r.to_dict()["data"]["train"] is FRAME


def test_errors_name_the_key() -> None:
    with pytest.raises(RecipeError, match=r"unknown recipe key\(s\) \['bogus'\] under 'data'"):
        resolve_stage({"stage": "mlm", "data": {"train": "x", "bogus": 1}})
    with pytest.raises(RecipeError, match=r"recipe key 'stage' is 'pretrain'; choose one of \['mlm', 'imkt', 'finetune', 'cif_lm'\]"):
        resolve_stage({"stage": "pretrain", "data": {"train": "x"}})
    with pytest.raises(RecipeError, match="recipe key 'data.train' is required"):
        resolve_stage({"stage": "mlm"})
    with pytest.raises(RecipeError, match="stage 'finetune' needs 'data.target_column'"):
        resolve_stage({"stage": "finetune", "data": {"train": "x"}})
    with pytest.raises(RecipeError, match="recipe key 'lora.enabled' is only supported for stage 'finetune'"):
        resolve_stage({"stage": "imkt", "lora": {"enabled": True}, "data": {"train": "x"}})
    with pytest.raises(RecipeError, match=r"card.explain True: true or a formula, for stage 'finetune' only \(stage 'mlm'\)"):
        resolve_stage({"stage": "mlm", "card": {"explain": True}, "data": {"train": "x"}})
    with pytest.raises(RecipeError, match="recipe key 'train.epochs' must be a positive integer"):
        resolve_stage({"stage": "mlm", "train": {"epochs": 0}, "data": {"train": "x"}})
    with pytest.raises(RecipeError, match=r"pipeline stage 1 \(b\): recipe key 'data.task'"):
        validate_recipe({"pipeline": [{"name": "a", "stage": "mlm", "data": {"train": "x"}},
                                      {"name": "b", "stage": "mlm", "data": {"train": "x", "task": "ranking"}}]})


def test_pipeline_overrides_reach_the_typed_stages() -> None:
    recipe = {"seed": 5, "pipeline": [{"name": "a", "stage": "mlm", "data": {"train": "x"}},
                                     {"name": "b", "stage": "finetune", "model": {"init_from": "@a"},
                                      "data": {"train": "x", "target_column": "y"}}]}
    a, b = validate_recipe(apply_overrides(recipe, ["b.train.epochs=7", "train.batch_size=32", "b.lora.enabled=true"]))
    assert (a.seed, a.train.epochs, a.train.batch_size, a.lora.enabled) == (5, 3, 32, False)
    assert (b.seed, b.train.epochs, b.train.batch_size, b.lora.enabled, b.model.init_from) == (5, 7, 32, True, "@a")
    assert [type(s.kind) for s in (a, b)] == [MLMStage, FinetuneStage]


def test_stage_objects_own_what_differs() -> None:
    assert list(STAGE_TYPES) == ["mlm", "imkt", "finetune", "cif_lm"]
    assert issubclass(ImktStage, MLMStage)
    mlm, imkt, ft, cif = (stage_kind(n) for n in STAGE_TYPES)
    assert [k.trainer is not None for k in (mlm, imkt, ft, cif)] == [False, False, False, True]  # cif_lm: HF Trainer on CIF text
    assert (cif.card_kind, cif.model_class.__name__) == ("cif-lm", "GPT2LMHeadModel")
    assert [k.card_kind for k in (mlm, imkt, ft)] == ["clm-mlm", "clm-imkt", "property"]
    assert [k.model_class.__name__ for k in (mlm, imkt, ft)] == [
        "CrossMatForMaskedLM", "CrossMatForStructureAlignment", "CrossMatForPropertyPrediction"]
    assert [k.property_model for k in (mlm, imkt, ft)] == [False, False, True]
    data = DataSection(target_column=["a", "b"], embedding_column="emb")
    assert [k.target_key for k in (mlm, imkt, ft)] == [None, None, "target_column"]
    assert [[getattr(data, key) for key in k.required_keys] for k in (mlm, imkt, ft)] == [[], ["emb"], []]
    assert [k.masks_elements for k in (mlm, imkt, ft)] == [True, True, False]
    # imKT's clean-view alignment (config alignment_input="clean") keeps the unmasked ids beside the masks
    from crossmat.modeling import CrossMatConfig
    clean, masked = CrossMatConfig(alignment_input="clean"), CrossMatConfig()
    assert imkt.collator(0.15, 1, clean).keep_clean and not imkt.collator(0.15, 1, masked).keep_clean
    assert not mlm.collator(0.15, 1, clean).keep_clean and ft.collator(0.15, 1, clean) is None
    assert [k.default_metric.get("regression", "loss") for k in (mlm, imkt, ft)] == ["loss", "loss", "mae"]


def test_a_new_stage_is_one_class() -> None:
    @register_stage
    class ProbeStage(MLMStage):
        name = "probe"
        card_kind = "clm-mlm"

    try:
        r = resolve_stage({"stage": "probe", "data": {"train": "x"}})
        assert isinstance(r.kind, ProbeStage) and isinstance(r.kind, Stage)
        with pytest.raises(RecipeError, match="only supported for stage 'finetune'"):
            resolve_stage({"stage": "probe", "lora": {"enabled": True}, "data": {"train": "x"}})
    finally:
        del STAGE_TYPES["probe"]
    with pytest.raises(RecipeError, match="recipe key 'stage' is 'probe'"):
        resolve_stage({"stage": "probe", "data": {"train": "x"}})
