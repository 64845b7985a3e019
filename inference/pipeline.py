"""Register the ``composition-property-prediction`` pipeline and save it into model folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification, Pipeline, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import modeling  # noqa: F401  (registers CrossMat with the Auto classes)
from modeling.pipeline_crossmat import TASK, CompositionPropertyPipeline
from tokenization import CrossMatTokenizerFast

__all__ = ["TASK", "CompositionPropertyPipeline", "add_pipeline_to_model_dir", "load_pipeline", "register_pipeline"]


def register_pipeline() -> None:
    """Register ``composition-property-prediction`` with transformers' ``PIPELINE_REGISTRY`` (idempotent)."""
    if TASK in PIPELINE_REGISTRY.supported_tasks:
        if PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is CompositionPropertyPipeline:
            return
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=CompositionPropertyPipeline, pt_model=AutoModelForSequenceClassification, type="text"
    )


def _label_config(model: Any) -> None:
    """Make the config self-describing for the standard ``text-classification`` pipeline and the widget."""
    cfg = model.config
    if cfg.problem_type is None:
        cfg.problem_type = "regression" if cfg.num_labels == 1 else "single_label_classification"
    if cfg.problem_type == "regression":
        names = list(cfg.target_names or [])
        units = list(cfg.target_units or [])
        default = {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
        current = {int(k): v for k, v in (cfg.id2label or {}).items()}
        if names and current == default:
            labels = {i: (f"{n} ({units[i]})" if i < len(units) and units[i] else n) for i, n in enumerate(names)}
            cfg.id2label = labels
            cfg.label2id = {v: k for k, v in labels.items()}


def add_pipeline_to_model_dir(model_dir: str | Path, output_dir: str | Path | None = None) -> Path:
    """Save a property model folder with the pipeline as remote code (``custom_pipelines`` + the file).

    Afterwards ``pipeline("composition-property-prediction", model=folder, trust_remote_code=True)``
    works without the ``crossmat`` package, and ``text-classification`` returns regression values.
    """
    register_pipeline()
    model_dir = Path(model_dir)
    out = Path(output_dir) if output_dir is not None else model_dir
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    tokenizer = CrossMatTokenizerFast.from_pretrained(str(model_dir))
    _label_config(model)
    pipe = CompositionPropertyPipeline(model=model, tokenizer=tokenizer)
    pipe.save_pretrained(str(out))
    return out


def load_pipeline(model: str | Path, **kwargs: Any) -> Pipeline:
    """The pipeline for a local folder or Hub id, using the installed package (no remote code needed)."""
    register_pipeline()
    mdl = AutoModelForSequenceClassification.from_pretrained(str(model))
    tok = CrossMatTokenizerFast.from_pretrained(str(model))
    return pipeline(TASK, model=mdl, tokenizer=tok, **kwargs)
