"""``composition-property-prediction``: formulas in, property (name, value, unit) or label out.

Travels as Hub remote code next to ``modeling_crossmat.py`` (saved into a model folder's
``custom_pipelines``), so it imports only ``torch``, ``transformers`` and ``.configuration_crossmat``. Formulas are validated by the
tokenizer's ``prepare_formula``, which implements the one CrossMat formula grammar: the package's
``CrossMatTokenizerFast`` when ``crossmat`` is installed, otherwise the remote-code
``CrossMatBaseTokenizerFast`` that the model folder carries (``tokenization_crossmat_base.py`` and
``formula_grammar.py``, loaded with ``trust_remote_code=True``). A tokenizer without ``prepare_formula``
(a plain ``PreTrainedTokenizerFast``) is refused: it would read malformed formulas silently.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Pipeline

from .configuration_crossmat import output_info, prediction_intervals

__all__ = ["DEFAULT_MAX_CHARS", "TASK", "CompositionPropertyPipeline", "label_indices", "scores_from_logits"]

TASK = "composition-property-prediction"
DEFAULT_MAX_CHARS = 512


def scores_from_logits(logits: torch.Tensor, problem_type: str) -> torch.Tensor:
    """Model logits -> reported scores (float32; float64 logits stay float64): values for regression (already in
    physical units), softmax probabilities for single-label and sigmoid probabilities for multi-label
    classification. The one place logits become scores (pipeline, predictor, training metrics, explanations)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if problem_type == "regression":
        return logits
    if problem_type == "multi_label_classification":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


def label_indices(scores: torch.Tensor, threshold: float | None = None, weights: list[float] | None = None
                  ) -> torch.Tensor:
    """Predicted class per row from single-label probabilities: class 1 when P(class 1) reaches ``threshold``
    (a binary model's ``config.decision_threshold``, chosen on held-out rows); with three classes or more the class
    of the largest ``probability x weight`` (``config.class_decision_weights``, chosen on held-out rows); else the
    most probable class."""
    if threshold is not None and scores.shape[-1] == 2:
        return (scores[..., 1] >= threshold).long()
    if weights is not None and scores.shape[-1] == len(weights) > 2:
        return (scores * scores.new_tensor(weights)).argmax(-1)
    return scores.argmax(-1)


class CompositionPropertyPipeline(Pipeline):
    """Predict a materials property from chemical formulas.

    ``pipe("Fe2O3")`` returns one dict, ``pipe([...], batch_size=256)`` a list of dicts in input order:

    * regression: ``{"formula", "property", "value", "unit"}`` (lists for multi-target models), value in
      physical units, plus ``"std"`` (same shape as ``value``) when the model carries a calibrated uncertainty,
      and ``"interval_68"`` / ``"interval_95"`` (``[low, high]``, one pair per target) when it carries the
      held-out rows' prediction intervals (``config.uncertainty_interval_multipliers``);
    * classification: ``{"formula", "label", "probability", "probabilities"}``.

    Invalid formulas raise ``ValueError`` naming every bad row and its reason (``on_error="raise"``), or
    come back as ``{"formula", "error"}`` while the others are predicted (``on_error="return"``).
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, on_error: str | None = None, max_chars: int | None = None, **kwargs: Any):
        pre: dict[str, Any] = {}
        post: dict[str, Any] = {}
        if on_error is not None:
            if on_error not in ("raise", "return"):
                raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
            post["on_error"] = on_error
        if max_chars is not None:
            pre["max_chars"] = int(max_chars)
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)} for {TASK}")
        return pre, {}, post

    # -- validation ------------------------------------------------------------------------------
    def _prepare(self, formula: object, max_chars: int) -> tuple[str | None, str]:
        """``(text for the tokenizer, "")`` or ``(None, reason)``."""
        prepare = getattr(self.tokenizer, "prepare_formula", None)
        if prepare is None:
            raise TypeError(
                f"the tokenizer {type(self.tokenizer).__name__} does not validate formulas; load the model folder "
                "with trust_remote_code=True (its tokenizer carries the formula grammar) or install crossmat"
            )
        if isinstance(formula, str) and len(formula.strip()) > max_chars:
            return None, f"{len(formula.strip())} characters long; the limit is {max_chars}"
        try:
            return prepare(formula), ""
        except ValueError as err:
            return None, str(getattr(err, "reason", err))

    def preprocess(self, inputs: list[object], max_chars: int = DEFAULT_MAX_CHARS) -> dict[str, Any]:
        """Validate and tokenise one batch: model inputs, kept row positions and per-row errors."""
        texts: list[str] = []
        keep: list[int] = []
        errors: dict[int, str] = {}
        for i, formula in enumerate(inputs):
            text, reason = self._prepare(formula, max_chars)
            if text is None:
                errors[i] = reason
            else:
                texts.append(text)
                keep.append(i)
        encoded = None
        if texts:
            tok = self.tokenizer
            validate = getattr(tok, "validate_formulas", None)
            if validate is not None:
                tok.validate_formulas = False  # already validated above
            try:
                encoded = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
            finally:
                if validate is not None:
                    tok.validate_formulas = validate
            ids = encoded["input_ids"]
            limit = min(getattr(tok, "model_max_length", 256) or 256, 10**6)
            lengths = encoded["attention_mask"].sum(1)
            bad = (ids == tok.unk_token_id).any(1) | (lengths > limit)
            if bool(bad.any()):
                for j in torch.nonzero(bad).flatten().tolist():
                    errors[keep[j]] = (
                        f"{int(lengths[j])} tokens; the model reads at most {limit}"
                        if int(lengths[j]) > limit
                        else "contains symbols the tokenizer does not know"
                    )
                good = torch.nonzero(~bad).flatten()
                keep = [keep[j] for j in good.tolist()]
                encoded = {k: v[good] for k, v in encoded.items()} if keep else None
        model_inputs = None if encoded is None else {k: encoded[k] for k in ("input_ids", "attention_mask")}
        return {"model_inputs": model_inputs, "keep": keep, "errors": errors, "inputs": list(inputs)}

    def _forward(self, model_inputs: dict[str, torch.Tensor]):
        out = self.model(**model_inputs)
        return {"logits": out.logits, "uncertainty": getattr(out, "uncertainty", None)}

    # -- output ----------------------------------------------------------------------------------
    def _describe(self) -> tuple[str, list[str], list[str], dict[int, str]]:
        info = output_info(self.model.config)
        return info["problem_type"], info["names"], info["units"], dict(enumerate(info["labels"]))

    def postprocess(self, logits: torch.Tensor | None, batch: dict[str, Any], uncertainty: torch.Tensor | None = None,
                    **_: Any) -> list[dict[str, Any]]:
        problem, names, units, labels = self._describe()
        out: list[dict[str, Any]] = [{"formula": f} for f in batch["inputs"]]
        for i, reason in batch["errors"].items():
            out[i]["error"] = reason
        if logits is None:
            return out
        scores = scores_from_logits(logits, problem)
        if problem == "regression":
            values = scores.tolist()
            std = None if uncertainty is None else uncertainty.float().reshape(scores.shape)
            stds = None if std is None else std.tolist()
            bounds = {name: torch.stack(pair, -1).tolist()
                      for name, pair in prediction_intervals(self.model.config, scores.float(), std).items()}
            for i, (row, vals) in enumerate(zip(batch["keep"], values, strict=True)):
                one = len(vals) == 1
                out[row].update(property=names[0] if one else names, value=vals[0] if one else vals,
                                unit=units[0] if one else units)
                if stds is not None:
                    out[row]["std"] = stds[i][0] if one else stds[i]
                for name, pairs in bounds.items():
                    out[row][name] = pairs[i][0] if one else pairs[i]
        elif problem == "multi_label_classification":
            for row, p in zip(batch["keep"], scores.tolist(), strict=True):
                named = {labels.get(k, f"LABEL_{k}"): v for k, v in enumerate(p)}
                out[row].update(labels=[k for k, v in named.items() if v >= 0.5], probabilities=named)
        else:
            config = self.model.config
            best = label_indices(scores, getattr(config, "decision_threshold", None),
                                 getattr(config, "class_decision_weights", None)).tolist()
            for row, p, b in zip(batch["keep"], scores.tolist(), best, strict=True):
                out[row].update(
                    label=labels.get(b, f"LABEL_{b}"),
                    probability=p[b],
                    probabilities={labels.get(k, f"LABEL_{k}"): v for k, v in enumerate(p)},
                )
        return out

    def __call__(self, inputs: object, batch_size: int | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """Predict for one formula (returns a dict) or a list/tuple of formulas (returns a list)."""
        single = isinstance(inputs, str)
        if single:
            items: list[object] = [inputs]
        elif isinstance(inputs, (list, tuple)):
            items = list(inputs)
            if not items:
                raise ValueError("empty input: pass a formula string or a non-empty list of formulas")
        else:
            raise TypeError(f"expected a formula string or a list of formula strings, got {type(inputs).__name__}")
        pre, _, post = self._sanitize_parameters(**kwargs)
        pre = {**self._preprocess_params, **pre}
        on_error = {**self._postprocess_params, **post}.get("on_error", "raise")
        size = int(batch_size or self._batch_size or 256)
        if size < 1:
            raise ValueError(f"batch_size must be positive, got {size}")
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), size):
            batch = self.preprocess(items[start : start + size], **pre)
            if on_error == "raise" and batch["errors"]:
                lines = [f"row {start + i}: {items[start + i]!r:.80}: {r}" for i, r in sorted(batch["errors"].items())]
                raise ValueError(
                    "invalid formula(s) (pass on_error='return' to predict the rest):\n" + "\n".join(lines)
                )
            logits = uncertainty = None
            if batch["model_inputs"] is not None:
                outputs = self.forward(batch["model_inputs"])
                logits, uncertainty = outputs["logits"], outputs.get("uncertainty")
            results.extend(self.postprocess(logits, batch, uncertainty=uncertainty))
        return results[0] if single else results
