"""MatBench v0.1 binary classification scores as a Hugging Face ``evaluate`` module.

``rocauc`` is computed from the predicted probabilities; ``accuracy``, ``balanced_accuracy`` and
``f1`` from labels thresholded at 0.5 (``matbench.constants.CLF_THRESH``), as ``matbench`` does.
Load with ``evaluate.load("<path>/matbench_classification")``; self-contained (numpy + scikit-learn).
"""

from __future__ import annotations

import warnings

import datasets
import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

import evaluate

_DESCRIPTION = "MatBench v0.1 classification metrics: rocauc (probabilities), accuracy, balanced_accuracy, f1."
_KWARGS = """
Args:
    predictions (list of float): predicted probability of the positive class, in [0, 1].
    references (list of int): true labels (0/1).
Returns:
    dict with accuracy, balanced_accuracy, f1, rocauc (floats).
"""
_CITATION = "Dunn et al., npj Comput. Mater. 6, 138 (2020). https://matbench.materialsproject.org"
THRESHOLD = 0.5


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class MatbenchClassification(evaluate.Metric):
    """ROC-AUC from probabilities plus label metrics at the 0.5 threshold."""

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
        if not np.isin(y, (0, 1)).all():
            raise ValueError("classification references must be 0/1 labels")
        labels = (p > THRESHOLD).astype(np.int64)
        both = len(np.unique(y)) == 2
        with warnings.catch_warnings():
            # one class in the references: ROC-AUC is nan and balanced accuracy is that class's recall (the caller
            # says so once); scikit-learn's per-call notes about the missing class would repeat it for every score
            if not both:
                warnings.simplefilter("ignore", UserWarning)
            return {
                "accuracy": float(accuracy_score(y, labels)),
                "balanced_accuracy": float(balanced_accuracy_score(y, labels)),
                "f1": float(f1_score(y, labels, zero_division=0.0)),
                "rocauc": float(roc_auc_score(y, p)) if both else float("nan"),
            }
