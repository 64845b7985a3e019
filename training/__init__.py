"""Training with Accelerate: MLM and imKT pretraining, full and LoRA fine-tuning (see docs/training.md)."""

from crossmat._extras import needs_extra

with needs_extra("train", "crossmat train (crossmat.training)"):
    from .collator import MaskedElementCollator
    from .data import StageData, load_source, prepare_stage_data
    from .loop import StageTrainer, latest_checkpoint
    from .recipe import (
        STAGE_DEFAULTS,
        RecipeError,
        StageRecipe,
        apply_overrides,
        load_recipe,
        resolve_stage,
        validate_recipe,
    )
    from .stage_kinds import STAGE_TYPES, FinetuneStage, ImktStage, MLMStage, Stage, register_stage
    from .stages import (
        StageRun,
        build_model,
        init_element_embeddings,
        load_lora_model,
        run_recipe,
        run_stage,
        train_recipe,
        train_stage,
    )

__all__ = [
    "STAGE_DEFAULTS",
    "STAGE_TYPES",
    "FinetuneStage",
    "ImktStage",
    "MLMStage",
    "Stage",
    "StageRecipe",
    "StageRun",
    "MaskedElementCollator",
    "RecipeError",
    "StageData",
    "StageTrainer",
    "apply_overrides",
    "build_model",
    "init_element_embeddings",
    "latest_checkpoint",
    "load_lora_model",
    "load_recipe",
    "load_source",
    "prepare_stage_data",
    "register_stage",
    "resolve_stage",
    "run_recipe",
    "run_stage",
    "train_recipe",
    "train_stage",
    "validate_recipe",
]
