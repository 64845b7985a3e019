"""Training with Accelerate: MLM and imKT pretraining, full and LoRA fine-tuning (see docs/training.md)."""

from crossmat.modeling.model_folder import load_lora_model

from .collator import MaskedElementCollator
from .data import StageData, load_source, prepare_stage_data
from .folder import StageRun, latest_checkpoint
from .loop import StageTrainer
from .model import build_model, init_element_embeddings
from .recipe import (
    STAGE_DEFAULTS,
    STAGE_TYPES,
    RecipeError,
    StageRecipe,
    apply_overrides,
    load_recipe,
    register_stage,
    resolve_stage,
    validate_recipe,
)
from .stage_kinds import CIFLMStage, FinetuneStage, ImktStage, MLMStage, Stage
from .stages import run_recipe, run_stage, train_recipe, train_stage

__all__ = [
    "STAGE_DEFAULTS",
    "STAGE_TYPES",
    "CIFLMStage",
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
