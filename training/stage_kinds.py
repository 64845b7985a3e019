"""The stage types: one small class per ``stage:`` of a recipe, owning everything that differs between
stages (the model class, the config it adds, the tensors the data loader builds, the batch inputs,
metrics, the card kind, and which files its folder gets). :data:`STAGE_TYPES` maps the YAML name to
the class; adding a stage means adding one class here with :func:`register_stage`.

The shared machinery (:mod:`training.recipe`, :mod:`training.data`, :mod:`training.loop`,
:mod:`training.stages`) calls these hooks instead of comparing stage names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from crossmat.modeling import CrossMatForMaskedLM, CrossMatForPropertyPrediction, CrossMatForStructureAlignment
from crossmat.modeling.model_folder import scores_from_logits

from .collator import MaskedElementCollator
from .data import DataError, TensorSplit, _Rejects, _resolve_duplicates, _standardize_embeddings, _targets
from .recipe import DataSection, RecipeError, StageRecipe, TrainSection

if TYPE_CHECKING:
    from .data import StageData

__all__ = ["STAGE_TYPES", "CIFLMStage", "FinetuneStage", "ImktStage", "MLMStage", "SplitTensors", "Stage", "register_stage", "stage_kind"]

STAGE_TYPES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make ``cls`` the stage for ``stage: <cls.name>`` in recipes."""
    STAGE_TYPES[cls.name] = cls
    return cls


def stage_kind(name: str | None) -> Stage:
    """The stage object for a recipe's ``stage:`` name."""
    if name not in STAGE_TYPES:
        raise RecipeError(f"recipe key 'stage' is {name!r}; choose one of {list(STAGE_TYPES)}")
    return STAGE_TYPES[name]()


class SplitTensors:
    """What a stage adds to one split: tensors, row weights, float64 targets, the (inferred) task."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None, weights: torch.Tensor | None = None,
                 targets: np.ndarray | None = None, task: str = "auto") -> None:
        self.tensors = tensors or {}
        self.weights = weights
        self.targets = targets
        self.task = task


class Stage:
    """Base stage: hooks with the defaults of a pretraining stage (no targets, no test predictions)."""

    name: ClassVar[str]
    model_class: ClassVar[type[torch.nn.Module]]
    card_kind: ClassVar[str]  # model_cards kind of the stage folder
    property_model: ClassVar[bool] = False  # trains a property head (what evaluation and users predict with)
    supports_lora: ClassVar[bool] = False
    supports_explain: ClassVar[bool] = False  # card.explain (an interpretability section)
    writes_test_predictions: ClassVar[bool] = False  # test_predictions.csv
    writes_pipeline_files: ClassVar[bool] = False  # the Hub pipeline code + widget labels
    ignore_mismatched_sizes: ClassVar[bool] = False  # init_from with a new head
    own_loop: ClassVar[bool] = False  # the stage trains itself (:meth:`run`), not through the formula loop

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ----------------------------------------------------------------- recipe
    def validate(self, recipe: StageRecipe) -> None:
        """Stage-specific recipe checks (raise :class:`RecipeError` naming the key)."""

    # ----------------------------------------------------------------- data
    def target_columns(self, data: DataSection) -> list[str]:
        """The target columns the stage reads."""
        return []

    def required_columns(self, data: DataSection) -> list[str]:
        """Columns (besides the formula and id columns) every split must have."""
        return self.target_columns(data)

    def split_tensors(self, df: pd.DataFrame, split: str, data: DataSection, rejects: _Rejects, task: str,
                      target_columns: list[str], keep: np.ndarray) -> SplitTensors:
        """The stage tensors of one split; may clear rows in ``keep`` (in place) after reporting them."""
        return SplitTensors(task=task)

    def finish_splits(self, splits: dict[str, TensorSplit], data: DataSection, task: str) -> dict[str, Any]:
        """Post-process the tokenized splits (in place); return extra ``data.info`` entries."""
        return {}

    def data_task(self, task: str) -> str | None:
        """The task reported in ``data.info`` (None for stages without targets)."""
        return None

    # ----------------------------------------------------------------- model
    def model_config(self, recipe: StageRecipe, data: StageData) -> dict[str, Any]:
        """Config keys the stage sets from its data (e.g. the structure-embedding size, the targets)."""
        return {}

    def after_init_from(self, model: torch.nn.Module) -> None:
        """Adjust a model loaded from ``model.init_from``."""

    # ----------------------------------------------------------------- loop
    def collator(self, train: TrainSection, seed: int) -> MaskedElementCollator | None:
        """The batch transform (MLM masking), or None."""
        return None

    def batch_outputs(self, out: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-row prediction records of one evaluation batch (input of :meth:`metrics`)."""
        return {}

    def metrics(self, pred: Mapping[str, np.ndarray], split: TensorSplit, config: Any) -> dict[str, float]:
        """Validation/test metrics from per-row predictions (always with ``loss``)."""
        return {}

    def default_metric(self, config: Any) -> str:
        """``train.metric_for_best`` when the recipe leaves it unset."""
        return "loss"

    # ----------------------------------------------------------------- folder / card
    def card_task_type(self, task: str | None) -> str:
        """The model-index ``task_type`` of the stage's metrics."""
        raise NotImplementedError

    def card_notes(self, data: StageData) -> list[str]:
        """Extra leakage notes for the card."""
        return []

    def run(self, recipe: StageRecipe, out: Any) -> Any:
        """Train a stage whose :attr:`own_loop` is set; returns its ``StageRun``."""
        raise NotImplementedError(f"stage {self.name!r} trains through the shared loop")


@register_stage
class MLMStage(Stage):
    """Masked-element pretraining."""

    name = "mlm"
    model_class = CrossMatForMaskedLM
    card_kind = "clm-mlm"

    def collator(self, train: TrainSection, seed: int) -> MaskedElementCollator | None:
        return MaskedElementCollator(train.mlm_probability, seed=seed)

    def batch_outputs(self, out: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        ce = F.cross_entropy(out.logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        scored = labels != -100
        return {"mlm_sum": ce.sum(1), "mlm_count": scored.sum(1),
                "mlm_correct": ((out.logits.argmax(-1) == labels) & scored).sum(1)}

    def metrics(self, pred: Mapping[str, np.ndarray], split: TensorSplit, config: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        n = max(float(pred["mlm_count"].sum()), 1.0)
        out["mlm_loss"] = float(pred["mlm_sum"].sum() / n)
        out["masked_accuracy"] = float(pred["mlm_correct"].sum() / n)
        out["loss"] = out["mlm_loss"]
        return out

    def card_task_type(self, task: str | None) -> str:
        return "fill-mask"


@register_stage
class ImktStage(MLMStage):
    """Implicit knowledge transfer: MLM plus alignment of the formula embedding to structure embeddings."""

    name = "imkt"
    model_class = CrossMatForStructureAlignment
    card_kind = "clm-imkt"

    def required_columns(self, data: DataSection) -> list[str]:
        return [data.embedding_column]

    def split_tensors(self, df: pd.DataFrame, split: str, data: DataSection, rejects: _Rejects, task: str,
                      target_columns: list[str], keep: np.ndarray) -> SplitTensors:
        fcol, on_invalid = data.formula_column, data.on_invalid
        emb = df[data.embedding_column].to_numpy(dtype=object)
        lengths = np.array([len(e) if hasattr(e, "__len__") else -1 for e in emb])
        dim = int(np.bincount(lengths[lengths > 0]).argmax()) if (lengths > 0).any() else 0
        bad = (lengths != dim) & keep
        if dim == 0 or bad.any():
            rows = np.flatnonzero(bad) if dim else np.arange(len(df))
            if on_invalid == "error" or dim == 0:
                raise DataError(
                    f"{split} row {int(rows[0])}: embedding has length {lengths[rows[0]]}, expected {dim} "
                    f"({len(rows)} such row(s))"
                )
            rejects.add(split, rows, df[fcol].to_numpy()[rows], [f"embedding length != {dim}"] * len(rows))
            keep &= ~bad
        mat = np.zeros((len(df), dim), dtype=np.float32)
        mat[keep] = np.stack([np.asarray(e, dtype=np.float32) for e in emb[keep]])
        if not np.isfinite(mat).all():
            raise DataError(f"{split}: embedding column {data.embedding_column!r} holds non-finite values")
        weights = None
        if data.stability_bias != "none":
            ehull = pd.to_numeric(df[data.stability_column], errors="coerce").to_numpy(dtype=np.float64)
            if data.stability_bias == "filter":
                unstable = ~(ehull <= float(data.stability_max)) & keep
                rows = np.flatnonzero(unstable)
                rejects.add(split, rows, df[fcol].to_numpy()[rows],
                            [f"{data.stability_column} > {data.stability_max} or missing"] * len(rows))
                keep &= ~unstable
            else:
                w = np.exp(-np.clip(np.nan_to_num(ehull, nan=np.inf), 0, None) / float(data.stability_temperature))
                weights = torch.as_tensor(w, dtype=torch.float64)
        return SplitTensors({"structure_embeddings": torch.from_numpy(mat)}, weights, task=task)

    def finish_splits(self, splits: dict[str, TensorSplit], data: DataSection, task: str) -> dict[str, Any]:
        info: dict[str, Any] = {"structure_embedding_dim": int(splits["train"].tensors["structure_embeddings"].shape[1])}
        if data.standardize_embeddings:
            info["embedding_standardization"] = _standardize_embeddings(splits)
        return info

    def model_config(self, recipe: StageRecipe, data: StageData) -> dict[str, Any]:
        return {"structure_embedding_dim": data.info["structure_embedding_dim"]}

    def batch_outputs(self, out: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**super().batch_outputs(out, batch), "projected": out.projected_embedding.float()}

    def metrics(self, pred: Mapping[str, np.ndarray], split: TensorSplit, config: Any) -> dict[str, float]:
        from crossmat.modeling.modeling_crossmat import alignment_loss

        out = super().metrics(pred, split, config)
        proj = torch.from_numpy(pred["projected"])
        target = split.tensors["structure_embeddings"]
        out["alignment_cosine"] = float(F.cosine_similarity(proj, target, dim=-1).mean())
        chunks = [alignment_loss(p, t, config.alignment_loss, config.infonce_temperature)
                  for p, t in zip(proj.split(1024), target.split(1024), strict=True)
                  if len(p) > 1 or config.alignment_loss != "infonce"]
        out["alignment_loss"] = float(torch.stack(chunks).mean()) if chunks else float("nan")
        out["loss"] = config.mlm_loss_weight * out["mlm_loss"] + config.alignment_loss_weight * out["alignment_loss"]
        return out

    def card_task_type(self, task: str | None) -> str:
        return "feature-extraction"


@register_stage
class FinetuneStage(Stage):
    """Property prediction (regression or classification), full or LoRA."""

    name = "finetune"
    model_class = CrossMatForPropertyPrediction
    card_kind = "property"
    property_model = True
    supports_lora = True
    supports_explain = True
    writes_test_predictions = True
    writes_pipeline_files = True
    ignore_mismatched_sizes = True

    def validate(self, recipe: StageRecipe) -> None:
        if not recipe.data.target_column:
            raise RecipeError(f"stage {self.name!r} needs 'data.target_column'")

    def target_columns(self, data: DataSection) -> list[str]:
        tc = data.target_column
        return [tc] if isinstance(tc, str) else list(tc or [])

    def split_tensors(self, df: pd.DataFrame, split: str, data: DataSection, rejects: _Rejects, task: str,
                      target_columns: list[str], keep: np.ndarray) -> SplitTensors:
        y, task = _targets(df, target_columns, task, data.target_transform, split)
        bad = ~np.isfinite(y).all(axis=1) & keep
        if bad.any():
            rows = np.flatnonzero(bad)
            if data.on_invalid == "error":
                raise DataError(
                    f"{split} row {int(rows[0])}: target {y[rows[0]].tolist()} is missing or not finite "
                    f"(after transform {data.target_transform}); {len(rows)} such row(s); set data.on_invalid=skip to skip them"
                )
            rejects.add(split, rows, df[data.formula_column].to_numpy()[rows], ["target missing or not finite"] * len(rows))
            keep &= ~bad
        labels = torch.as_tensor(y, dtype=torch.float32) if task == "regression" else torch.as_tensor(y[:, 0]).long()
        return SplitTensors({"labels": labels}, targets=y, task=task)

    def finish_splits(self, splits: dict[str, TensorSplit], data: DataSection, task: str) -> dict[str, Any]:
        splits["train"], duplicates = _resolve_duplicates(splits["train"], data.duplicates, task)
        info: dict[str, Any] = {"duplicates": duplicates}
        if task == "regression":
            y = splits["train"].tensors["labels"].double()
            info["target_mean"] = y.mean(0).tolist()
            info["target_std"] = y.std(0).clamp(min=1e-12).tolist() if len(y) > 1 else [1.0] * y.shape[1]
        return info

    def data_task(self, task: str) -> str | None:
        return task

    def model_config(self, recipe: StageRecipe, data: StageData) -> dict[str, Any]:
        cfg: dict[str, Any] = {}
        targets = data.info["target_columns"]
        regression = data.info["task"] == "regression"
        if regression:
            cfg.update(num_labels=len(targets), problem_type="regression", target_mean=data.info["target_mean"],
                       target_std=data.info["target_std"], target_names=targets)
        else:
            cfg.update(num_labels=2, problem_type="single_label_classification", target_names=targets,
                       id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
        tf = recipe.data.target_transform
        if tf:
            cfg["target_names"] = [f"{tf}({t})" for t in targets]
        unit = recipe.card.get("property_unit")  # units travel from the recipe into the config and pipeline
        if unit and regression:
            units = [unit] * len(targets) if isinstance(unit, str) else [str(u) for u in unit]
            cfg["target_units"] = [f"{tf}({u})" if tf else u for u in units]
        if regression and recipe.data.clip_predictions == "auto":
            # non-negative targets (band gaps, moduli, strengths) get non-negative predictions
            low = data.train.tensors["labels"].min(0).values.tolist()
            cfg["target_min"] = [0.0 if v >= 0 else None for v in low]
        return cfg

    def after_init_from(self, model: torch.nn.Module) -> None:
        for member in model.ensemble_members:  # every ensemble member starts from the pretrained encoder
            member.crossmat.load_state_dict(model.crossmat.state_dict())

    def batch_outputs(self, out: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rec = {"logits": out.logits.float()}
        if getattr(out, "uncertainty", None) is not None:  # optional predictive uncertainty
            rec["uncertainty"] = out.uncertainty.float()
        return rec

    def metrics(self, pred: Mapping[str, np.ndarray], split: TensorSplit, config: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        logits = pred["logits"]
        labels = split.tensors["labels"].numpy()
        if config.problem_type == "regression":
            err = logits.reshape(labels.shape) - labels
            out["mae"] = float(np.abs(err).mean())
            out["rmse"] = float(np.sqrt((err**2).mean()))
            var = ((labels - labels.mean(0)) ** 2).sum(0)
            out["r2"] = float(np.mean(1.0 - (err**2).sum(0) / np.where(var > 0, var, np.nan)))
            std = np.asarray(config.target_std or [1.0] * labels.shape[1])
            out["loss"] = float(np.abs(err / std).mean())
            if "uncertainty" in pred:  # share of errors within 1 and 2 predicted sigma (Gaussian: 0.683, 0.954)
                sigma = np.asarray(pred["uncertainty"]).reshape(err.shape)
                out["coverage_1sigma"] = float((np.abs(err) <= sigma).mean())
                out["coverage_2sigma"] = float((np.abs(err) <= 2 * sigma).mean())
        else:
            from sklearn.metrics import roc_auc_score

            prob = scores_from_logits(torch.from_numpy(logits).double(), "single_label_classification")[:, 1].numpy()
            out["accuracy"] = float(((prob > 0.5).astype(int) == labels).mean())
            out["roc_auc"] = float(roc_auc_score(labels, prob)) if len(np.unique(labels)) == 2 else float("nan")
            out["loss"] = float(F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels).long()))
        return out

    def default_metric(self, config: Any) -> str:
        return "mae" if config.problem_type == "regression" else "roc_auc"

    def card_task_type(self, task: str | None) -> str:
        return "tabular-regression" if task == "regression" else "tabular-classification"

    def card_notes(self, data: StageData) -> list[str]:
        if data.test is None:
            return []
        train_f = set(data.train.formulas)
        test_f = set(data.test.formulas)
        shared = sum(f in train_f for f in test_f)
        return [f"{shared} of the {len(test_f)} distinct test formulas also occur in the training split "
                "(same composition, e.g. polymorphs or repeated measurements)."]


@register_stage
class CIFLMStage(Stage):
    """CIF language model (GPT-2 over CIF tokens, the exKT structure generator): trains on structure tables with
    the Hugging Face ``Trainer`` (see :mod:`training.cif_lm_stage`), not on formulas."""

    name = "cif_lm"
    model_class = GPT2LMHeadModel
    card_kind = "cif-lm"
    own_loop = True
    MODEL_KEYS = ("n_embd", "n_layer", "n_head", "n_positions", "dropout")

    def validate(self, recipe: StageRecipe) -> None:
        from crossmat.dataset_builders.cif_text import CIF_FORMS

        data = recipe.data
        sources = data.train if isinstance(data.train, list) else [data.train]
        if not all(isinstance(src, str) for src in sources):
            raise RecipeError("recipe key 'data.train' of a cif_lm stage: a structure table path or a list of them")
        if not data.cif_forms or any(f not in CIF_FORMS for f in data.cif_forms):
            raise RecipeError(f"recipe key 'data.cif_forms' is {data.cif_forms!r}; choose from {list(CIF_FORMS)}")
        if not data.cif_decimals or any(not isinstance(d, int) or not 1 <= d <= 8 for d in data.cif_decimals):
            raise RecipeError(f"recipe key 'data.cif_decimals' is {data.cif_decimals!r}; integers from 1 to 8")
        unknown = sorted(set(recipe.model.config) - set(self.MODEL_KEYS))
        if unknown:
            raise RecipeError(f"unknown cif_lm model.config key(s) {unknown}; allowed: {list(self.MODEL_KEYS)}")
        if recipe.model.element_embedding_init:
            raise RecipeError("'model.element_embedding_init' does not apply to a cif_lm stage")
        if data.test is not None:
            raise RecipeError("a cif_lm stage has no test split; score generation with "
                              "benchmarks/explicit_transfer/run_cif_lm.py --model <folder>")

    def run(self, recipe: StageRecipe, out: Any) -> Any:
        from .cif_lm_stage import train_cif_lm_stage

        return train_cif_lm_stage(recipe, out)

    def card_task_type(self, task: str | None) -> str:
        return "text-generation"
