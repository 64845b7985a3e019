"""The stage types: one small class per ``stage:`` of a recipe. A stage owns its data (the columns it reads and
the tensors it adds to each split), its model (class and config keys) and its metrics; the shared machinery
(:mod:`training.data`, :mod:`training.model`, :mod:`training.loop`, :mod:`training.folder`) calls the seven
methods of :class:`Stage` instead of comparing stage names. :data:`training.recipe.STAGE_TYPES` maps the YAML
name to the class; adding a stage means adding one class here with :func:`register_stage`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from crossmat.dataset_builders.cif_text import CIF_FORMS
from crossmat.dataset_builders.targets import TaskTypeError, decide_task_type, transform_targets
from crossmat.modeling import CrossMatForMaskedLM, CrossMatForPropertyPrediction, CrossMatForStructureAlignment
from crossmat.modeling.calibration import coverage_metrics
from crossmat.modeling.model_folder import scores_from_logits
from crossmat.modeling.modeling_crossmat import alignment_loss
from crossmat.tokenization import FormulaError, canonical_formula

from .cif_lm_stage import train_cif_lm_stage
from .collator import MaskedElementCollator
from .data import DataError, Rejects, StageData, TensorSplit
from .recipe import STAGE_TYPES, DataSection, RecipeError, StageRecipe, register_stage, stage_kind

__all__ = ["STAGE_TYPES", "CIFLMStage", "FinetuneStage", "ImktStage", "MLMStage", "SplitTensors", "Stage", "register_stage", "stage_kind"]


class SplitTensors:
    """What a stage adds to one split: tensors, row weights, float64 targets, the (inferred) task."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None, weights: torch.Tensor | None = None,
                 targets: np.ndarray | None = None, task: str = "auto") -> None:
        self.tensors = tensors or {}
        self.weights = weights
        self.targets = targets
        self.task = task


class Stage:
    """Base stage: the defaults of a pretraining stage (no targets, no test predictions).

    What a stage *is* is declared in class attributes; what it *does* is eight methods: :meth:`validate`
    (recipe), :meth:`split_tensors`, :meth:`finish_splits` (data), :meth:`model_config`
    (model), :meth:`collator` (batches), :meth:`batch_outputs`, :meth:`metrics` (evaluation) and :meth:`card`
    (the model card)."""

    name: ClassVar[str]
    model_class: ClassVar[type[torch.nn.Module]]
    card_kind: ClassVar[str]  # model_cards kind of the stage folder
    # a property model (what evaluation and users predict with): LoRA, card.explain, test_predictions.csv, the
    # Hub pipeline files, and init_from with a new head
    property_model: ClassVar[bool] = False
    masks_elements: ClassVar[bool] = False  # batches go through the masked-element collator (MLM)
    # the data columns the stage reads besides the formula and id columns, named by ``data:`` keys: the targets
    # (``target_key``, one column name or a list) and further required columns (``required_keys``)
    target_key: ClassVar[str | None] = None
    required_keys: ClassVar[tuple[str, ...]] = ()
    # train.metric_for_best when the recipe leaves it unset, by the model's problem_type ("loss" otherwise)
    default_metric: ClassVar[Mapping[str | None, str]] = {}
    # a stage with its own trainer: ``trainer(recipe, output_dir) -> StageRun`` instead of the Accelerate loop
    trainer: ClassVar[Callable[[StageRecipe, Any], Any] | None] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def validate(self, recipe: StageRecipe) -> None:
        """Stage-specific recipe checks (raise :class:`RecipeError` naming the key)."""

    def split_tensors(self, df: pd.DataFrame, split: str, data: DataSection, rejects: Rejects, task: str,
                      target_columns: list[str], keep: np.ndarray) -> SplitTensors:
        """The stage tensors of one split; may clear rows in ``keep`` (in place) after reporting them."""
        return SplitTensors(task=task)

    def finish_splits(self, splits: dict[str, TensorSplit], data: DataSection, task: str) -> dict[str, Any]:
        """Post-process the tokenized splits (in place); return extra ``data.info`` entries."""
        return {}

    def model_config(self, recipe: StageRecipe, data: StageData) -> dict[str, Any]:
        """Config keys the stage sets from its data (e.g. the structure-embedding size, the targets)."""
        return {}

    def collator(self, mlm_probability: float, seed: int, config: Any) -> MaskedElementCollator | None:
        """The masked-element collator of the stage's batches (``masks_elements``), or None: batches as they are."""
        return MaskedElementCollator(mlm_probability, seed=seed) if self.masks_elements else None

    def batch_outputs(self, out: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-row prediction records of one evaluation batch (input of :meth:`metrics`)."""
        return {}

    def metrics(self, pred: Mapping[str, np.ndarray], split: TensorSplit, config: Any) -> dict[str, float]:
        """Validation/test metrics from per-row predictions (always with ``loss``)."""
        return {}

    def card(self, data: StageData) -> tuple[str, list[str]]:
        """The model-index ``task_type`` of the stage's metrics and extra leakage notes for the card."""
        raise NotImplementedError


@register_stage
class MLMStage(Stage):
    """Masked-element pretraining."""

    name = "mlm"
    model_class = CrossMatForMaskedLM
    card_kind = "clm-mlm"
    masks_elements = True

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

    def card(self, data: StageData) -> tuple[str, list[str]]:
        return "fill-mask", []


@register_stage
class ImktStage(MLMStage):
    """Implicit knowledge transfer: MLM plus alignment of the formula embedding to structure embeddings."""

    name = "imkt"
    model_class = CrossMatForStructureAlignment
    card_kind = "clm-imkt"
    required_keys = ("embedding_column",)

    def collator(self, mlm_probability: float, seed: int, config: Any) -> MaskedElementCollator:
        """MLM masks; with ``alignment_input == "clean"`` the unmasked ids travel beside them for the alignment."""
        clean = getattr(config, "alignment_input", "masked") == "clean"
        return MaskedElementCollator(mlm_probability, seed=seed, keep_clean=clean)

    def split_tensors(self, df: pd.DataFrame, split: str, data: DataSection, rejects: Rejects, task: str,
                      target_columns: list[str], keep: np.ndarray) -> SplitTensors:
        fcol, on_invalid = data.formula_column, data.on_invalid
        emb = df[data.embedding_column].to_numpy(dtype=object)
        lengths = np.array([len(e) if hasattr(e, "__len__") else -1 for e in emb])
        dim = int(np.bincount(lengths[lengths > 0]).argmax()) if (lengths > 0).any() else 0
        # a null embedding (None / NaN / empty) is a row with no structure: an MLM-only row when allowed
        mlm_only = (lengths <= 0) & keep if data.missing_embeddings == "mlm_only" else np.zeros(len(df), dtype=bool)
        bad = (lengths != dim) & keep & ~mlm_only
        if dim == 0:
            raise DataError(f"{split}: no row has an embedding in column {data.embedding_column!r}")
        if bad.any():
            rows = np.flatnonzero(bad)
            if on_invalid == "error":
                first = int(rows[0])
                what = ("has no embedding (null); data.missing_embeddings=mlm_only trains such rows with MLM only"
                        if lengths[first] <= 0 else f"embedding has length {lengths[first]}, expected {dim}")
                raise DataError(f"{split} row {first}: {what} ({len(rows)} such row(s))")
            rejects.add(split, rows, df[fcol].to_numpy()[rows],
                        ["no embedding (null)" if lengths[r] <= 0 else f"embedding length != {dim}" for r in rows])
            keep &= ~bad
        has = keep & ~mlm_only
        mat = np.zeros((len(df), dim), dtype=np.float32)
        if has.any():
            mat[has] = np.stack([np.asarray(e, dtype=np.float32) for e in emb[has]])
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
        tensors = {"structure_embeddings": torch.from_numpy(mat)}
        if data.missing_embeddings == "mlm_only":
            tensors["structure_mask"] = torch.from_numpy(~mlm_only)  # rejected rows are dropped later anyway
        return SplitTensors(tensors, weights, task=task)

    def finish_splits(self, splits: dict[str, TensorSplit], data: DataSection, task: str) -> dict[str, Any]:
        info: dict[str, Any] = {"structure_embedding_dim": int(splits["train"].tensors["structure_embeddings"].shape[1])}
        if data.missing_embeddings == "mlm_only":
            info["rows_with_structure_target"] = {
                name: f"{int(split.tensors['structure_mask'].sum())} of {len(split.tensors['structure_mask'])}"
                for name, split in splits.items()}  # fmt: skip
            if not splits["train"].tensors["structure_mask"].any():
                raise DataError("train: no row has a structure embedding (data.missing_embeddings=mlm_only)")
        if data.standardize_embeddings:
            info["embedding_standardization"] = _standardize_embeddings(splits)
        return info

    def model_config(self, recipe: StageRecipe, data: StageData) -> dict[str, Any]:
        return {"structure_embedding_dim": data.info["structure_embedding_dim"]}

    def batch_outputs(self, out: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**super().batch_outputs(out, batch), "projected": out.projected_embedding.float()}

    def metrics(self, pred: Mapping[str, np.ndarray], split: TensorSplit, config: Any) -> dict[str, float]:
        out = super().metrics(pred, split, config)
        proj = torch.from_numpy(pred["projected"])
        target = split.tensors["structure_embeddings"]
        if "structure_mask" in split.tensors:  # MLM-only rows have no alignment target
            proj, target = proj[split.tensors["structure_mask"]], target[split.tensors["structure_mask"]]
        out["alignment_cosine"] = float(F.cosine_similarity(proj, target, dim=-1).mean())
        chunks = [alignment_loss(p, t, config.alignment_loss, config.infonce_temperature)
                  for p, t in zip(proj.split(1024), target.split(1024), strict=True)
                  if len(p) > 1 or config.alignment_loss != "infonce"]
        out["alignment_loss"] = float(torch.stack(chunks).mean()) if chunks else float("nan")
        out["loss"] = config.mlm_loss_weight * out["mlm_loss"] + config.alignment_loss_weight * out["alignment_loss"]
        return out

    def card(self, data: StageData) -> tuple[str, list[str]]:
        return "feature-extraction", []


@register_stage
class FinetuneStage(Stage):
    """Property prediction (regression or classification), full or LoRA."""

    name = "finetune"
    model_class = CrossMatForPropertyPrediction
    card_kind = "property"
    property_model = True
    target_key = "target_column"
    default_metric = {"regression": "mae", "single_label_classification": "roc_auc"}

    def validate(self, recipe: StageRecipe) -> None:
        if not recipe.data.target_column:
            raise RecipeError(f"stage {self.name!r} needs 'data.target_column'")

    def split_tensors(self, df: pd.DataFrame, split: str, data: DataSection, rejects: Rejects, task: str,
                      target_columns: list[str], keep: np.ndarray) -> SplitTensors:
        y, task = _target_matrix(df, target_columns, task, data.target_transform, split)
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

    def model_config(self, recipe: StageRecipe, data: StageData) -> dict[str, Any]:
        # what held-out rows set after training (modeling.calibration, modeling.forest) is redone for the new model,
        # never inherited from a fine-tuned model used as init_from
        cfg: dict[str, Any] = {"uncertainty_rows": 0, "decision_threshold": None, "class_decision_weights": None,
                               "probability_temperature": 1.0,
                               "forest_nodes": 0, "forest_features": None, "forest_features_dim": 0,
                               "forest_weight": 1.0, "same_composition_rows": 0, "same_composition_weight": 0.0}
        targets = data.info["target_columns"]
        regression = data.info["task"] == "regression"
        if regression:
            cfg.update(num_labels=len(targets), problem_type="regression", target_mean=data.info["target_mean"],
                       target_std=data.info["target_std"], target_names=targets)
        else:
            # class names in class order: a recipe's card.class_labels, else the target's own labels, else 0 / 1
            own = data.info.get("class_labels") or ("0", "1")
            names = [str(n) for n in recipe.card.get("class_labels") or own]
            if len(names) != len(own) or len(set(names)) != len(names):
                raise RecipeError(f"stage {recipe.name!r}: card.class_labels must name the target's {len(own)} classes, "
                                  f"each once, got {names}")
            seen = int(data.train.tensors["labels"].max()) + 1
            if seen > len(names):
                raise RecipeError(f"stage {recipe.name!r}: the training labels reach class {seen - 1}, but "
                                  f"{len(names)} classes are named ({names})")
            cfg.update(num_labels=len(names), problem_type="single_label_classification", target_names=targets,
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
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
                out.update(coverage_metrics(err, sigma, config.uncertainty_interval_multipliers))
        else:
            from sklearn.metrics import roc_auc_score

            probs = scores_from_logits(torch.from_numpy(logits).double(), "single_label_classification").numpy()
            present = np.unique(labels)
            if probs.shape[1] == 2:
                out["accuracy"] = float(((probs[:, 1] > 0.5).astype(int) == labels).mean())
                out["roc_auc"] = float(roc_auc_score(labels, probs[:, 1])) if len(present) == 2 else float("nan")
            else:  # the most probable class; ROC-AUC: macro one-vs-rest over the classes present
                out["accuracy"] = float((probs.argmax(1) == labels).mean())
                out["roc_auc"] = (float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))
                                  if len(present) > 1 else float("nan"))
            out["loss"] = float(F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels).long()))
        return out

    def card(self, data: StageData) -> tuple[str, list[str]]:
        task_type = "tabular-regression" if data.info.get("task") == "regression" else "tabular-classification"
        if data.test is None:
            return task_type, []
        train_f = set(data.train.formulas)
        test_f = set(data.test.formulas)
        shared = sum(f in train_f for f in test_f)
        return task_type, [f"{shared} of the {len(test_f)} distinct test formulas also occur in the training split "
                           "(same composition, e.g. polymorphs or repeated measurements)."]


@register_stage
class CIFLMStage(Stage):
    """CIF language model (GPT-2 over CIF tokens, the exKT structure generator): trains on structure tables with
    the Hugging Face ``Trainer`` (see :mod:`training.cif_lm_stage`), not on formulas."""

    name = "cif_lm"
    model_class = GPT2LMHeadModel
    card_kind = "cif-lm"
    trainer = staticmethod(train_cif_lm_stage)
    MODEL_KEYS = ("n_embd", "n_layer", "n_head", "n_positions", "dropout")

    def validate(self, recipe: StageRecipe) -> None:
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

    def card(self, data: StageData) -> tuple[str, list[str]]:
        return "text-generation", []


# ----------------------------------------------------------------- the stages' own data helpers
def _target_matrix(df: pd.DataFrame, columns: list[str], task: str, transform: str | None, what: str) -> tuple[np.ndarray, str]:
    """Numeric target matrix (rows x targets) and the task (decided by
    :func:`dataset_builders.targets.decide_task_type`); raises on a target of the wrong type."""
    try:
        task, y = decide_task_type({c: df[c] for c in columns}, task, f"{what}: ")
    except TaskTypeError as err:
        raise DataError(str(err)) from None
    if transform:
        if task != "regression":
            raise DataError(f"{what}: target_transform {transform!r} only applies to regression")
        y, _ = transform_targets(y, transform)
    return y, task


def _standardize_embeddings(splits: dict[str, TensorSplit]) -> dict[str, Any]:
    """Z-score every structure-embedding dimension with the train split's statistics (all splits, in place).

    Raw encoder features share a large common offset, so without this a cosine loss is near 0 from the
    start and an MSE loss is dominated by a few high-variance dimensions."""
    train = splits["train"].tensors["structure_embeddings"].double()
    if "structure_mask" in splits["train"].tensors:  # statistics of the rows that have a target
        train = train[splits["train"].tensors["structure_mask"]]
    mean, std = train.mean(0), train.std(0) if len(train) > 1 else torch.ones(train.shape[1], dtype=train.dtype)
    constant = std <= 1e-8
    std = torch.where(constant, torch.ones_like(std), std)  # constant dimensions are centred, not divided
    for split in splits.values():
        emb = split.tensors["structure_embeddings"].double()
        z = (emb - mean) / std
        if "structure_mask" in split.tensors:
            z = z * split.tensors["structure_mask"].unsqueeze(1)  # MLM-only rows stay zero
        split.tensors["structure_embeddings"] = z.float()
    return {"mean_norm": float(mean.norm()), "constant_dimensions": int(constant.sum())}


def _resolve_duplicates(split: TensorSplit, policy: str, task: str) -> tuple[TensorSplit, dict[str, Any]]:
    """Report training rows that share a composition with different targets and apply ``data.duplicates``.

    ``keep`` trains on every row (polymorphs are real data), ``mean`` merges each composition into its
    first row with the mean target (classification: the majority label, ties to the first row's),
    ``first`` keeps the first row, ``error`` refuses conflicting targets. Always reported in the card
    info (``duplicates``) and printed.
    """
    formulas = np.asarray(split.formulas, dtype=object)
    uniq, inverse = np.unique(formulas, return_inverse=True)
    keys = np.array([_safe_canonical(f) for f in uniq], dtype=object)[inverse]
    _, group, counts = np.unique(keys, return_inverse=True, return_counts=True)
    labels = split.tensors["labels"].double().reshape(len(formulas), -1).numpy()
    dup_rows = np.flatnonzero(counts[group] > 1)
    conflicts: dict[str, list] = {}
    for r in dup_rows:
        value = float(labels[r, 0]) if labels.shape[1] == 1 else labels[r].tolist()
        conflicts.setdefault(str(keys[r]), []).append(value)
    conflicts = {k: v for k, v in conflicts.items() if len({json.dumps(x) for x in v}) > 1}
    report = {
        "policy": policy,
        "duplicate_rows": int(len(dup_rows)),
        "conflicting_compositions": len(conflicts),
        "examples": {k: v[:5] for k, v in list(conflicts.items())[:5]},
    }
    if conflicts:
        first = next(iter(conflicts))
        msg = (
            f"data.train: {len(conflicts)} composition(s) appear with different targets (e.g. {first}: "
            f"{conflicts[first][:5]}); data.duplicates={policy}"
        )
        if policy == "error":
            raise DataError(msg + "; choose data.duplicates=mean|first|keep or clean the data")
        print(f"[crossmat] {msg}")
    if policy in ("keep", "error") or not len(dup_rows):
        return split, report
    first_row = np.full(int(group.max()) + 1, -1)
    for r in range(len(formulas) - 1, -1, -1):
        first_row[group[r]] = r
    keep = np.zeros(len(formulas), dtype=bool)
    keep[first_row] = True
    tensors = dict(split.tensors)
    if policy == "mean":
        y = tensors["labels"].clone()
        if task == "regression":
            sums = np.zeros((len(first_row), labels.shape[1]))
            np.add.at(sums, group, labels)
            y[torch.as_tensor(first_row)] = torch.as_tensor(sums / counts[:, None], dtype=y.dtype).reshape(
                y[torch.as_tensor(first_row)].shape
            )
        else:
            ones = np.bincount(group, weights=labels[:, 0], minlength=len(first_row))
            first_label = labels[first_row, 0]
            major = np.where(ones * 2 == counts, first_label, (ones * 2 > counts).astype(float))
            y[torch.as_tensor(first_row)] = torch.as_tensor(major, dtype=y.dtype)
        tensors["labels"] = y
    k = torch.as_tensor(keep)
    weights = split.weights[k] if split.weights is not None else None
    return TensorSplit({n: t[k] for n, t in tensors.items()}, list(formulas[keep]), weights), report


def _safe_canonical(formula: str) -> str:
    try:
        return canonical_formula(formula)
    except FormulaError:
        return formula
