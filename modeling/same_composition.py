"""Same-composition correction of a trained property model (not Hub remote code; the model only applies it).

Many datasets hold one composition more than once: polymorphs, repeated measurements, the two site orders of a
perovskite. A model that reads only the formula gives all of them one answer; the labelled training rows of a
query's composition say something it does not. The correction answers a formula whose composition is among the
training rows with ``prediction + w * (their mean target - prediction)``. ``w`` is chosen in [-1, 1] (grid step
0.05) on the held-out validation rows whose composition occurs among the training rows (the model trained on those,
as it did on a test row's), against those training rows' mean: lowest MAE over standardised targets
(classification: log loss of the class fractions), ties to the ``w`` nearest 0; it is kept only if it lowers their
mean per-row loss by more than ``MIN_SE`` standard errors (the significance guard). Fewer than ``MIN_ROWS`` such rows
(e.g. a validation split grouped by formula): no correction. The stored compositions are then every labelled
training and validation row's. Method and adoption rule:
benchmarks/matbench/SECTION.md ("Same-composition correction").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .modeling_crossmat import composition_keys

__all__ = ["MIN_ROWS", "MIN_SE", "WEIGHT_GRID", "fit_same_composition", "significant_gain"]

WEIGHT_GRID = tuple(round(-1.0 + 0.05 * i, 2) for i in range(41))
MIN_ROWS = 20  # held-out rows with another row of their composition needed to choose the weight
MIN_SE = 2.0  # the chosen weight must lower those rows' mean loss by more than this many standard errors
_MULTIPLIER_SEED = 20261206


def key_multipliers(num_elements: int) -> torch.Tensor:
    """The per-element multipliers of :func:`composition_keys` (fixed seed; stored with the weights)."""
    gen = torch.Generator().manual_seed(_MULTIPLIER_SEED)
    return torch.randint(1, 2**38, (num_elements,), generator=gen, dtype=torch.long)


@torch.inference_mode()
def _keys(model: Any, input_ids: torch.Tensor, multipliers: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    return torch.cat([composition_keys(input_ids[i : i + batch_size], multipliers, model.config).cpu()
                      for i in range(0, len(input_ids), batch_size)])


def _target_rows(model: Any, labels: torch.Tensor) -> torch.Tensor:
    """Labels as the rows that are averaged: regression targets ``(n, labels)``, one-hot classes otherwise."""
    if model.config.problem_type == "regression":
        return labels.double().reshape(len(labels), -1)
    return F.one_hot(labels.long().view(-1), model.num_labels).double()


@torch.inference_mode()
def row_losses(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, forest: torch.Tensor | None,
               same: torch.Tensor, weight: float, batch_size: int = 1024) -> torch.Tensor:
    """Per-row loss of the model's output with the correction at ``weight`` (targets ``same``): mean |error| / target
    std over the targets (regression) or the negative log-likelihood of the true class."""
    model.config.same_composition_weight = float(weight)
    out = []
    for i in range(0, len(ids), batch_size):
        f = None if forest is None else forest[i : i + batch_size]
        out.append(model(input_ids=ids[i : i + batch_size], attention_mask=mask[i : i + batch_size], forest_output=f,
                         same_composition_target=same[i : i + batch_size]).logits.double().cpu())
    logits = torch.cat(out)
    if model.config.problem_type == "regression":
        std = torch.as_tensor(model.config.target_std or [1.0] * logits.shape[-1], dtype=torch.float64)
        err = (logits.reshape(len(labels), -1) - labels.double().reshape(len(labels), -1)).abs()
        return (err / std).mean(1)
    return F.cross_entropy(logits, labels.long().view(-1), reduction="none")


def significant_gain(with_weight: torch.Tensor, without: torch.Tensor, min_se: float) -> tuple[bool, float, float]:
    """``(kept, mean change, its standard error)`` of the per-row loss change: the weight is kept when the mean change
    is below ``-min_se`` standard errors (``min_se = 0``: whenever it is lower)."""
    d = (with_weight - without).double()
    se = float(d.std(unbiased=True) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    mean = float(d.mean())
    return mean < -min_se * se if min_se > 0 else mean < 0, mean, se


def fit_same_composition(model: Any, train: dict[str, torch.Tensor], validation: dict[str, torch.Tensor],
                         forest_output: torch.Tensor | None = None, min_se: float = MIN_SE
                         ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Choose the correction's weight on the ``validation`` rows and, for a weight other than 0, install the
    compositions of the ``train`` + ``validation`` rows in ``model`` (a trained ``CrossMatForPropertyPrediction``,
    regression or single-label classification; ``input_ids``, ``attention_mask``, ``labels`` tensors).
    ``forest_output``: a blended forest's out-of-bag outputs for the validation rows. ``min_se > 0``: the chosen
    weight is kept only if it lowers those rows' mean loss by more than ``min_se`` standard errors of the per-row
    change (otherwise no correction); 0 keeps any weight that lowers it.

    Returns the validation rows' targets of the correction (the mean of the training rows of their composition, NaN
    where there are none; pass them as ``same_composition_target`` wherever those rows are scored: calibration,
    validation metrics, so that no row sees its own target) and what was chosen."""
    problem = model.config.problem_type
    if problem not in ("regression", "single_label_classification"):
        raise ValueError(f"a same-composition correction supports regression and single-label classification, "
                         f"not {problem}")
    was_training = model.training
    model.eval()
    multipliers = key_multipliers(model.config.num_elements)
    n_train = len(train["input_ids"])
    keys = torch.cat([_keys(model, split["input_ids"], multipliers) for split in (train, validation)])
    values = _target_rows(model, torch.cat([train["labels"], validation["labels"]]))
    unique, inverse = torch.unique(keys, return_inverse=True)
    sums = torch.zeros(len(unique), values.shape[1], dtype=torch.float64).index_add_(0, inverse, values)
    counts = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, torch.ones(len(keys), dtype=torch.float64))
    train_sums = torch.zeros_like(sums).index_add_(0, inverse[:n_train], values[:n_train])
    train_counts = torch.zeros_like(counts).index_add_(0, inverse[:n_train], torch.ones(n_train, dtype=torch.float64))
    own = inverse[n_train:]
    matched = train_counts[own] > 0
    held = train_sums[own] / train_counts[own].clamp_min(1)[:, None]
    held[~matched] = float("nan")
    info: dict[str, Any] = {"weight": 0.0, "installed": False, "validation_rows": len(own),
                            "validation_rows_with_composition": int(matched.sum()),
                            "training_compositions": int(len(unique)),
                            "training_rows_sharing_a_composition": int((train_counts[inverse[:n_train]] > 1).sum())}
    model.config.same_composition_weight = 0.0
    device = next(model.parameters()).device
    if int(matched.sum()) >= MIN_ROWS:
        rows = torch.nonzero(matched).view(-1)
        ids, mask = validation["input_ids"][rows].to(device), validation["attention_mask"][rows].to(device)
        forest = None if forest_output is None else forest_output[rows.to(forest_output.device)].to(device)
        same = held[rows].float().to(device)
        per_row = {w: row_losses(model, ids, mask, validation["labels"][rows], forest, same, w) for w in WEIGHT_GRID}
        losses = {w: float(v.mean()) for w, v in per_row.items()}
        best = min(WEIGHT_GRID, key=lambda w: (round(losses[w], 12), abs(w)))
        kept, change, se = significant_gain(per_row[best], per_row[0.0], min_se)
        model.config.same_composition_weight = 0.0
        info.update(best_weight=best, loss_change=change, loss_change_se=se, min_se=float(min_se),
                    validation_loss_without=losses[0.0], validation_loss_with=losses[best],
                    validation_loss_by_weight={f"{w:.2f}": losses[w] for w in WEIGHT_GRID})
        best = best if kept else 0.0
        info.update(weight=best, installed=best != 0.0)
        if best != 0.0:
            model.install_same_composition(unique, sums / counts[:, None], multipliers, best)
    model.train(was_training)
    return held.float(), info

