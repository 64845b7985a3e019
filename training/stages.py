"""Run a recipe, top to bottom: validate it (:mod:`training.recipe`), then for each stage load its data
(:mod:`training.data` with the stage's tensors from :mod:`training.stage_kinds`), build its model
(:mod:`training.model`), train it with Accelerate (:mod:`training.loop`) and write its folder
(:mod:`training.folder`). A stage with its own trainer (``cif_lm``: :mod:`training.cif_lm_stage`) is handed its
recipe and folder instead. Entry point for Python callers: :func:`run_recipe`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from crossmat.tokenization import CrossMatTokenizerFast

from . import stage_kinds  # noqa: F401  (registers the stage types)
from .data import prepare_stage_data
from .folder import StageRun, check_resume_recipe, push_folder, save_stage_folder, stage_done, write_recipe
from .loop import StageTrainer, make_accelerator
from .model import build_model
from .recipe import RecipeError, StageRecipe, apply_overrides, resolve_stage, validate_recipe

__all__ = ["StageRun", "run_recipe", "run_stage", "train_recipe", "train_stage"]


def run_recipe(recipe: Mapping[str, Any], output_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Validate ``recipe`` (stage or pipeline) with ``overrides`` applied, run it in-process with
    Accelerate, and return the folder of the final stage: ``output_dir`` itself for a single stage,
    ``output_dir/<last stage name>`` for a pipeline (which writes one sub-folder per stage under
    ``output_dir``; ``.parent`` of the result is that root). With ``train.resume`` set, finished
    pipeline stages are skipped and an interrupted stage resumes from its newest checkpoint."""
    return train_recipe(recipe, output_dir, overrides).folder


def train_recipe(recipe: Mapping[str, Any], output_dir: str | Path, overrides: list[str] | None = None) -> StageRun:
    """:func:`run_recipe`, returning the final stage's :class:`StageRun` (its folder and, when it was
    trained here, the trained model and tokenizer)."""
    recipe = apply_overrides(recipe, overrides)
    stages = validate_recipe(recipe)
    root = Path(output_dir)
    if "pipeline" not in recipe:
        return train_stage(stages[0], root)
    outputs: dict[str, Path] = {}
    last = StageRun(root)
    for stage in stages:
        ref = stage.model.init_from
        if isinstance(ref, str) and ref.startswith("@"):
            stage = replace(stage, model=replace(stage.model, init_from=str(outputs[ref[1:]])))
        out = root / stage.name
        if stage.train.resume and stage_done(out, stage):
            print(f"[crossmat] stage {stage.name!r} already finished in {out}; skipping")
            last = StageRun(out)
        else:
            last = train_stage(stage, out)
        outputs[stage.name] = out
    return last


def run_stage(recipe: StageRecipe | Mapping[str, Any], output_dir: str | Path) -> Path:
    """Run one stage recipe; return its output folder."""
    return train_stage(recipe, output_dir).folder


def train_stage(recipe: StageRecipe | Mapping[str, Any], output_dir: str | Path) -> StageRun:
    """Run one stage recipe (resolved, or a stage mapping); return its folder and the trained model."""
    recipe = recipe if isinstance(recipe, StageRecipe) else resolve_stage(recipe)
    out = Path(output_dir)
    kind = recipe.kind
    check_resume_recipe(recipe, out)
    if kind.trainer is not None:  # a stage with its own trainer (cif_lm)
        return kind.trainer(recipe, out)
    if recipe.push_to_hub and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise RecipeError(f"push_to_hub {recipe.push_to_hub!r} requested but HF_HUB_OFFLINE is set; unset it or drop --push-to-hub")
    tokenizer = CrossMatTokenizerFast()
    data = prepare_stage_data(recipe, tokenizer)  # validates everything before any training
    model, model_info = build_model(recipe, data, kind.model_config(recipe, data))
    accelerator = make_accelerator(recipe, out)
    if accelerator.is_main_process:
        write_recipe(out, recipe, data.rejected)
    accelerator.wait_for_everyone()
    trainer = StageTrainer(recipe, model, data, out, accelerator)
    summary, metrics, test_pred = trainer.run()
    unwrapped = accelerator.unwrap_model(trainer.model)
    if accelerator.is_main_process:
        info = {"model": model_info, "data": data.info, "training": summary, "metrics": metrics}
        unwrapped = save_stage_folder(out, recipe, data, unwrapped, tokenizer, info, test_pred)
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        accelerator.end_training()
    if recipe.push_to_hub and accelerator.is_main_process:
        push_folder(out, recipe.push_to_hub)
    if not accelerator.is_main_process:
        return StageRun(out)
    if not (recipe.lora.enabled and recipe.lora.merge):  # the merged model is a fresh module; otherwise drop the autocast wrapper
        unwrapped = accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return StageRun(out, unwrapped.eval(), tokenizer)
