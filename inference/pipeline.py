"""The ``composition-property-prediction`` pipeline with the installed package (no remote code needed).

Registration and writing the pipeline into model folders live in :mod:`modeling.pipeline_files`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Pipeline, pipeline

from crossmat.modeling.model_folder import load_model, load_tokenizer
from crossmat.modeling.pipeline_crossmat import TASK, CompositionPropertyPipeline
from crossmat.modeling.pipeline_files import add_pipeline_to_model_dir, register_pipeline

__all__ = ["TASK", "CompositionPropertyPipeline", "add_pipeline_to_model_dir", "load_pipeline", "register_pipeline"]


def load_pipeline(model: str | Path, **kwargs: Any) -> Pipeline:
    """The pipeline for a full or LoRA model folder or a Hub id (loaded by :func:`modeling.model_folder.load_model`)."""
    register_pipeline()
    return pipeline(TASK, model=load_model(model), tokenizer=load_tokenizer(model), **kwargs)
