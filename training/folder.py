"""What a stage folder holds and how it is written: the weights (safetensors or a LoRA adapter), tokenizer,
pipeline code, model card, ``test_predictions.csv``, ``training_info.json`` (:data:`DONE_FILE`), the resolved
``recipe.yaml``, checkpoints (:func:`latest_checkpoint`), the resume check against the stored recipe, and the
upload to the Hub. :class:`StageRun` is what a finished stage hands back.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from crossmat.model_cards import write_model_card
from crossmat.modeling.model_folder import load_property_model
from crossmat.modeling.pipeline_crossmat import label_indices, scores_from_logits
from crossmat.modeling.pipeline_files import add_pipeline_to_model_dir
from crossmat.tokenization import CrossMatTokenizerFast

from .data import StageData
from .recipe import RecipeError, StageRecipe

__all__ = ["DONE_FILE", "PUSH_ALLOW", "PUSH_IGNORE", "RESUME_FREE_KEYS", "PushError", "StageRun", "check_resume_recipe",
           "latest_checkpoint", "prediction_table", "printable_recipe", "push_command", "push_folder", "recipe_hash",
           "save_stage_folder", "source_description", "stage_done", "write_recipe"]

DONE_FILE = "training_info.json"


@dataclass
class StageRun:
    """A finished stage: its output folder and, when it trained in this process, the trained model with the
    weights saved there (eval mode, on the training device, without Accelerate's mixed-precision wrapper; a
    LoRA adapter stays a peft model, unmerged) and its tokenizer (``None`` on other processes and for a
    stage skipped as already finished)."""

    folder: Path
    model: torch.nn.Module | None = None
    tokenizer: CrossMatTokenizerFast | None = None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint folder under ``output_dir/checkpoints`` (or None)."""
    root = Path(output_dir) / "checkpoints"
    found = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "COMPLETE").is_file()) if root.is_dir() else []
    return found[-1] if found else None


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


def check_resume_recipe(recipe: StageRecipe, out: Path, checkpoint: Path | None = None) -> None:
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
    now = {k: v for k, v in _flatten(printable_recipe(recipe)).items() if not free(k)}
    changed = sorted(k for k in set(before) | set(now) if before.get(k, "<unset>") != now.get(k, "<unset>"))
    if changed:
        shown = ", ".join(f"{k} {before.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise RecipeError(f"train.resume: the recipe differs from the one {ckpt} was trained with ({stored}): "
                          f"{shown}{more}; resume with the same recipe, or start a new run in another output folder")


def prediction_table(split: Any, pred: Mapping[str, np.ndarray], target_names: list[str],
                     regression: bool, threshold: float | None = None, class_names: list[str] | None = None,
                     class_weights: list[float] | None = None) -> pd.DataFrame:
    """``[id,] formula, target, prediction`` (+ ``uncertainty`` when the model gives one) at full float64
    precision; several targets get ``target_<name>, prediction_<name>``; classification adds
    ``probability`` (of class 1) and ``prediction`` is the label; three classes or more add
    ``probability_<class name>`` of every class and ``prediction`` is the model's label (the most probable class, or
    the largest ``probability x class_weights``)."""
    formulas = split.source_formulas if split.source_formulas is not None else split.formulas
    frame = pd.DataFrame({"formula": formulas})
    if split.ids is not None:
        frame.insert(0, "id", split.ids)
    targets = split.targets if split.targets is not None else split.tensors["labels"].numpy()
    logits = np.asarray(pred["logits"], dtype=np.float64)
    unc = pred.get("uncertainty")
    if not regression:
        problem = "single_label_classification" if logits.shape[-1] > 1 else "multi_label_classification"
        probs = scores_from_logits(torch.from_numpy(logits), problem).numpy()
        frame["target"] = np.asarray(targets).reshape(len(frame), -1)[:, 0].astype(np.int64)
        if probs.shape[-1] > 2:
            frame["prediction"] = label_indices(torch.from_numpy(probs), None, class_weights).numpy()
            names = class_names if class_names and len(class_names) == probs.shape[-1] else range(probs.shape[-1])
            for i, name in enumerate(names):
                frame[f"probability_{name}"] = probs[:, i]
            return frame
        prob = probs[:, -1]
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
        if split in ("calibration", "forest_blend", "same_composition"):  # what the validation rows chose, not scores on a split
            continue
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


def card_fields(recipe: StageRecipe, data: StageData, metrics: Mapping[str, Mapping[str, float]],
                lora_adapter: bool) -> dict[str, Any]:
    """The arguments of :func:`model_cards.write_model_card` for a formula stage (no explanation section)."""
    stage = recipe.kind
    base = recipe.model.init_from
    sources = data.info["sources"]
    task_type, notes = stage.card(data)
    extra = {k: v for k, v in recipe.card.items()}
    hub_ids = list(extra.pop("datasets", None) or [])  # recipe card.datasets: Hub ids of the training data
    train_desc = source_description(sources["train"])  # training data only; local sources -> prose, not metadata
    extra.setdefault("training_data", f"Trained on {train_desc}" + (f" (Hub: {', '.join(hub_ids)})" if hub_ids else "")
                     + f"; validation (model selection): {source_description(sources.get('validation', 'none'))}.")
    extra.setdefault("benchmark", _benchmark_of(source_description(sources["train"])))
    if notes:
        extra["leakage_notes"] = [*(extra.get("leakage_notes") or []), *notes]
    extra.pop("explain", None)
    return {"kind": "lora-adapter" if lora_adapter else stage.card_kind, "base_model": str(base) if base else None,
            "datasets": hub_ids, "recipe": printable_recipe(recipe), "metrics": _card_metrics(task_type, metrics, sources),
            **extra}


def card_explanation(out: Path, recipe: StageRecipe) -> Any:
    """The opt-in ``card.explain`` section: an example explanation of the saved model (None when not asked)."""
    explain = recipe.card.get("explain")
    if not explain:
        return None
    from crossmat.interpretability import card_section

    model, tokenizer = load_property_model(out)
    examples = recipe.card.get("examples") or ["Fe2O3"]
    formula = explain if isinstance(explain, str) else ([examples] if isinstance(examples, str) else examples)[0]
    return card_section(model, tokenizer, formula)


def printable_recipe(recipe: StageRecipe) -> dict[str, Any]:
    """The resolved recipe with in-memory data replaced by a description (for YAML and cards)."""
    def describe(o: Any) -> str:  # a frame named by its caller (DataFrame.attrs["source"]) keeps its name
        return f"<{getattr(o, 'attrs', {}).get('source') or f'in-memory {type(o).__name__}'}>"

    out = json.loads(json.dumps(recipe.to_dict(), default=describe))
    return out


def recipe_hash(recipe: StageRecipe) -> str:
    r = printable_recipe(recipe)
    r.get("train", {}).pop("resume", None)
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:16]


def stage_done(out: Path, recipe: StageRecipe) -> bool:
    f = out / DONE_FILE
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("recipe_hash") == recipe_hash(recipe)
    except (json.JSONDecodeError, OSError):
        return False


class PushError(RecipeError):
    """Uploading a finished stage to the Hub failed (the model stays saved locally)."""


# what a stage folder uploads: model, tokenizer, remote code, card and metrics; never the checkpoints
# (optimizer/RNG pickles) or any other pickle
PUSH_ALLOW = ["*.safetensors", "*.json", "*.md", "*.py", "*.yaml", "*.jsonl", "*.csv", "*.txt"]
PUSH_IGNORE = ["checkpoints/*", "*.tmp*", "*.pkl", "*.bin", "*.pt", "*.pth"]


def push_command(out: Path, repo_id: str) -> str:
    """The ``hf upload`` command (huggingface_hub >= 1.0) that uploads what :func:`push_folder` uploads."""
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


def push_folder(out: Path, repo_id: str) -> None:
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




def write_recipe(out: Path, recipe: StageRecipe, rejected: pd.DataFrame | None = None) -> None:
    """Start the folder: the resolved ``recipe.yaml`` and, when rows were rejected, ``rejected_rows.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(printable_recipe(recipe), sort_keys=False))
    if rejected is not None:
        rejected.to_csv(out / "rejected_rows.csv", index=False)


def save_stage_folder(out: Path, recipe: StageRecipe, data: StageData, model: torch.nn.Module,
                      tokenizer: CrossMatTokenizerFast, info: dict[str, Any],
                      test_pred: Mapping[str, np.ndarray] | None) -> torch.nn.Module:
    """Write a trained formula stage (main process only): weights (merged LoRA, adapter or full), tokenizer,
    ``test_predictions.csv``, pipeline code, ``training_info.json`` and the card; returns the saved module."""
    lora = recipe.lora
    lora_adapter = bool(lora.enabled and not lora.merge)
    info = {"stage": recipe.stage, "name": recipe.name, "recipe_hash": recipe_hash(recipe), **info}
    metrics = info["metrics"]
    card = card_fields(recipe, data, metrics, lora_adapter)
    config = model.get_base_model().config if lora.enabled else model.config
    frame = None if test_pred is None else prediction_table(data.test, test_pred, list(config.target_names or []),
                                                            config.problem_type == "regression",
                                                            getattr(config, "decision_threshold", None),
                                                            [str(config.id2label[i]) for i in range(config.num_labels)],
                                                            getattr(config, "class_decision_weights", None))
    for stale in ("model.safetensors", "adapter_model.safetensors", "adapter_config.json"):
        (out / stale).unlink(missing_ok=True)
    if lora.enabled and lora.merge:
        model = model.merge_and_unload()
    model.save_pretrained(str(out), safe_serialization=True)
    if lora_adapter:
        config.save_pretrained(str(out))  # the property head's config
    tokenizer.save_pretrained(str(out))
    if frame is not None:
        frame.to_csv(out / "test_predictions.csv", index=False)
    if recipe.kind.property_model and not lora_adapter:
        add_pipeline_to_model_dir(out)  # pipeline remote code + widget labels, before the card
    (out / DONE_FILE).write_text(json.dumps(info, indent=2, default=str))
    explanation = card_explanation(out, recipe) if recipe.card.get("explain") else None
    card_path = write_model_card(out, explanation=explanation, **card)
    numbers = {s: ", ".join(f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, (int, float))
                            and not isinstance(v, bool)) for s, m in metrics.items()}
    print(f"[crossmat] {recipe.stage} done: model -> {out}\n[crossmat]   card -> {card_path}\n[crossmat]   metrics -> {out / 'metrics.jsonl'}"
          + "".join(f"\n[crossmat]   {s}: {text}" for s, text in numbers.items() if text))  # a section with no numbers is left out
    return model
