"""Training with Accelerate: MLM and imKT pretraining, full and LoRA fine-tuning (see docs/training.md)."""

from .collator import MaskedElementCollator
from .data import StageData, load_source, prepare_stage_data
from .loop import StageTrainer, latest_checkpoint
from .recipe import STAGE_DEFAULTS, RecipeError, apply_overrides, load_recipe, validate_recipe
from .stages import build_model, init_element_embeddings, load_lora_model, run_recipe, run_stage

__all__ = [
    "STAGE_DEFAULTS",
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
    "run_recipe",
    "run_stage",
    "validate_recipe",
]
