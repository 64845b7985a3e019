"""Which hard label should a classifier of several classes give, when its headline score is balanced accuracy?

Reads a finished `crossmat evaluate` run of the crystal-system task (run.sh; or ../gap_class/run.sh) and predicts the validation rows with its
CrossMat model without its blended forest (the forest trained on the validation rows, so the blend's outputs there are
in-sample; CrossMat alone never trained on them), then scores three decision rules on those validation rows and on the
test rows (with and without the forest): the most probable class
(alpha 0), and the most probable class after dividing every class's probability by its training frequency to the
power alpha (0.5, 1; alpha 1 is the Bayes rule for balanced accuracy when the probabilities are calibrated). The
validation rows are the ones a rule would be chosen on; the test rows are reported, never used to choose. Paired
bootstrap (1,000 resamples of the rows) gives the standard error of each difference against alpha 0.
Usage: python decision_rule.py RUN_DIR DATA_DIR [VARIANT]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from crossmat.inference.engine import FormulaPredictor

ALPHAS = (0.0, 0.5, 1.0)


def scores(prob: np.ndarray, y: np.ndarray, prior: np.ndarray, alpha: float) -> tuple[float, float]:
    label = (np.log(np.clip(prob, 1e-12, None)) - alpha * np.log(prior)).argmax(1)
    return balanced_accuracy_score(y, label), accuracy_score(y, label)


def main() -> None:
    run, data = Path(sys.argv[1]), Path(sys.argv[2])
    variant = sys.argv[3] if len(sys.argv) > 3 else "crossmat"
    summary = json.loads((run / "summary.json").read_text())
    names = summary["class_labels"]
    target = summary["task"]  # the target column (crystal_system, gap_class)
    index = {n: i for i, n in enumerate(names)}
    train = pd.read_csv(data / "train.csv")
    prior = np.bincount(train[target].map(index), minlength=len(names)) / len(train)
    predictor = FormulaPredictor(run / variant / "fold_0" / "model")
    predictor.model.config.forest_weight = 1.0  # CrossMat alone
    val = pd.read_csv(data / "val.csv")
    val_prob = predictor.predict(val["formula"].tolist()).values
    columns = [f"probability_{n}" for n in names]
    test = pd.read_csv(run / variant / "fold_0" / "predictions.csv")
    alone = run / variant / "fold_0" / "predictions_without_forest.csv"
    test_alone = pd.read_csv(alone)[columns].to_numpy() if alone.is_file() else None
    rng = np.random.default_rng(0)
    out = {"variant": variant, "classes": names, "training_frequencies": prior.round(4).tolist(), "rules": {}}
    y_test = test["target"].to_numpy()
    splits = [("validation_without_forest", val_prob, val[target].map(index).to_numpy()),
              ("test", test[columns].to_numpy(), y_test)]
    if test_alone is not None:
        splits.append(("test_without_forest", test_alone, y_test))
    for split, prob, y in splits:
        boots = rng.integers(0, len(y), size=(1000, len(y)))
        base = [scores(prob[b], y[b], prior, 0.0)[0] for b in boots]
        for alpha in ALPHAS:
            bal, acc = scores(prob, y, prior, alpha)
            diff = np.array([scores(prob[b], y[b], prior, alpha)[0] for b in boots]) - base
            out["rules"].setdefault(f"alpha={alpha}", {})[split] = {
                "balanced_accuracy": round(bal, 4), "accuracy": round(acc, 4),
                "balanced_accuracy_minus_alpha0": round(float(diff.mean()), 4), "bootstrap_se": round(float(diff.std()), 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
