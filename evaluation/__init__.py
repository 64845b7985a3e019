"""Benchmark harness: MatBench v0.1 and LLM4Mat-Bench protocols, baselines, metrics and result records.

``python evaluate.py --benchmark matbench --task matbench_steels --config RECIPE --output-dir DIR``
(see docs/evaluation.md)."""

from crossmat._extras import needs_extra

with needs_extra("train", "crossmat evaluate (crossmat.evaluation)"):
    from .baselines import DummyBaseline, FoldData, FoldPrediction, MagpieRandomForest
    from .crossmat_predictor import CrossMatPredictor, ModelTaskMismatch, check_model_folder, predict_folder
    from .protocol import run_benchmark
    from .scores import load_metric, score
    from .tasks import (
        BenchmarkDataError,
        TaskInfo,
        carve_validation,
        fold_indices,
        load_llm4mat,
        load_matbench_frame,
        matbench_task,
        matbench_tasks,
    )

__all__ = [
    "BenchmarkDataError",
    "CrossMatPredictor",
    "DummyBaseline",
    "FoldData",
    "FoldPrediction",
    "MagpieRandomForest",
    "ModelTaskMismatch",
    "TaskInfo",
    "carve_validation",
    "check_model_folder",
    "fold_indices",
    "load_llm4mat",
    "load_matbench_frame",
    "load_metric",
    "matbench_task",
    "matbench_tasks",
    "predict_folder",
    "run_benchmark",
    "score",
]
