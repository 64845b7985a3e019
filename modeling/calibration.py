"""Calibrating a trained property model on held-out rows (not Hub remote code; the model only applies it).

* Regression: a standard deviation per prediction. The held-out rows' pooled embeddings and residuals go into
  the weights; a new row's sigma is ``scale x`` the RMS residual of its ``k`` nearest held-out rows, shrunk
  towards the global RMS residual (``prior`` > 0 pseudo-rows, so a row whose neighbours all had zero error still
  gets a positive sigma). For an ensemble the members' spread joins the neighbours' RMS residual,
  ``sqrt(local**2 + w * spread**2)``, with ``w = 0`` (neighbours alone) among the choices. ``k``, ``prior``,
  ``w`` and ``scale`` are chosen on the held-out rows themselves, leave-one-out, so that the share of errors
  within 1 and 2 sigma is as close as possible to a Gaussian's 0.683 and 0.954. Errors are often heavier-tailed
  than a Gaussian, so no single sigma gets both right; the model also stores two prediction intervals, ``value ±
  m * sigma`` with ``m`` the held-out rows' conformal quantile of ``|residual| / sigma`` (leave-one-out sigma) at
  68.27% and 95.45% (split conformal, normalised by sigma; Lei et al. 2018): their coverage is the nominal one
  whatever the shape of the errors, as long as new rows are like the held-out rows.
* Binary classification: first a temperature that divides the class logits so that the held-out rows' log
  loss is lowest (temperature scaling, Guo et al. 2017: a long fine-tuning leaves the probabilities overconfident;
  the ranking does not change); then the decision threshold on P(class 1) that maximises balanced accuracy on the
  held-out rows (the leaderboard scores hard labels).

Held-out means the model never trained on the rows: the user's validation file, or a carve-out of training
rows (``data.validation_fraction``); see docs/evaluation.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .configuration_crossmat import INTERVAL_LEVELS, INTERVAL_TAGS
from .pipeline_crossmat import scores_from_logits

__all__ = ["COVERAGE_TARGETS", "MIN_ROWS", "TEMPERATURE_MIN_ROWS", "Calibration", "calibrate_property_model",
           "calibrate_temperature", "conformal_multipliers", "coverage", "coverage_metrics", "fit_temperature", "fit_threshold"]

COVERAGE_TARGETS = INTERVAL_LEVELS  # a Gaussian's share within 1 and 2 sigma
MIN_ROWS = 10  # held-out rows needed to calibrate a regression model's uncertainty
_K_GRID = (5, 10, 20, 40, 80)
_PRIOR_GRID = (0.25, 0.5, 1.0, 2.0)  # in units of k; > 0, so no row gets sigma 0 (zero local residuals)
_SPREAD_SHARES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # w * mean(spread**2) / mean(local**2): 0 = spread unused
_SCALES = np.exp(np.linspace(np.log(0.2), np.log(5.0), 241))
TEMPERATURE_MIN_ROWS = 20  # held-out rows (with both classes) needed to fit a classifier's temperature
_TEMPERATURES = np.exp(np.linspace(np.log(0.1), np.log(20.0), 241))
PRIOR_EXPONENTS = (0.0, 0.5, 1.0)  # alpha of a classifier of 3+ classes: label = argmax P(c) / frequency(c) ** alpha


@dataclass
class Calibration:
    """What calibration chose and how well it covers the held-out rows (leave-one-out)."""

    rows: int
    k: int | None = None
    prior: float | None = None
    scale: float | None = None
    spread_weight: float | None = None
    coverage_1sigma: float | None = None
    coverage_2sigma: float | None = None
    interval_multiplier_68: float | None = None  # the 68.27% prediction interval is value ± this x sigma
    interval_multiplier_95: float | None = None  # the 95.45% one
    decision_threshold: float | None = None
    prior_exponent: float | None = None
    balanced_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def coverage(errors: np.ndarray, sigma: np.ndarray) -> tuple[float, float]:
    """Share of ``|errors|`` within 1 and 2 ``sigma`` (flattened over rows and labels)."""
    err, sig = np.abs(np.asarray(errors, dtype=np.float64)).ravel(), np.asarray(sigma, dtype=np.float64).ravel()
    return float((err <= sig).mean()), float((err <= 2 * sig).mean())


def coverage_metrics(errors: np.ndarray, sigma: np.ndarray, multipliers: list[float] | None = None
                     ) -> dict[str, float]:
    """``coverage_1sigma`` / ``coverage_2sigma`` and, given a model's interval ``multipliers`` (``m68``, ``m95``),
    ``coverage_interval68`` / ``coverage_interval95``: the share of ``|errors|`` within ``m * sigma``."""
    c1, c2 = coverage(errors, sigma)
    out = {"coverage_1sigma": c1, "coverage_2sigma": c2}
    err, sig = np.abs(np.asarray(errors, dtype=np.float64)).ravel(), np.asarray(sigma, dtype=np.float64).ravel()
    for tag, m in zip(INTERVAL_TAGS, multipliers or (), strict=False):
        out[f"coverage_interval{tag}"] = float((err <= m * sig).mean())
    return out


def conformal_multipliers(ratios: np.ndarray, levels: tuple[float, ...] = COVERAGE_TARGETS) -> list[float]:
    """Split-conformal quantiles of ``ratios`` (``|residual| / sigma`` of held-out rows): for each level ``q``
    the ``ceil((n + 1) q)``-th smallest ratio, so that a new exchangeable row falls within ``m * sigma`` with
    probability at least ``q``; the largest ratio when ``n`` is too small for that rank (then the guarantee is
    a little short of ``q``). Non-decreasing in ``q`` and > 0."""
    r = np.sort(np.asarray(ratios, dtype=np.float64).ravel())
    if r.size == 0 or not np.isfinite(r).all():
        raise ValueError(f"need finite ratios, got {r.size} values")
    ranks = [min(int(np.ceil((r.size + 1) * q)), r.size) - 1 for q in levels]
    return [float(max(r[i], 1e-12)) for i in ranks]


def _best_scale(err: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """Scale minimising the squared distance of (1-sigma, 2-sigma) coverage to the Gaussian targets."""
    ratio = (err / np.maximum(base, 1e-12)).ravel()
    c1 = (ratio[None, :] <= _SCALES[:, None]).mean(1)
    c2 = (ratio[None, :] <= 2 * _SCALES[:, None]).mean(1)
    loss = (c1 - COVERAGE_TARGETS[0]) ** 2 + (c2 - COVERAGE_TARGETS[1]) ** 2
    i = int(np.argmin(loss))
    return float(_SCALES[i]), float(loss[i])


def _sigma_base(local2: np.ndarray, spread2: np.ndarray | None, weight: float) -> np.ndarray:
    """``sqrt(local**2 + weight * spread**2)``: the sigma before the scale (the model's forward does the same)."""
    return np.sqrt(local2 + weight * spread2) if weight and spread2 is not None else np.sqrt(local2)


def fit_threshold(prob: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(threshold, balanced accuracy)``: the cut on P(class 1) with the best balanced accuracy on these rows
    (ties: the one closest to 0.5); ``(0.5, nan)`` when the rows hold one class only."""
    prob, labels = np.asarray(prob, dtype=np.float64), np.asarray(labels).astype(int)
    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        return 0.5, float("nan")
    cuts = np.unique(np.concatenate([[0.5], (np.sort(prob)[1:] + np.sort(prob)[:-1]) / 2]))
    pred = prob[None, :] >= cuts[:, None]
    bal = 0.5 * (pred[:, pos].mean(1) + (~pred[:, neg]).mean(1))
    best = np.flatnonzero(bal >= bal.max() - 1e-12)
    i = best[np.argmin(np.abs(cuts[best] - 0.5))]
    return float(cuts[i]), float(bal[i])


def fit_prior_exponent(prob: np.ndarray, labels: np.ndarray, frequencies: np.ndarray
                       ) -> tuple[float, list[float] | None, float]:
    """``(alpha, class weights, balanced accuracy)`` of a classifier of three classes or more: the label is the class
    of the largest ``P(c) * frequency(c) ** -alpha`` (``frequencies``: the training rows' class frequencies), alpha
    from :data:`PRIOR_EXPONENTS` with the best balanced accuracy on these rows (ties: the smaller alpha; 1 is the
    Bayes rule for balanced accuracy when the probabilities are calibrated). Weights ``None`` for alpha 0 (the most
    probable class); ``(0, None, nan)`` when the rows hold one class only."""
    from sklearn.metrics import balanced_accuracy_score

    prob, labels = np.asarray(prob, dtype=np.float64), np.asarray(labels).astype(int).reshape(-1)
    if len(np.unique(labels)) < 2:
        return 0.0, None, float("nan")
    freq = np.clip(np.asarray(frequencies, dtype=np.float64), 1e-3, None)  # a class without training rows: 0.1%
    scores = {}
    for alpha in PRIOR_EXPONENTS:
        scores[alpha] = balanced_accuracy_score(labels, (prob * freq ** -alpha).argmax(1))
    alpha = min(PRIOR_EXPONENTS, key=lambda a: (-round(scores[a], 12), a))
    weights = None if alpha == 0 else (freq ** -alpha / (freq ** -alpha).max()).tolist()
    return float(alpha), weights, float(scores[alpha])


def _log_loss(member_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log of the true class's probability, the members' softmax probabilities averaged."""
    prob = scores_from_logits(member_logits / temperature, "single_label_classification").mean(0).clamp_min(1e-7)
    return float(-prob.gather(1, labels[:, None]).log().mean())


def fit_temperature(member_logits: np.ndarray | torch.Tensor, labels: np.ndarray) -> tuple[float, float, float]:
    """``(temperature, log loss at 1, log loss at the temperature)``: the temperature on a log grid from 0.1 to 20
    that minimises the log loss of ``softmax(logits / T)`` averaged over members (``member_logits``: ``(members,
    rows, classes)``) on these rows; ties go to the one closest to 1. Fewer than ``TEMPERATURE_MIN_ROWS`` rows or
    one class only: 1 (nothing to fit)."""
    logits = torch.as_tensor(np.asarray(member_logits), dtype=torch.float64)
    if logits.dim() == 2:
        logits = logits[None]
    y = torch.as_tensor(np.asarray(labels).reshape(-1).astype(np.int64))
    before = _log_loss(logits, y, 1.0)
    if len(y) < TEMPERATURE_MIN_ROWS or len(torch.unique(y)) < 2:
        return 1.0, before, before
    losses = np.array([_log_loss(logits, y, float(t)) for t in _TEMPERATURES])
    best = np.flatnonzero(losses <= losses.min() + 1e-12)
    i = best[np.argmin(np.abs(np.log(_TEMPERATURES[best])))]
    return float(_TEMPERATURES[i]), before, float(losses[i])


@torch.inference_mode()
def calibrate_temperature(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: np.ndarray,
                          batch_size: int = 1024) -> dict[str, float]:
    """Set a single-label classifier's ``config.probability_temperature`` (in place) from held-out rows; returns
    the temperature and the rows' log loss before and after. Regression models are left alone (``{}``)."""
    if model.config.problem_type != "single_label_classification":
        return {}
    was_training = model.training
    model.eval()
    try:
        chunks = [model(input_ids=input_ids[s : s + batch_size], attention_mask=attention_mask[s : s + batch_size],
                        ).member_logits.double() for s in range(0, len(input_ids), batch_size)]
    finally:
        model.train(was_training)
    temperature, before, after = fit_temperature(torch.cat(chunks, 1), labels)
    model.config.probability_temperature = temperature
    return {"temperature": temperature, "log_loss_before_temperature": before, "log_loss_after_temperature": after}


@torch.inference_mode()
def _pooled_and_outputs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        forest_output: torch.Tensor | None = None, batch_size: int = 1024,
                        same_composition_target: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pooled embeddings of the first member, the model outputs (physical units / class logits) and, for a
    regression ensemble, the members' spread (population std, physical units; ``None`` for one member)."""
    pooled, logits, spread = [], [], []
    for start in range(0, len(input_ids), batch_size):
        ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
        forest = None if forest_output is None else forest_output[start : start + batch_size]
        same = None if same_composition_target is None else same_composition_target[start : start + batch_size]
        out = model(input_ids=ids, attention_mask=mask, forest_output=forest, same_composition_target=same)
        pooled.append(out.pooler_output.float())
        logits.append(out.logits.float())
        if out.member_spread is not None:
            spread.append(out.member_spread.double())
    return torch.cat(pooled), torch.cat(logits), (torch.cat(spread) if spread else None)


def calibrate_property_model(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             targets: np.ndarray, forest_output: torch.Tensor | None = None,
                             same_composition_target: torch.Tensor | None = None,
                             class_frequencies: np.ndarray | None = None) -> Calibration:
    """Calibrate ``model`` (a ``CrossMatForPropertyPrediction``, eval mode) in place on held-out rows: the
    uncertainty of a regression model, the decision threshold of a binary classifier, the class decision weights of
    a classifier of three classes or more (:func:`fit_prior_exponent`; ``class_frequencies``: the training rows'
    class frequencies, without them the most probable class stays). Returns the choice and
    its leave-one-out coverage on these rows. ``forest_output``: a blended forest's out-of-bag outputs for these
    rows (``modeling.forest``), used instead of the installed forest's, which trained on them;
    ``same_composition_target``: their leave-one-out same-composition targets (``modeling.same_composition``)."""
    was_training = model.training
    model.eval()
    try:
        pooled, out, spread = _pooled_and_outputs(model, input_ids, attention_mask, forest_output,
                                                  same_composition_target=same_composition_target)
    finally:
        model.train(was_training)
    targets = np.asarray(targets, dtype=np.float64)
    n = len(targets)
    if model.config.problem_type != "regression":
        if out.shape[-1] != 2:
            if class_frequencies is None or out.shape[-1] != len(class_frequencies):
                return Calibration(rows=n)
            probs = scores_from_logits(out.double(), "single_label_classification").numpy()
            alpha, weights, bal = fit_prior_exponent(probs, targets, class_frequencies)
            model.config.class_decision_weights = weights
            return Calibration(rows=n, prior_exponent=alpha, balanced_accuracy=bal)
        prob = scores_from_logits(out.double(), "single_label_classification")[:, 1].numpy()
        threshold, bal = fit_threshold(prob, targets.reshape(-1))
        model.config.decision_threshold = threshold
        return Calibration(rows=n, decision_threshold=threshold, balanced_accuracy=bal)
    if n < MIN_ROWS:  # too few to estimate a spread: the model stays without a standard deviation
        return Calibration(rows=n)
    residuals = torch.as_tensor(targets.reshape(n, -1)) - out.double().reshape(n, -1)
    err = residuals.abs().numpy()
    spread2 = None if spread is None else spread.numpy().reshape(n, -1) ** 2
    shares = _SPREAD_SHARES if spread2 is not None and spread2.mean() > 0 else (0.0,)
    best: tuple[float, int, float, float, float] | None = None
    for k in [k for k in _K_GRID if k < n] or [n - 1]:
        for prior_units in _PRIOR_GRID:
            model.install_uncertainty(pooled, residuals, k, prior_units * k, 1.0)
            local2 = model.local_residual_scale(pooled, exclude_self=True).numpy() ** 2
            for share in shares:  # the spread's weight, as its share of the neighbours' mean variance
                weight = 0.0 if share == 0 else share * float(local2.mean() / spread2.mean())  # type: ignore[union-attr]
                scale, loss = _best_scale(err, _sigma_base(local2, spread2, weight))
                if best is None or loss < best[0] - 1e-9:
                    best = (loss, k, prior_units * k, scale, weight)
    _, k, prior, scale, weight = best  # type: ignore[misc]
    model.install_uncertainty(pooled, residuals, k, prior, scale, weight)
    local2 = model.local_residual_scale(pooled, exclude_self=True).numpy() ** 2
    sigma = scale * _sigma_base(local2, spread2, weight)
    c1, c2 = coverage(err, sigma)
    multipliers = conformal_multipliers(err / np.maximum(sigma, 1e-12))
    model.config.uncertainty_interval_multipliers = multipliers
    return Calibration(rows=n, k=k, prior=prior, scale=scale, spread_weight=weight if spread2 is not None else None,
                       coverage_1sigma=c1, coverage_2sigma=c2, interval_multiplier_68=multipliers[0],
                       interval_multiplier_95=multipliers[1])
