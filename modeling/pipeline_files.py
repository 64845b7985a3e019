"""Write the ``composition-property-prediction`` pipeline into a property model folder at save time.

Not Hub remote code (it imports the package); the pipeline class itself is the remote-code file
``pipeline_crossmat.py``, which this saves next to the model's code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_crossmat import output_info
from .model_folder import load_model, load_tokenizer
from .pipeline_crossmat import TASK, CompositionPropertyPipeline

__all__ = ["TASK", "add_pipeline_to_model_dir", "label_config", "register_pipeline"]


def register_pipeline() -> None:
    """Register ``composition-property-prediction`` with transformers' ``PIPELINE_REGISTRY`` (idempotent)."""
    if TASK in PIPELINE_REGISTRY.supported_tasks:
        if PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is CompositionPropertyPipeline:
            return
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=CompositionPropertyPipeline, pt_model=AutoModelForSequenceClassification, type="text"
    )


def label_config(config: Any) -> None:
    """Make a property config self-describing for ``text-classification`` and the Hub widget: store the
    problem type and, for regression, ``id2label`` = ``"<target name> (<unit>)"``."""
    info = output_info(config)
    config.problem_type = info["problem_type"]
    if info["problem_type"] == "regression":
        default = [f"LABEL_{i}" for i in range(info["num_labels"])]
        names = list(getattr(config, "target_names", None) or [])
        if names and info["labels"] == default:
            labels = {i: (f"{n} ({u})" if u else n) for i, (n, u) in enumerate(zip(names, info["units"], strict=False))}
            config.id2label = labels
            config.label2id = {v: k for k, v in labels.items()}


def add_pipeline_to_model_dir(model_dir: str | Path, output_dir: str | Path | None = None) -> Path:
    """Save a property model folder with the pipeline as remote code (``custom_pipelines`` + the file).

    Afterwards ``pipeline("composition-property-prediction", model=folder, trust_remote_code=True)``
    works without the ``crossmat`` package, and ``text-classification`` returns regression values.
    """
    register_pipeline()
    model_dir = Path(model_dir)
    out = Path(output_dir) if output_dir is not None else model_dir
    model = load_model(model_dir)
    label_config(model.config)
    CompositionPropertyPipeline(model=model, tokenizer=load_tokenizer(model_dir)).save_pretrained(str(out))
    return out
