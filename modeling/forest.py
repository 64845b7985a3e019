"""Blending a random forest into a trained property model (not Hub remote code; the model only applies it).

A scikit-learn forest is fitted on the composition statistics that the model computes itself
(:meth:`CrossMatForPropertyPrediction.forest_features` of a per-element property table, e.g. Magpie's) for the
training and validation rows, converted to :class:`TreeEnsemble` tensors (saved with the weights, no pickle) and
blended as ``w * CrossMat + (1 - w) * forest``. ``w`` is chosen on the validation rows, which the model never
trained on, against the forest's out-of-bag predictions for them (every validation row has trees that never saw
it): the grid 0, 0.1, ..., 1 by MAE over standardised targets (classification: log loss), ties to the larger
``w``. Method and adoption rule: benchmarks/matbench/SECTION.md ("Blending with the Magpie forest").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crossmat._extras import needs_extra

from .element_features import element_feature_table
from .modeling_crossmat import TreeEnsemble

__all__ = ["WEIGHT_GRID", "fit_forest_blend", "tree_ensemble_from_sklearn"]

WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # CrossMat's share of the blend


def tree_ensemble_from_sklearn(forest: Any, num_classes: int | None = None) -> TreeEnsemble:
    """A :class:`TreeEnsemble` that reproduces ``forest.predict`` (regressor) or ``forest.predict_proba``
    (classifier) of a fitted ``RandomForest*`` / ``ExtraTrees*``; ``num_classes``: a classifier's outputs are the
    classes ``0 .. num_classes - 1``, a class the forest never saw with probability 0."""
    trees = [est.tree_ for est in forest.estimators_]
    sizes = np.array([t.node_count for t in trees])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    classifier = hasattr(forest, "classes_")
    feature, threshold, left, right, value = [], [], [], [], []
    for t, off in zip(trees, offsets, strict=True):
        leaf = t.children_left < 0
        own = np.arange(t.node_count) + off
        feature.append(np.where(leaf, -1, t.feature))
        threshold.append(np.where(leaf, 0.0, t.threshold))
        left.append(np.where(leaf, own, t.children_left + off))
        right.append(np.where(leaf, own, t.children_right + off))
        v = t.value[:, 0, :] if classifier else t.value[:, :, 0]  # (nodes, classes) / (nodes, outputs)
        if classifier:
            v = v / v.sum(1, keepdims=True)
            if num_classes is not None:
                full = np.zeros((len(v), num_classes))
                full[:, forest.classes_.astype(int)] = v
                v = full
        value.append(v)
    out = np.concatenate(value)
    ensemble = TreeEnsemble(int(sizes.sum()), len(trees), out.shape[1], max(t.max_depth for t in trees))
    with torch.no_grad():
        ensemble.feature.copy_(torch.as_tensor(np.concatenate(feature)))
        ensemble.threshold.copy_(torch.as_tensor(np.concatenate(threshold)))
        ensemble.left.copy_(torch.as_tensor(np.concatenate(left)))
        ensemble.right.copy_(torch.as_tensor(np.concatenate(right)))
        ensemble.value.copy_(torch.as_tensor(out, dtype=torch.float32))
        ensemble.roots.copy_(torch.as_tensor(offsets))
    return ensemble


@torch.inference_mode()
def _batched(fn: Any, input_ids: torch.Tensor, *extra: torch.Tensor | None, batch_size: int = 1024) -> torch.Tensor:
    return torch.cat([fn(input_ids[i : i + batch_size], *[None if e is None else e[i : i + batch_size] for e in extra])
                      for i in range(0, len(input_ids), batch_size)])


def _validation_loss(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     forest_output: torch.Tensor, weight: float) -> float:
    """The blend's loss on the validation rows at CrossMat share ``weight``: mean |error| / target std over the
    targets (regression) or the log loss (classification)."""
    model.config.forest_weight = float(weight)
    logits = _batched(lambda ids, mask, f: model(input_ids=ids, attention_mask=mask, forest_output=f).logits.float(),
                      input_ids, attention_mask, forest_output)
    if model.config.problem_type == "regression":
        std = torch.as_tensor(model.config.target_std or [1.0] * logits.shape[-1], dtype=torch.float64)
        err = (logits.double().reshape(len(labels), -1) - labels.double().reshape(len(labels), -1)).abs()
        return float((err / std).mean())
    return float(F.cross_entropy(logits.double(), labels.long().view(-1)))


def fit_forest_blend(model: Any, train: dict[str, torch.Tensor], validation: dict[str, torch.Tensor], *,
                     source: str = "magpie", trees: int = 200, max_nodes: int = 1_000_000,
                     seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit a forest on the ``train`` + ``validation`` rows (``input_ids``, ``attention_mask``, ``labels`` tensors),
    choose CrossMat's share ``w`` on the validation rows and, for ``w < 1``, install the forest in ``model`` (a
    trained ``CrossMatForPropertyPrediction``, regression or single-label classification).

    ``max_nodes`` caps the stored forest (leaves per tree at most ``max_nodes / (2 * trees)``), so that its size
    grows with the data only up to a bound. Returns the forest's out-of-bag outputs for the validation rows (use
    them wherever those rows are scored: calibration, validation metrics) and what was chosen."""
    with needs_extra("train", "a forest blend (train.forest_blend)"):
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    problem = model.config.problem_type
    if problem not in ("regression", "single_label_classification"):
        raise ValueError(f"a forest blend supports regression and single-label classification, not {problem}")
    if len(validation["input_ids"]) < 2:
        raise ValueError("a forest blend needs validation rows to choose its weight (data.validation or "
                         "data.validation_fraction > 0)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    table = element_feature_table(source)[0]
    x = torch.cat([_batched(lambda b: model.forest_features(b, table), split["input_ids"].to(device))
                   for split in (train, validation)]).double().cpu().numpy()
    n_train = len(train["input_ids"])
    y = torch.cat([train["labels"], validation["labels"]]).cpu().numpy()
    common = {"n_estimators": int(trees), "max_leaf_nodes": max(2, int(max_nodes) // (2 * int(trees))),
              "oob_score": True, "random_state": int(seed), "n_jobs": 1}
    if problem == "regression":
        y = y.reshape(len(y), -1).astype(np.float64)
        forest = RandomForestRegressor(**common).fit(x, y[:, 0] if y.shape[1] == 1 else y)
        oob = np.asarray(forest.oob_prediction_, dtype=np.float64).reshape(len(y), -1)
    else:
        y = y.reshape(-1).astype(int)
        if len(set(y.tolist())) < 2:
            raise ValueError(f"a forest blend of a classifier needs two classes or more among the training and "
                             f"validation labels, got {sorted(set(y.tolist()))}")
        forest = RandomForestClassifier(**common).fit(x, y)
        oob = np.zeros((len(y), model.num_labels))  # a class without rows: probability 0
        oob[:, forest.classes_.astype(int)] = forest.oob_decision_function_
    oob = oob[n_train:]
    if not np.isfinite(oob).all():
        raise ValueError("a validation row has no out-of-bag forest prediction (too few trees: train.forest_trees)")
    oob_t = torch.as_tensor(oob, dtype=torch.float32, device=device)
    vids, vmask = validation["input_ids"].to(device), validation["attention_mask"].to(device)
    losses = {w: _validation_loss(model, vids, vmask, validation["labels"], oob_t, w) for w in WEIGHT_GRID}
    best = max(WEIGHT_GRID, key=lambda w: (-round(losses[w], 12), w))  # lowest loss, ties to the larger w
    ensemble = tree_ensemble_from_sklearn(forest, None if problem == "regression" else model.num_labels)
    model.config.forest_weight = 1.0
    if best < 1.0:
        model.install_forest(ensemble, table, source, best)
    model.train(was_training)
    info = {"weight": best, "features": source, "trees": int(trees), "nodes": int(ensemble.value.shape[0]),
            "installed": best < 1.0, "validation_rows": len(oob),
            "validation_loss_crossmat": losses[1.0], "validation_loss_forest": losses[0.0],
            "validation_loss_blend": losses[best],
            "validation_loss_by_weight": {f"{w:.1f}": losses[w] for w in WEIGHT_GRID}}
    return oob_t, info
