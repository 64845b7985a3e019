"""Which scalar of a CrossMat property model is explained. Loading (full or LoRA folders) is
:func:`modeling.model_folder.load_property_model`, re-exported here."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossmat.modeling.model_folder import NotAPropertyModelError, load_property_model, output_info, scores_from_logits

__all__ = ["ModelOutputSpec", "NotAPropertyModelError", "check_property_model", "load_property_model", "select_output"]


def check_property_model(model: torch.nn.Module) -> None:
    """Raise :class:`NotAPropertyModelError` unless ``model`` is a ``CrossMatForPropertyPrediction``."""
    from crossmat.modeling import CrossMatForPropertyPrediction

    if not isinstance(model, CrossMatForPropertyPrediction):
        raise NotAPropertyModelError(
            f"{type(model).__name__} has no property head: explanations need a CrossMatForPropertyPrediction "
            "(fine-tune the encoder on a property first)"
        )


@dataclass
class ModelOutputSpec:
    """Which scalar is explained and in what unit.

    ``output``: ``"auto"`` (regression value, or the probability of ``target`` for classifiers),
    ``"value"``, ``"probability"`` or ``"logit"``; ``target``: which regression target or class, by index or by name
    (``"metal"``, ``"band_gap"``; default: class 1 of a binary classifier, else the first).
    """

    output: str = "auto"
    target: int | str | None = None

    def resolve(self, model) -> tuple[str, int, str, str]:
        """``(kind, index, name, unit)`` for ``model``; raises on an impossible choice."""
        check_property_model(model)
        info = output_info(model.config)
        problem = info["problem_type"]
        kind = self.output
        if kind not in ("auto", "value", "probability", "logit"):
            raise ValueError(f"output must be auto/value/probability/logit, got {kind!r}")
        if kind == "auto":
            kind = "value" if problem == "regression" else "probability"
        if kind == "value" and problem != "regression":
            raise ValueError(f"output 'value' needs a regression model, this one is {problem}")
        if kind != "value" and problem == "regression":
            raise ValueError(f"output {kind!r} needs a classifier, this model is a regression model")
        n = info["num_labels"]
        index = self._index(info) if self.target is not None else (
            1 if problem == "single_label_classification" and n == 2 else 0)
        if not 0 <= index < n:
            raise ValueError(f"target index {index} out of range for {n} label(s)")
        if problem == "regression":
            name, unit = info["names"][index], info["units"][index]
        else:
            label = info["labels"][index]
            name = f"P({label})" if kind == "probability" else f"logit({label})"
            unit = "probability" if kind == "probability" else "logit"
        return kind, index, name, unit

    def _index(self, info: dict) -> int:
        """``target`` as an index: a number, or a class / target name of the model."""
        target = self.target
        if isinstance(target, int) or str(target).strip().lstrip("-").isdigit():
            return int(target)  # type: ignore[arg-type]
        names = [str(v) for v in (info["names"] if info["problem_type"] == "regression" else info["labels"])]
        if str(target) not in names:
            what = "targets" if info["problem_type"] == "regression" else "classes"
            raise ValueError(f"target {target!r} is not one of the model's {what}: {', '.join(map(repr, names))}")
        return names.index(str(target))


def select_output(logits: torch.Tensor, kind: str, index: int, problem: str | None) -> torch.Tensor:
    """The explained scalar ``(batch,)`` from model logits."""
    if kind == "value" or kind == "logit":
        return logits[:, index]
    return scores_from_logits(logits, problem or "single_label_classification")[:, index]
