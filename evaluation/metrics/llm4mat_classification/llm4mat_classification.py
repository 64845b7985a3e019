"""LLM4Mat-Bench classification scores as a Hugging Face ``evaluate`` module.

Two numbers, deliberately kept apart:

* ``official_auc_rounded``: what the official LLM4Mat-Bench code reports as "AUC": ROC-AUC computed
  on predictions **rounded to 0/1** (``round(sigmoid(logit))``), which equals balanced accuracy at 0.5.
* ``roc_auc``: the true ROC-AUC computed from the predicted probabilities.

Load with ``evaluate.load("<path>/llm4mat_classification")``; self-contained (numpy + scikit-learn).
"""

from __future__ import annotations

import datasets
import numpy as np
from sklearn.metrics import roc_auc_score

import evaluate

_DESCRIPTION = "LLM4Mat-Bench classification: official AUC on rounded predictions and true probability ROC-AUC."
_KWARGS = """
Args:
    predictions (list of float): predicted probability of the positive class, in [0, 1].
    references (list of int): true labels (0/1).
Returns:
    dict with official_auc_rounded, roc_auc (floats).
"""
_CITATION = "Rubungo et al., LLM4Mat-Bench, Mach. Learn.: Sci. Technol. 6 (2025); arXiv:2411.00177"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Llm4matClassification(evaluate.Metric):
    """Official rounded-prediction "AUC" next to the true ROC-AUC."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        y = np.asarray(references, dtype=np.int64)
        p = np.asarray(predictions, dtype=np.float64)
        if not np.all((p >= 0) & (p <= 1)):
            raise ValueError("classification predictions must be probabilities in [0, 1]")
        if len(np.unique(y)) < 2:
            nan = float("nan")
            return {"official_auc_rounded": nan, "roc_auc": nan}
        # torch.round rounds half to even, so 0.5 -> 0 as in the official code
        rounded = np.round(p)
        return {
            "official_auc_rounded": float(roc_auc_score(y, rounded)),
            "roc_auc": float(roc_auc_score(y, p)),
        }
