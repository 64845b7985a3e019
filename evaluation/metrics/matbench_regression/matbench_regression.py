"""MatBench v0.1 regression scores (MAE, RMSE, MAPE, max error) as a Hugging Face ``evaluate`` module.

Same definitions as ``matbench.data_ops.score_array``: MAPE ignores targets with ``|y| <= 1e-5``.
Load with ``evaluate.load("<path>/matbench_regression")``; self-contained (numpy only).
"""

from __future__ import annotations

import datasets
import numpy as np

import evaluate

_DESCRIPTION = "MatBench v0.1 regression metrics: mae, rmse, mape (|y|>1e-5 only) and max_error."
_KWARGS = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
Returns:
    dict with mae, rmse, mape, max_error (floats).
"""
_CITATION = "Dunn et al., npj Comput. Mater. 6, 138 (2020). https://matbench.materialsproject.org"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class MatbenchRegression(evaluate.Metric):
    """MAE, RMSE, MAPE and max error of one set of predictions."""

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
        if not np.all(np.isfinite(p)):
            raise ValueError(f"{int((~np.isfinite(p)).sum())} predictions are NaN or infinite")
        err = p - y
        keep = np.abs(y) > 1e-5
        mape = float(np.mean(np.abs(err[keep] / y[keep]))) if keep.any() else float("nan")
        return {
            "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "mape": mape,
            "max_error": float(np.max(np.abs(err))),
        }
