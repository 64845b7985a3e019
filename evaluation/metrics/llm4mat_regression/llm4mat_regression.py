"""LLM4Mat-Bench regression score as a Hugging Face ``evaluate`` module.

``mad_mae`` = MAD / MAE where MAD is the mean absolute deviation of the **test targets** around their
own mean (``calculate_mad`` in the official LLM4Mat-Bench code), so higher is better and a constant
mean predictor scores about 1. Load with ``evaluate.load("<path>/llm4mat_regression")``.
"""

from __future__ import annotations

import datasets
import numpy as np

import evaluate

_DESCRIPTION = "LLM4Mat-Bench regression: MAD:MAE with MAD computed on the test targets; also mae, mad, rmse."
_KWARGS = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true test targets.
Returns:
    dict with mad_mae, mad, mae, rmse (floats).
"""
_CITATION = "Rubungo et al., LLM4Mat-Bench, Mach. Learn.: Sci. Technol. 6 (2025); arXiv:2411.00177"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Llm4matRegression(evaluate.Metric):
    """MAD:MAE on the test set."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        y = np.asarray(references, dtype=np.float64)
        p = np.asarray(predictions, dtype=np.float64)
        if y.size == 0:
            raise ValueError("no predictions to score")
        mad = float(np.mean(np.abs(y - y.mean())))
        mae = float(np.mean(np.abs(p - y)))
        return {
            "mad_mae": mad / mae if mae > 0 else float("inf"),
            "mad": mad,
            "mae": mae,
            "rmse": float(np.sqrt(np.mean((p - y) ** 2))),
        }
