"""CrossMat as a benchmark predictor: per fold, fine-tune through ``training.train_recipe`` on the fold's
training rows (validation carved from them), then predict the fold's test rows in batches with the
predictor users run (:class:`inference.FormulaPredictor`), on the trained model still in memory."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .baselines import FoldData, FoldPrediction
from .tasks import TaskInfo

if TYPE_CHECKING:
    from crossmat.inference.engine import FormulaPredictor
    from crossmat.training.stages import StageRun

# a fold whose model blends a forest (train.forest_blend) also writes CrossMat's test outputs without it (id, prediction:
# the same scale as predictions.csv), so that the blend's effect is paired on the same trained model
WITHOUT_FOREST_FILE = "predictions_without_forest.csv"
WITHOUT_SAME_COMPOSITION_FILE = "predictions_without_same_composition.csv"

# what the default recipe's model.config adds when it fine-tunes another folder: the ensemble and the training-time
# fraction jitter; the size, pooling and element features are the folder's own
TRAINING_MODEL_KEYS = ("ensemble_size", "fraction_jitter")


def model_folder_recipe() -> dict[str, Any]:
    """The recipe for fine-tuning a given model folder (``--model DIR``: a backbone the user pretrained, or a property
    model to fine-tune further): the shipped default recipe (the same training, calibration and corrections the
    shipped backbone gets), its model.config cut to :data:`TRAINING_MODEL_KEYS`."""
    from crossmat.dataset_builders.paths import resolve_recipe
    from crossmat.training.recipe import load_recipe

    recipe = load_recipe(resolve_recipe("default"))
    model = recipe.setdefault("model", {})
    model["config"] = {k: v for k, v in (model.get("config") or {}).items() if k in TRAINING_MODEL_KEYS}
    return recipe


class ModelTaskMismatch(ValueError):
    """The model's head does not fit the task type (regression vs classification)."""


def check_model_folder(model_dir: Path, task: TaskInfo) -> None:
    """Fail before any training when ``model_dir`` is not a CrossMat folder (full or LoRA) or its head
    does not fit the task."""
    from crossmat.modeling.model_folder import ModelFolderError, check_folder, is_property_config, output_info

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model {model_dir}: no config.json there (not a saved model folder)")
    try:
        cfg = check_folder(model_dir)
    except ModelFolderError as exc:
        raise ValueError(f"--model {exc}") from exc
    if not is_property_config(cfg):
        return  # pretrained encoder (MLM / imKT): a fresh head is added for the task
    info = output_info(cfg)
    is_reg = info["problem_type"] == "regression"
    if is_reg and task.task_type != "regression":
        raise ModelTaskMismatch(
            f"--model {model_dir} has a regression head (problem_type={cfg.get('problem_type')!r}) but {task.name} is a "
            f"classification task; use a pretrained encoder folder or a classification model"
        )
    if not is_reg and task.task_type != "classification":
        raise ModelTaskMismatch(
            f"--model {model_dir} has a classification head ({info['num_labels']} labels) but {task.name} is a "
            "regression task; use a pretrained encoder folder or a regression model"
        )


def _finetune_stage(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The stage mapping the fold data goes into: the recipe, or a pipeline's last stage; its stage type must
    train a property model (``Stage.property_model``, e.g. ``finetune``)."""
    from crossmat.training.stage_kinds import STAGE_TYPES

    def trains_property_model(stage: Mapping[str, Any]) -> bool:
        kind = STAGE_TYPES.get(stage.get("stage"))  # type: ignore[arg-type]
        return kind is not None and kind.property_model

    if "pipeline" in recipe:
        stage = recipe["pipeline"][-1]
        if not trains_property_model(stage):
            raise ValueError("the last stage of a pipeline recipe used for evaluation must be 'finetune'")
        return stage
    if not trains_property_model(recipe):
        raise ValueError(f"evaluation needs a 'finetune' recipe (or a pipeline ending in one), got stage {recipe.get('stage')!r}")
    return recipe  # type: ignore[return-value]


class CrossMatPredictor:
    """Fine-tunes CrossMat per fold via ``training.train_recipe`` and predicts the test rows."""

    def __init__(
        self,
        name: str,
        recipe: Mapping[str, Any] | None = None,
        model_dir: str | Path | None = None,
        overrides: Sequence[str] | None = None,
        predict_batch_size: int = 1024,
    ) -> None:
        if recipe is None and model_dir is None:
            raise ValueError("CrossMatPredictor needs a recipe or a model folder")
        self.name = name
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.recipe = copy.deepcopy(dict(recipe)) if recipe is not None else model_folder_recipe()
        stage = _finetune_stage(self.recipe)
        if self.model_dir is not None:
            stage.setdefault("model", {})["init_from"] = str(self.model_dir)
        self.overrides = list(overrides or [])
        self.predict_batch_size = predict_batch_size

    def fold_recipe(self, data: FoldData, task: TaskInfo, seed: int) -> dict[str, Any]:
        """The recipe for one fold: the fold's rows injected into the fine-tuning stage."""
        recipe = copy.deepcopy({k: v for k, v in self.recipe.items()})
        stage = _finetune_stage(recipe)
        stage["seed"] = seed
        given = dict(stage.get("data") or {})
        cols = ["id", "formula", "target"]
        # the fold model is trained on the task's own target name, so its config, card, pipeline labels and
        # `crossmat predict` columns say "yield_strength", not "target"
        name = task.target if task.target and task.target not in ("id", "formula") else "target"
        train, validation = (f[cols].rename(columns={"target": name}) for f in (data.train, data.validation))
        if task.task_type == "classification" and task.num_classes > 2 and task.labels:
            # the class names, which card.class_labels below orders, so a class without training rows keeps its index
            train, validation = (f.assign(**{name: np.asarray(task.labels, dtype=object)[f[name].to_numpy(np.int64)]})
                                 for f in (train, validation))
        if given.get("validation_fraction") == 0:  # the recipe trains on every training row, no carve-out
            train, validation = pd.concat([train, validation]), validation.iloc[:0]
        card = dict(stage.get("card") or {})  # the fold model's card says what it was trained on
        if task.unit and not card.get("property_unit"):  # unit into the fold model's config and card
            card["property_unit"] = task.unit
        if task.labels and not card.get("class_labels"):  # class names into the config's id2label
            card["class_labels"] = list(task.labels)
        card.setdefault("training_data", f"{task.benchmark} task {task.name}, fold {data.fold}: {len(train)} "
                        f"training rows; {len(validation)} validation rows for early stopping.")
        if task.benchmark in ("matbench", "llm4mat"):
            card.setdefault("benchmark", task.benchmark)
        stage["card"] = card
        train, validation = train.reset_index(drop=True), validation.reset_index(drop=True)
        for frame, rows in ((train, "training"), (validation, "validation")):  # what the fold model's card names
            frame.attrs["source"] = f"{task.benchmark} {task.name}, fold {data.fold} {rows} rows"
        stage["data"] = {
            **given,
            "train": train,
            "validation": validation,
            "test": None,
            "formula_column": "formula",
            "target_column": name,
            "id_column": "id",
            "task": task.task_type,
        }
        return recipe

    def signature(self) -> str:
        """Hash of the recipe (minus data) and overrides: a finished fold is reused only if they match."""
        import hashlib

        body = json.dumps([self.recipe, self.overrides], sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def check(self, data: FoldData, task: TaskInfo) -> None:
        """Validate the model folder and the fold recipe before any training."""
        if self.model_dir is not None:
            check_model_folder(self.model_dir, task)
        from crossmat.training.recipe import apply_overrides, validate_recipe

        stages = validate_recipe(apply_overrides(self.fold_recipe(data, task, 0), self.overrides))
        transform = stages[-1].data.target_transform
        if transform:  # the fold model would predict log10(y), scored against y beside baselines that predict y
            raise ValueError(f"data.target_transform={transform} in the CrossMat recipe would score {transform}-scale "
                             f"predictions against the raw targets; for your own files use --target-transform "
                             f"{transform}, which puts every predictor and every score on that scale")

    resumable = True  # an interrupted fold continues from its newest checkpoint (evaluation.protocol)

    def fit_predict(self, data: FoldData, task: TaskInfo, workdir: Path, seed: int, resume: bool = False
                    ) -> FoldPrediction:
        """Train the fold model in ``workdir/model`` and predict the test rows. ``resume``: the same settings and
        data began training there before; continue from the newest checkpoint (else any old one is removed)."""
        from crossmat.training import train_recipe

        recipe = self.fold_recipe(data, task, seed)
        if not resume and (workdir / "model").is_dir():  # another run's checkpoints (any stage): never resumed by this one
            for old in [p for p in (workdir / "model").rglob("checkpoints") if p.is_dir()]:
                shutil.rmtree(old)
        overrides = [*self.overrides, *(["train.resume=auto"] if resume else [])]
        run = train_recipe(recipe, workdir / "model", overrides=overrides or None)  # the final stage
        predictor = fold_predictor(run, self.predict_batch_size)
        formulas = data.test["formula"].tolist()
        preds, unc = predict_with(predictor, formulas, task.task_type, return_uncertainty=True)
        labels = predictor.labels_of(preds) if preds.ndim == 2 else None  # its class decision weights, if any
        model = predictor.model
        # a blended forest / a same-composition correction: keep the test outputs without it too (the same model)
        for key, off, name in (("forest_weight", 1.0, WITHOUT_FOREST_FILE),
                               ("same_composition_weight", 0.0, WITHOUT_SAME_COMPOSITION_FILE)):
            if getattr(model.config, key, off) == off:
                continue
            value = getattr(model.config, key)
            setattr(model.config, key, off)
            try:
                alone = predict_with(predictor, formulas, task.task_type)
            finally:
                setattr(model.config, key, value)
            columns = {"prediction": alone} if alone.ndim == 1 else {  # three classes or more: as predictions.csv
                "prediction": predictor.labels_of(alone), **dict(zip(task.probability_columns, alone.T, strict=True))}
            pd.DataFrame({"id": data.test["id"].to_numpy(), **columns}).to_csv(workdir / name, index=False)
        params: dict[str, Any] = {"model_dir": str(run.folder), "overrides": self.overrides}
        info_file = run.folder / "training_info.json"  # what the held-out validation rows did (training.stages)
        if info_file.is_file():
            metrics = json.loads(info_file.read_text()).get("metrics", {})
            params.update({k: metrics[k] for k in ("validation", "calibration", "forest_blend", "same_composition")
                           if k in metrics})
        return FoldPrediction(preds, params, unc, labels)


def fold_predictor(run: StageRun, batch_size: int = 1024) -> FormulaPredictor:
    """The :class:`inference.FormulaPredictor` of a just-trained fold model (a ``training.StageRun``): the
    model in memory, as its folder would load (full folders; a LoRA adapter folder, which loading merges,
    and a run without a model in memory are loaded from the folder)."""
    from crossmat.inference.engine import FormulaPredictor
    from crossmat.modeling.model_folder import is_lora_folder

    if run.model is None or is_lora_folder(run.folder):
        return FormulaPredictor(run.folder, batch_size=batch_size)
    return FormulaPredictor.from_model(run.model, run.tokenizer, name=str(run.folder), batch_size=batch_size)


def predict_folder(model_dir: Path, formulas: list[str], task_type: str, batch_size: int = 1024,
                   return_uncertainty: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Predictions of a saved CrossMat property model (full or LoRA folder) through the predictor users
    run (:class:`inference.FormulaPredictor`): values (regression), P(class 1) or, for three classes or more, rows x
    classes probabilities; every formula must be valid.
    With ``return_uncertainty`` also the ensemble spread of those values (``None`` for a single model)."""
    from crossmat.inference.engine import FormulaPredictor

    return predict_with(FormulaPredictor(model_dir, batch_size=batch_size), formulas, task_type, return_uncertainty)


def decision_scores(prob: np.ndarray, threshold: float) -> np.ndarray:
    """P(class 1) mapped monotonically (piecewise linear) so that 0.5 falls on the model's decision threshold:
    metrics that cut at 0.5 (MatBench's accuracy, balanced accuracy, F1) score the model's own decision rule,
    and rank metrics (ROC-AUC) are unchanged."""
    t = float(np.clip(threshold, 1e-6, 1 - 1e-6))
    prob = np.asarray(prob, dtype=np.float64)
    return np.where(prob < t, 0.5 * prob / t, 0.5 + 0.5 * (prob - t) / (1 - t))


def predict_with(predictor: FormulaPredictor, formulas: list[str], task_type: str, return_uncertainty: bool = False
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """:func:`predict_folder` with a ready :class:`inference.FormulaPredictor` (loaded or in memory)."""
    where = predictor.model_path
    if (predictor.problem_type == "regression") != (task_type == "regression"):
        raise ModelTaskMismatch(f"{where} is a {predictor.problem_type} model but the task is {task_type}")
    pred = predictor.predict(formulas)
    bad = [(i, f, e) for i, (f, e) in enumerate(zip(formulas, pred.errors, strict=True)) if e is not None]
    if bad:
        i, f, e = bad[0]
        raise ValueError(f"{where}: {len(bad)} test formula(s) cannot be predicted; row {i}: {f!r}: {e}")
    if task_type != "regression" and pred.values.shape[1] > 2:  # every class's probability
        return (pred.values, None) if return_uncertainty else pred.values
    col = 0 if task_type == "regression" or pred.values.shape[1] == 1 else 1
    values = pred.values[:, col]
    threshold = getattr(predictor, "decision_threshold", None)
    if task_type != "regression" and threshold is not None:
        values = decision_scores(values, threshold)
    if not return_uncertainty:
        return values
    return values, (None if pred.uncertainty is None else pred.uncertainty[:, col])
