"""Inference: the ``composition-property-prediction`` pipeline, fast batch prediction and the CLI."""

from .engine import FormulaPredictor, Predictions
from .pipeline import TASK, CompositionPropertyPipeline, add_pipeline_to_model_dir, load_pipeline, register_pipeline
from .predict import InputError, PredictionSummary, predict_file

register_pipeline()

__all__ = [
    "TASK",
    "CompositionPropertyPipeline",
    "FormulaPredictor",
    "InputError",
    "PredictionSummary",
    "Predictions",
    "add_pipeline_to_model_dir",
    "load_pipeline",
    "predict_file",
    "register_pipeline",
]
