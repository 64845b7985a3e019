"""Stage runner: build the model for a stage, train it with :class:`StageTrainer`, write the output folder
(config, safetensors or adapter, tokenizer, model card, ``metrics.jsonl``, resolved recipe), and
chain stages of a pipeline. Entry point for Python callers: :func:`run_recipe`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

import crossmat.modeling  # noqa: F401  (registers CrossMat with the Auto classes)
from crossmat._extras import needs_extra
from crossmat.model_cards import write_model_card
from crossmat.modeling import CrossMatConfig
from crossmat.modeling.model_folder import (
    ModelFolderError,
    check_folder,
    is_lora_folder,
    load_lora_model,
    load_model,
    load_property_model,
    scores_from_logits,
)
from crossmat.modeling.pipeline_files import add_pipeline_to_model_dir
from crossmat.modeling.pretrained import PretrainedNotFoundError, resolve_model_path
from crossmat.tokenization import CrossMatTokenizerFast
from crossmat.tokenization.vocabulary import ELEMENT_START, ELEMENTS, token_layout

from .data import StageData, prepare_stage_data
from .loop import StageTrainer, latest_checkpoint, make_accelerator
from .recipe import RecipeError, StageRecipe, apply_overrides, as_stage_recipe, validate_recipe

__all__ = ["StageRun", "build_model", "init_element_embeddings", "load_lora_model", "prediction_table", "run_recipe", "run_stage",
           "train_recipe", "train_stage"]

DONE_FILE = "training_info.json"


def _check_checkpoint(path: Path) -> CrossMatConfig:
    """Load and check the config of ``init_from`` (a CrossMat folder, full or LoRA, with this vocabulary)."""
    try:
        check_folder(path)
    except ModelFolderError as exc:
        raise RecipeError(f"model.init_from: {exc}") from exc
    if not is_lora_folder(path) and not (path / "model.safetensors").is_file():
        raise RecipeError(f"model.init_from {str(path)!r} has no model.safetensors (weights are read from safetensors only)")
    return CrossMatConfig.from_pretrained(str(path))


def init_element_embeddings(model: torch.nn.Module, source: str, seed: int = 0) -> int:
    """Initialise element-token embeddings from an ``elementembeddings`` representation (mat2vec, magpie,
    ...): standardise features, project to ``hidden_size`` by PCA (zero-padded when smaller), rescale to
    ``initializer_range``. Returns how many element tokens were set (others keep their random init)."""
    with needs_extra("train", "model.element_embedding_init"):
        from elementembeddings.core import Embedding

    try:
        emb = Embedding.load_data(source)
    except (KeyError, ValueError, OSError) as exc:  # elementembeddings raises KeyError for an unknown name
        raise RecipeError(f"model.element_embedding_init {source!r} cannot be loaded by elementembeddings ({exc})") from exc
    table = emb.embeddings
    symbols = [s for s in ELEMENTS if s in table]
    if not symbols:
        raise RecipeError(f"model.element_embedding_init {source!r} covers no element")
    x = np.stack([np.asarray(table[s], dtype=np.float64) for s in symbols])
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    word = model.get_input_embeddings().weight
    hidden = word.shape[1]
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    proj = u * s
    proj = proj[:, :hidden] if proj.shape[1] >= hidden else np.pad(proj, ((0, 0), (0, hidden - proj.shape[1])))
    proj = proj / (proj.std() + 1e-12) * model.config.initializer_range
    ids = torch.tensor([ELEMENT_START + ELEMENTS.index(sym) for sym in symbols])
    with torch.no_grad():
        word[ids] = torch.as_tensor(proj, dtype=word.dtype)
    return len(symbols)


def build_model(recipe: StageRecipe | Mapping[str, Any], data: StageData) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The stage's model: from ``model.init_from`` (a checked CrossMat folder) or from scratch; the class
    and the config keys it adds come from the stage object (``recipe.kind``)."""
    recipe = as_stage_recipe(recipe)
    kind = recipe.kind
    cls = kind.model_class
    mcfg = recipe.model
    overrides = dict(mcfg.config)
    bad = sorted(set(overrides) & set(token_layout()))
    if bad:
        raise RecipeError(f"model.config may not change the token layout keys {bad}")
    stage_cfg = kind.model_config(recipe, data)
    features = overrides.get("element_features")
    if features:
        from crossmat.modeling.element_features import element_feature_table

        try:
            overrides["element_feature_dim"] = int(element_feature_table(features)[0].shape[1])
        except ValueError as exc:
            raise RecipeError(f"model.config.element_features: {exc}") from None
    info: dict[str, Any] = {"class": cls.__name__}
    init = mcfg.init_from
    if init:
        try:  # a folder, a shipped backbone's short name, or a Hub id
            path = resolve_model_path(init)
        except PretrainedNotFoundError as exc:
            raise RecipeError(f"model.init_from: {exc}") from None
        config = _check_checkpoint(path)
        for key, value in {**overrides, **stage_cfg}.items():
            setattr(config, key, value)
        config.architectures = [cls.__name__]
        with tempfile.TemporaryDirectory() as tmp:
            source = path
            if is_lora_folder(path):  # a LoRA output folder: start from its merged weights
                load_model(path).save_pretrained(tmp)
                source = Path(tmp)
            try:
                model = cls.from_pretrained(str(source), config=config, ignore_mismatched_sizes=kind.ignore_mismatched_sizes,
                                            use_safetensors=True)
            except (OSError, ValueError, RuntimeError) as exc:
                raise RecipeError(f"model.init_from {str(path)!r} cannot be loaded as {cls.__name__} ({exc})") from exc
        info["init_from"] = str(path)
        if features and not getattr(_check_checkpoint(path), "element_features", None):
            raise RecipeError("model.config.element_features applies to models trained from scratch; "
                              f"{str(path)!r} has no element feature table")
        kind.after_init_from(model)
    else:
        try:
            config = CrossMatConfig(**{**token_layout(), **overrides, **stage_cfg})
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"model.config: {exc}") from None
        torch.manual_seed(int(recipe.seed))
        model = cls(config)
        if features:
            from crossmat.modeling.element_features import install_element_features

            info["element_features"] = features
            info["elements_with_features"] = install_element_features(model, features)
        if mcfg.element_embedding_init:
            info["element_embedding_init"] = mcfg.element_embedding_init
            info["elements_initialised"] = init_element_embeddings(model, mcfg.element_embedding_init)
    if mcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if recipe.lora.enabled:
        if not init:
            raise RecipeError("lora.enabled needs model.init_from (a pretrained CrossMat model to adapt)")
        from peft import LoraConfig, get_peft_model

        lc = recipe.lora
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in lc.target_modules if t not in names]
        if missing:
            raise RecipeError(f"lora.target_modules {missing} are not modules of {cls.__name__} (e.g. qkv, out_proj, fc1, fc2)")
        model = get_peft_model(model, LoraConfig(r=int(lc.r), lora_alpha=float(lc.alpha), lora_dropout=float(lc.dropout),
                                                 target_modules=list(lc.target_modules),
                                                 modules_to_save=list(lc.modules_to_save or []) or None))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        info["lora_trainable_parameters"] = int(trainable)
    info["parameters"] = int(sum(p.numel() for p in model.parameters()))
    return model, info


def calibrate_on(model: torch.nn.Module, split: Any) -> dict[str, float]:
    """Calibrate a trained property model on held-out rows (``modeling.calibration``): a standard deviation for
    every regression prediction, the decision threshold of a binary classifier. Returns what was chosen."""
    from crossmat.modeling.calibration import calibrate_property_model

    targets = split.targets if split.targets is not None else split.tensors["labels"].numpy()
    device = next(model.parameters()).device
    result = calibrate_property_model(model, split.tensors["input_ids"].to(device),
                                      split.tensors["attention_mask"].to(device), targets)
    return {k: float(v) for k, v in result.as_dict().items()}


def prediction_table(split: Any, pred: Mapping[str, np.ndarray], target_names: list[str],
                     regression: bool, threshold: float | None = None) -> pd.DataFrame:
    """``[id,] formula, target, prediction`` (+ ``uncertainty`` when the model gives one) at full float64
    precision; several targets get ``target_<name>, prediction_<name>``; classification adds
    ``probability`` (of class 1) and ``prediction`` is the label."""
    formulas = split.source_formulas if split.source_formulas is not None else split.formulas
    frame = pd.DataFrame({"formula": formulas})
    if split.ids is not None:
        frame.insert(0, "id", split.ids)
    targets = split.targets if split.targets is not None else split.tensors["labels"].numpy()
    logits = np.asarray(pred["logits"], dtype=np.float64)
    unc = pred.get("uncertainty")
    if not regression:
        problem = "single_label_classification" if logits.shape[-1] > 1 else "multi_label_classification"
        prob = scores_from_logits(torch.from_numpy(logits), problem)[:, -1].numpy()
        frame["target"] = np.asarray(targets).reshape(len(frame), -1)[:, 0].astype(np.int64)
        frame["prediction"] = (prob >= (0.5 if threshold is None else threshold)).astype(np.int64)
        frame["probability"] = prob
        return frame
    targets = np.asarray(targets, dtype=np.float64).reshape(len(frame), -1)
    logits = logits.reshape(len(frame), -1)
    unc = None if unc is None else np.asarray(unc, dtype=np.float64).reshape(len(frame), -1)
    single = targets.shape[1] == 1
    names = target_names if len(target_names) == targets.shape[1] else [str(j) for j in range(targets.shape[1])]
    for j, name in enumerate(names):
        suffix = "" if single else f"_{name}"
        frame[f"target{suffix}"] = targets[:, j]
        frame[f"prediction{suffix}"] = logits[:, j]
        if unc is not None:
            frame[f"uncertainty{suffix}"] = unc[:, j]
    return frame


def _card_metrics(task_type: str, metrics: Mapping[str, Mapping[str, float]], sources: Mapping[str, str]) -> list[dict]:
    """model-index entries, each attributed to the data its split really came from."""
    out = []
    for split, values in metrics.items():
        desc = source_description(sources.get(split, "unknown"))
        for name, value in values.items():
            if name == "loss" or value is None or not np.isfinite(value):
                continue
            out.append({"name": f"{split} {name}", "type": name, "value": float(value), "dataset_name": desc,
                        "dataset_type": _source_head(desc), "split": split, "task_type": task_type})
    return out


def source_description(desc: str) -> str:
    """A data-source description with every local path shortened to its file name (no absolute paths
    in cards)."""
    return re.sub(r"(?<![\w:])(?:~|\.{1,2})?/[^\s(),]+", lambda m: Path(m.group()).name, str(desc))


def _source_head(desc: str) -> str:
    return re.split(r" \(| where ", desc, maxsplit=1)[0]


def _benchmark_of(desc: str) -> str | None:
    low = str(desc).lower()
    return "matbench" if "matbench" in low else "llm4mat" if "llm4mat" in low else None


def _write_card(out: Path, recipe: StageRecipe, data: StageData, metrics: Mapping[str, Mapping[str, float]],
                lora_adapter: bool) -> Path:
    stage = recipe.kind
    kind = "lora-adapter" if lora_adapter else stage.card_kind
    base = recipe.model.init_from
    sources = data.info["sources"]
    card_metrics = _card_metrics(stage.card_task_type(data.info.get("task")), metrics, sources)
    extra = {k: v for k, v in recipe.card.items()}
    hub_ids = list(extra.pop("datasets", None) or [])  # recipe card.datasets: Hub ids of the training data
    train_desc = source_description(sources["train"])  # training data only; local sources -> prose, not metadata
    extra.setdefault("training_data", f"Trained on {train_desc}" + (f" (Hub: {', '.join(hub_ids)})" if hub_ids else "")
                     + f"; validation (model selection): {source_description(sources.get('validation', 'none'))}.")
    datasets = hub_ids
    extra.setdefault("benchmark", _benchmark_of(source_description(sources["train"])))
    notes = stage.card_notes(data)
    if notes:
        extra["leakage_notes"] = [*(extra.get("leakage_notes") or []), *notes]
    extra.pop("explain", None)
    explanation = None
    explain = recipe.card.get("explain")
    if explain:  # opt-in: an example explanation computed here and passed to the card
        from crossmat.interpretability import card_section

        model, tokenizer = load_property_model(out)
        examples = extra.get("examples") or ["Fe2O3"]
        formula = explain if isinstance(explain, str) else ([examples] if isinstance(examples, str) else examples)[0]
        explanation = card_section(model, tokenizer, formula)
    return write_model_card(out, kind=kind, base_model=str(base) if base else None, datasets=datasets,
                            recipe=_printable(recipe), metrics=card_metrics, explanation=explanation, **extra)


def _printable(recipe: StageRecipe) -> dict[str, Any]:
    """The resolved recipe with in-memory data replaced by a description (for YAML and cards)."""
    out = json.loads(json.dumps(recipe.to_dict(), default=lambda o: f"<in-memory {type(o).__name__}>"))
    return out


def _recipe_hash(recipe: StageRecipe) -> str:
    r = _printable(recipe)
    r.get("train", {}).pop("resume", None)
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:16]


# keys that may differ between a run and its resumption: they change neither the optimisation nor the model
RESUME_FREE_KEYS = ("train.resume", "train.progress_bar", "train.trackers", "train.log_every", "train.checkpoint_every",
                    "train.keep_checkpoints", "push_to_hub", "card")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _check_resume_recipe(recipe: StageRecipe, out: Path, checkpoint: Path | None = None) -> None:
    """Refuse to resume a checkpoint with a recipe other than the one it was trained with (its output folder's
    ``recipe.yaml``), naming the changed keys; :data:`RESUME_FREE_KEYS` may change. ``checkpoint``: the one a
    stage with its own loop resumes from (default: the shared loop's newest)."""
    resume = recipe.train.resume
    if not resume:
        return
    explicit = isinstance(resume, str) and resume not in ("auto", "true")
    ckpt = Path(resume) if explicit else (checkpoint or latest_checkpoint(out))
    if ckpt is None:
        return
    stored = (ckpt.parent.parent if explicit else out) / "recipe.yaml"
    if not stored.is_file():
        raise RecipeError(f"train.resume: {stored} (the recipe the checkpoint {ckpt} was trained with) is missing; "
                          "cannot check that the run continues with the same recipe")
    try:
        old = yaml.safe_load(stored.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(f"train.resume: cannot read {stored} ({err})") from None
    if not isinstance(old, Mapping):
        raise RecipeError(f"train.resume: {stored} is not a recipe mapping")

    def free(key: str) -> bool:
        return any(key == f or key.startswith(f + ".") for f in RESUME_FREE_KEYS)

    before = {k: v for k, v in _flatten(old).items() if not free(k)}
    now = {k: v for k, v in _flatten(_printable(recipe)).items() if not free(k)}
    changed = sorted(k for k in set(before) | set(now) if before.get(k, "<unset>") != now.get(k, "<unset>"))
    if changed:
        shown = ", ".join(f"{k} {before.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise RecipeError(f"train.resume: the recipe differs from the one {ckpt} was trained with ({stored}): "
                          f"{shown}{more}; resume with the same recipe, or start a new run in another output folder")


@dataclass
class StageRun:
    """A finished stage: its output folder and, when it trained in this process, the trained model with the
    weights saved there (eval mode, on the training device, without Accelerate's mixed-precision wrapper; a
    LoRA adapter stays a peft model, unmerged) and its tokenizer (``None`` on other processes and for a
    stage skipped as already finished)."""

    folder: Path
    model: torch.nn.Module | None = None
    tokenizer: CrossMatTokenizerFast | None = None


def run_stage(recipe: StageRecipe | Mapping[str, Any], output_dir: str | Path) -> Path:
    """Run one stage recipe; return its output folder (see module docstring)."""
    return train_stage(recipe, output_dir).folder


def train_stage(recipe: StageRecipe | Mapping[str, Any], output_dir: str | Path) -> StageRun:
    """Run one stage recipe (resolved, or a stage mapping); return its folder and the trained model."""
    recipe = as_stage_recipe(recipe)
    out = Path(output_dir)
    kind = recipe.kind
    stage = recipe.stage
    _check_resume_recipe(recipe, out)
    if kind.own_loop:
        return kind.run(recipe, out)
    if recipe.push_to_hub and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise RecipeError(f"push_to_hub {recipe.push_to_hub!r} requested but HF_HUB_OFFLINE is set; unset it or drop --push-to-hub")
    tokenizer = CrossMatTokenizerFast()
    data = prepare_stage_data(recipe, tokenizer)  # validates everything before any training
    model, model_info = build_model(recipe, data)
    accelerator = make_accelerator(recipe, out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump(_printable(recipe), sort_keys=False))
        if data.rejected is not None:
            data.rejected.to_csv(out / "rejected_rows.csv", index=False)
    accelerator.wait_for_everyone()
    if data.rejected is not None:
        accelerator.print(f"[crossmat] {len(data.rejected)} row(s) rejected; see {out / 'rejected_rows.csv'}")
    if accelerator.log_with:
        accelerator.init_trackers(recipe.name or stage, config={"stage": stage, "seed": recipe.seed})
    trainer = StageTrainer(recipe, model, data, out, accelerator)
    accelerator.print(f"[crossmat] stage {recipe.name!r} ({stage}): {len(data.train)} train rows, "
                      f"{len(data.validation) if data.validation else 0} validation, {len(data.test) if data.test else 0} test; "
                      f"{trainer.total_steps} steps on {accelerator.num_processes} process(es), device {accelerator.device}")
    summary = trainer.train()
    metrics: dict[str, dict[str, float]] = {}
    if kind.property_model and recipe.train.calibrate and data.validation is not None and not recipe.lora.enabled:
        metrics["calibration"] = calibrate_on(accelerator.unwrap_model(trainer.model), data.validation)
        accelerator.print(f"[crossmat] calibrated on {len(data.validation)} held-out validation rows: "
                          + ", ".join(f"{k}={v:.4g}" for k, v in metrics["calibration"].items()))
    if data.validation is not None:
        metrics["validation"] = trainer.evaluate(data.validation, "validation")
    if data.test is not None:
        metrics["test"] = trainer.evaluate(data.test, "test")
        trainer._log({"split": "test", **metrics["test"]})
    # collective: every process takes part in the gather; only the main process writes the table below
    test_pred = trainer.predict(data.test) if data.test is not None and kind.writes_test_predictions else None
    unwrapped = accelerator.unwrap_model(trainer.model)
    lora = recipe.lora
    lora_adapter = bool(lora.enabled and not lora.merge)
    if accelerator.is_main_process:
        for stale in ("model.safetensors", "adapter_model.safetensors", "adapter_config.json"):
            (out / stale).unlink(missing_ok=True)
        if lora.enabled and lora.merge:
            unwrapped = unwrapped.merge_and_unload()
        unwrapped.save_pretrained(str(out), safe_serialization=True)
        if lora_adapter:
            unwrapped.get_base_model().config.save_pretrained(str(out))  # the property head's config
        tokenizer.save_pretrained(str(out))
        if test_pred is not None:
            cfg = unwrapped.config if not lora_adapter else unwrapped.get_base_model().config
            frame = prediction_table(data.test, test_pred, list(cfg.target_names or []),
                                     cfg.problem_type == "regression", getattr(cfg, "decision_threshold", None))
            frame.to_csv(out / "test_predictions.csv", index=False)
        info = {"stage": stage, "name": recipe.name, "recipe_hash": _recipe_hash(recipe), "model": model_info,
                "data": data.info, "training": summary, "metrics": metrics}
        if kind.writes_pipeline_files and not lora_adapter:
            add_pipeline_to_model_dir(out)  # pipeline remote code + widget labels, before the card
        (out / DONE_FILE).write_text(json.dumps(info, indent=2, default=str))
        card = _write_card(out, recipe, data, metrics, lora_adapter)
        print(f"[crossmat] {stage} done: model -> {out}\n[crossmat]   card -> {card}\n[crossmat]   metrics -> {out / 'metrics.jsonl'}"
              + ("".join(f"\n[crossmat]   {s}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()) for s, m in metrics.items())))
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        accelerator.end_training()
    if recipe.push_to_hub and accelerator.is_main_process:
        _push(out, recipe.push_to_hub)
    if not accelerator.is_main_process:
        return StageRun(out)
    if not (lora.enabled and lora.merge):  # the merged model is a fresh module; otherwise drop the autocast wrapper
        unwrapped = accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return StageRun(out, unwrapped.eval(), tokenizer)


class PushError(RecipeError):
    """Uploading a finished stage to the Hub failed (the model stays saved locally)."""


# what a stage folder uploads: model, tokenizer, remote code, card and metrics; never the checkpoints
# (optimizer/RNG pickles) or any other pickle
PUSH_ALLOW = ["*.safetensors", "*.json", "*.md", "*.py", "*.yaml", "*.jsonl", "*.csv", "*.txt"]
PUSH_IGNORE = ["checkpoints/*", "*.tmp*", "*.pkl", "*.bin", "*.pt", "*.pth"]


def push_command(out: Path, repo_id: str) -> str:
    """The ``hf upload`` command (huggingface_hub >= 1.0) that uploads what :func:`_push` uploads."""
    import shlex

    flags = [f"--include {shlex.quote(p)}" for p in PUSH_ALLOW] + [f"--exclude {shlex.quote(p)}" for p in PUSH_IGNORE]
    return f"hf upload {shlex.quote(repo_id)} {shlex.quote(str(out))} . " + " ".join(flags)


def _network_errors() -> tuple[type[BaseException], ...]:
    import importlib

    errors: list[type[BaseException]] = [OSError]  # includes huggingface_hub's HTTP, token and offline errors
    for name in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _push(out: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo_id, allow_patterns=PUSH_ALLOW, ignore_patterns=PUSH_IGNORE)
    except _network_errors() as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise PushError(f"push to the Hub ({repo_id}) failed: {type(exc).__name__}: {reason}. "
                        f"The trained model is saved locally at {out}; push it later with `{push_command(out, repo_id)}`") from None
    print(f"[crossmat] pushed {out} to https://huggingface.co/{repo_id}")


def _stage_done(out: Path, recipe: StageRecipe) -> bool:
    f = out / DONE_FILE
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("recipe_hash") == _recipe_hash(recipe)
    except (json.JSONDecodeError, OSError):
        return False


def run_recipe(recipe: Mapping[str, Any], output_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Validate ``recipe`` (stage or pipeline) with ``overrides`` applied, run it in-process with
    Accelerate, and return the folder of the final stage: ``output_dir`` itself for a single stage,
    ``output_dir/<last stage name>`` for a pipeline (which writes one sub-folder per stage under
    ``output_dir``; ``.parent`` of the result is that root). With ``train.resume`` set, finished
    pipeline stages are skipped and an interrupted stage resumes from its newest checkpoint."""
    return train_recipe(recipe, output_dir, overrides).folder


def train_recipe(recipe: Mapping[str, Any], output_dir: str | Path, overrides: list[str] | None = None) -> StageRun:
    """:func:`run_recipe`, returning the final stage's :class:`StageRun` (its folder and, when it was
    trained here, the trained model and tokenizer)."""
    recipe = apply_overrides(recipe, overrides)
    stages = validate_recipe(recipe)
    root = Path(output_dir)
    if "pipeline" not in recipe:
        return train_stage(stages[0], root)
    outputs: dict[str, Path] = {}
    last = StageRun(root)
    for stage in stages:
        ref = stage.model.init_from
        if isinstance(ref, str) and ref.startswith("@"):
            stage = replace(stage, model=replace(stage.model, init_from=str(outputs[ref[1:]])))
        out = root / stage.name
        if stage.train.resume and _stage_done(out, stage):
            print(f"[crossmat] stage {stage.name!r} already finished in {out}; skipping")
            last = StageRun(out)
        else:
            last = train_stage(stage, out)
        outputs[stage.name] = out
    return last
