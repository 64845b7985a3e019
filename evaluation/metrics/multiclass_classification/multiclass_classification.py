"""Classification scores for a target of three classes or more, as a Hugging Face ``evaluate`` module.

``rocauc`` is the macro average of one-vs-rest ROC-AUCs from the predicted class probabilities, over the classes
that occur among the references (and not in all of them); ``accuracy``, ``balanced_accuracy`` (the mean recall of
the classes that occur) and ``f1`` (macro) score the given ``labels`` (a model's decision rule), default the most
probable class. Load with
``evaluate.load("<path>/multiclass_classification")``; self-contained (numpy + scikit-learn).
"""

from __future__ import annotations

import warnings

import datasets
import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

import evaluate

_DESCRIPTION = ("Multi-class classification metrics: rocauc (macro one-vs-rest, probabilities), accuracy, "
                "balanced_accuracy, f1 (macro) of the most probable class.")
_KWARGS = """
Args:
    predictions (list of list of float): predicted probability of every class (rows sum to 1).
    references (list of int): true class indices (0 .. classes - 1).
    labels (list of int, optional): the predicted classes the label metrics score (a model's own decision rule);
        default the most probable class of each row.
Returns:
    dict with accuracy, balanced_accuracy, f1, rocauc (floats).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class MulticlassClassification(evaluate.Metric):
    """Macro one-vs-rest ROC-AUC from probabilities plus label metrics of the most probable class."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None) -> dict[str, float]:
        y = np.asarray(references, dtype=np.int64)
        p = np.asarray(predictions, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] < 2:
            raise ValueError("predictions must be one row of class probabilities per reference")
        if not np.all((p >= 0) & (p <= 1)):
            raise ValueError("classification predictions must be probabilities in [0, 1]")
        if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
            raise ValueError(f"references must be class indices 0..{p.shape[1] - 1}")
        labels = p.argmax(1) if labels is None else np.asarray(labels, dtype=np.int64).reshape(len(y))
        present = np.unique(y)
        aucs = [roc_auc_score(y == c, p[:, c]) for c in present.tolist()] if len(present) > 1 else []
        with warnings.catch_warnings():  # a predicted class that never occurs: recall is undefined, not a bug
            warnings.simplefilter("ignore", UserWarning)
            return {
                "accuracy": float(accuracy_score(y, labels)),
                "balanced_accuracy": float(balanced_accuracy_score(y, labels)),
                "f1": float(f1_score(y, labels, labels=present, average="macro", zero_division=0.0)),
                "rocauc": float(np.mean(aucs)) if aucs else float("nan"),
            }
