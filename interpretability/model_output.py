"""Load a CrossMat property model and turn its logits into one scalar per formula (the explained value)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ModelOutputSpec", "NotAPropertyModelError", "check_property_model", "load_property_model", "select_output"]


class NotAPropertyModelError(ValueError):
    """The model has no property-prediction head (e.g. an MLM or imKT pretraining checkpoint)."""


def check_property_model(model: torch.nn.Module) -> None:
    """Raise :class:`NotAPropertyModelError` unless ``model`` is a ``CrossMatForPropertyPrediction``."""
    from modeling import CrossMatForPropertyPrediction

    if not isinstance(model, CrossMatForPropertyPrediction):
        raise NotAPropertyModelError(
            f"{type(model).__name__} has no property head: explanations need a CrossMatForPropertyPrediction "
            "(fine-tune the encoder on a property first)"
        )


def load_property_model(path: str | Path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from a saved folder; refuses checkpoints saved without a property head.

    ``AutoModelForSequenceClassification`` would silently attach a *random* head to an MLM checkpoint,
    so the saved ``architectures`` are checked first.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    import modeling  # noqa: F401  (registers the Auto classes)
    from tokenization import CrossMatTokenizerFast

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved model folder (no config.json)")
    config = AutoConfig.from_pretrained(path)
    archs = list(getattr(config, "architectures", None) or [])
    if "CrossMatForPropertyPrediction" not in archs:
        raise NotAPropertyModelError(
            f"{path} holds {archs or 'an unknown architecture'}, not a CrossMatForPropertyPrediction: "
            "it has no trained property head to explain"
        )
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).to(device).eval()
    tok_file = path / "tokenizer.json"
    tokenizer = CrossMatTokenizerFast.from_pretrained(path) if tok_file.is_file() else CrossMatTokenizerFast()
    return model, tokenizer


@dataclass
class ModelOutputSpec:
    """Which scalar is explained and in what unit.

    ``output``: ``"auto"`` (regression value, or the probability of ``target`` for classifiers),
    ``"value"``, ``"probability"`` or ``"logit"``; ``target``: label index (regression target column or class).
    """

    output: str = "auto"
    target: int | None = None

    def resolve(self, model) -> tuple[str, int, str, str]:
        """``(kind, index, name, unit)`` for ``model``; raises on an impossible choice."""
        check_property_model(model)
        cfg = model.config
        problem = cfg.problem_type or ("regression" if cfg.num_labels == 1 else "single_label_classification")
        kind = self.output
        if kind not in ("auto", "value", "probability", "logit"):
            raise ValueError(f"output must be auto/value/probability/logit, got {kind!r}")
        if kind == "auto":
            kind = "value" if problem == "regression" else "probability"
        if kind == "value" and problem != "regression":
            raise ValueError(f"output 'value' needs a regression model, this one is {problem}")
        if kind != "value" and problem == "regression":
            raise ValueError(f"output {kind!r} needs a classifier, this model is a regression model")
        n = cfg.num_labels
        index = self.target if self.target is not None else (1 if problem == "single_label_classification" and n == 2 else 0)
        if not 0 <= index < n:
            raise ValueError(f"target index {index} out of range for {n} label(s)")
        if problem == "regression":
            names, units = cfg.target_names or [], cfg.target_units or []
            name = names[index] if index < len(names) else f"target_{index}"
            unit = units[index] if index < len(units) else ""
        else:
            labels = getattr(cfg, "id2label", None) or {}
            label = labels.get(index, labels.get(str(index), f"class {index}"))
            name = f"P({label})" if kind == "probability" else f"logit({label})"
            unit = "probability" if kind == "probability" else "logit"
        return kind, index, name, unit


def select_output(logits: torch.Tensor, kind: str, index: int, problem: str | None) -> torch.Tensor:
    """The explained scalar ``(batch,)`` from model logits."""
    if kind == "value" or kind == "logit":
        return logits[:, index]
    if problem == "multi_label_classification":
        return torch.sigmoid(logits[:, index])
    return torch.softmax(logits, dim=-1)[:, index]
