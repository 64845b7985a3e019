"""Training recipes: the schema (every key and its default), YAML loading, ``key=value`` overrides and
validation. A recipe is either one *stage* (``stage: mlm | imkt | finetune``) or a *pipeline*
(``pipeline: [stage, ...]``) whose stages can start from an earlier stage's output (``init_from: "@name"``).
See docs/training.md for the meaning of every key.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dataset_builders.paths import data_dir

__all__ = [
    "PIPELINE_KEYS",
    "RecipeError",
    "STAGES",
    "STAGE_DEFAULTS",
    "apply_overrides",
    "load_recipe",
    "resolve_stage",
    "validate_recipe",
]

STAGES = ("mlm", "imkt", "finetune")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the offending key and the reason."""


_SOURCE = None  # marker: a data source (path string, mapping or in-memory datasets.Dataset)

STAGE_DEFAULTS: dict[str, Any] = {
    "stage": None,
    "name": None,
    "seed": 42,
    "model": {
        "init_from": None,
        "config": {},
        "element_embedding_init": None,
        "gradient_checkpointing": False,
    },
    "data": {
        "train": _SOURCE,
        "validation": _SOURCE,
        "test": _SOURCE,
        "formula_column": "formula",
        "target_column": None,
        "embedding_column": "embedding",
        "standardize_embeddings": False,  # imkt: z-score each embedding dimension with the train split's mean/std
        "id_column": None,
        "task": "auto",
        "target_transform": None,
        "validation_fraction": 0.1,
        "test_fraction": 0.0,
        "split_seed": 0,
        "group_by_formula": True,
        "max_train_rows": None,
        "on_invalid": "error",
        "clip_predictions": "none",
        "duplicates": "keep",  # fine-tune train rows of one composition: keep | mean | first | error (reported always)
        "stability_column": None,
        "stability_bias": "none",
        "stability_temperature": 0.05,
        "stability_max": 0.1,
    },
    "train": {
        "epochs": 3,
        "max_steps": None,
        "batch_size": 256,
        "eval_batch_size": 1024,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "weight_decay": 0.01,
        "adam_betas": [0.9, 0.999],
        "lr_scheduler": "linear",
        "warmup_ratio": 0.05,
        "warmup_steps": None,
        "max_grad_norm": 1.0,
        "mixed_precision": "auto",
        "mlm_probability": 0.15,
        "eval_every": None,
        "early_stopping_patience": None,
        "metric_for_best": None,
        "checkpoint_every": 200,
        "keep_checkpoints": 2,
        "resume": False,
        "log_every": 10,
        "trackers": "auto",
        "progress_bar": True,
        "swa_epochs": 0,
    },
    "lora": {
        "enabled": False,
        "r": 8,
        "alpha": 16,
        "dropout": 0.0,
        "target_modules": ["qkv", "out_proj", "fc1", "fc2"],
        "modules_to_save": ["head"],
        "merge": False,
    },
    "push_to_hub": None,
    "card": {},
}

PIPELINE_KEYS = {"pipeline", "name", "description", "seed"}
_CHOICES = {
    "stage": STAGES,
    "data.task": ("auto", "regression", "classification"),
    "data.target_transform": (None, "log10", "log10_abs"),
    "data.on_invalid": ("error", "skip"),
    "data.clip_predictions": ("none", "auto"),
    "data.duplicates": ("keep", "mean", "first", "error"),
    "data.stability_bias": ("none", "weight", "filter"),
    "train.mixed_precision": ("auto", "no", "fp16", "bf16"),
    "train.lr_scheduler": ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"),
}
_FREE_FORM = {"model.config", "card"}  # mappings whose keys are not fixed by the schema


def _expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` in strings (``${CROSSMAT_DATA_DIR}`` defaults to ``<repo>/../shared/data``)."""
    if isinstance(value, str) and "${" in value:
        env = dict(os.environ)
        env.setdefault("CROSSMAT_DATA_DIR", str(data_dir(must_exist=False)))

        def sub(m: re.Match) -> str:
            if m.group(1) not in env:
                raise RecipeError(f"environment variable {m.group(1)!r} used in the recipe is not set")
            return env[m.group(1)]

        return re.sub(r"\$\{(\w+)\}", sub, value)
    if isinstance(value, Mapping):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe file (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    with path.open() as fh:
        recipe = yaml.safe_load(fh)
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe {str(path)!r} must be a YAML mapping, got {type(recipe).__name__}")
    return recipe


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = target
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {} if node.get(key) is None else node[key]
            if not isinstance(node[key], dict):
                raise RecipeError(f"override {dotted!r}: {key!r} is not a mapping")
        node = node[key]
    node[keys[-1]] = value


def apply_overrides(recipe: Mapping[str, Any], overrides: Sequence[str] | None) -> dict[str, Any]:
    """Return a copy of ``recipe`` with ``key.sub=value`` overrides applied (values parsed as YAML).

    In a pipeline, ``<stage name>.key=value`` addresses one stage and ``key=value`` (for a stage key)
    applies to every stage."""
    out = copy.deepcopy(dict(recipe))
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        value = yaml.safe_load(raw) if raw.strip() else None
        if "pipeline" in out and key.split(".")[0] not in PIPELINE_KEYS:
            names = [s.get("name") for s in out["pipeline"] if isinstance(s, dict)]
            head, _, rest = key.partition(".")
            if head in names and rest:
                _set_dotted(out["pipeline"][names.index(head)], rest, value)
            elif head in STAGE_DEFAULTS:
                for stage in out["pipeline"]:
                    _set_dotted(stage, key, value)
            else:
                raise RecipeError(f"override {item!r}: {head!r} is neither a stage name {names} nor a recipe key")
        else:
            _set_dotted(out, key, value)
    return out


def _merge(defaults: Any, given: Any, prefix: str) -> Any:
    if isinstance(defaults, dict) and prefix not in _FREE_FORM:
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise RecipeError(f"recipe key {prefix!r} must be a mapping, got {type(given).__name__}")
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            where = f" under {prefix!r}" if prefix else ""
            raise RecipeError(f"unknown recipe key(s) {unknown}{where}; allowed: {sorted(defaults)}")
        return {k: _merge(v, given.get(k, v), f"{prefix}.{k}" if prefix else k) for k, v in defaults.items()}
    if prefix in _FREE_FORM:
        if given is None:
            return {}
        if not isinstance(given, Mapping):
            raise RecipeError(f"recipe key {prefix!r} must be a mapping, got {type(given).__name__}")
        return dict(given)
    return copy.deepcopy(given) if not _is_dataset(given) else given


def _is_dataset(obj: Any) -> bool:
    return type(obj).__name__ in {"Dataset", "DataFrame"}


def resolve_stage(stage: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults into one stage recipe, rejecting unknown keys and bad values, naming the key."""
    if not isinstance(stage, Mapping):
        raise RecipeError(f"a stage recipe must be a mapping, got {type(stage).__name__}")
    resolved = _merge(STAGE_DEFAULTS, {k: v for k, v in stage.items()}, "")
    resolved = {k: (_expand_env(v) if k != "data" else v) for k, v in resolved.items()}
    resolved["data"] = {k: (v if _is_dataset(v) else _expand_env(v)) for k, v in resolved["data"].items()}
    for dotted, choices in _CHOICES.items():
        node: Any = resolved
        for key in dotted.split("."):
            node = node[key]
        if node not in choices:
            raise RecipeError(f"recipe key {dotted!r} is {node!r}; choose one of {list(choices)}")
    data, train = resolved["data"], resolved["train"]
    if data["train"] is None:
        raise RecipeError("recipe key 'data.train' is required (a dataset folder, CSV/parquet file or builtin source)")
    if resolved["stage"] == "finetune" and not data["target_column"]:
        raise RecipeError("stage 'finetune' needs 'data.target_column'")
    for key in ("validation_fraction", "test_fraction"):
        if not 0.0 <= float(data[key]) < 1.0:
            raise RecipeError(f"recipe key 'data.{key}' must be in [0, 1), got {data[key]!r}")
    if not 0.0 < float(train["mlm_probability"]) <= 1.0:
        raise RecipeError(f"recipe key 'train.mlm_probability' must be in (0, 1], got {train['mlm_probability']!r}")
    for key in (("gradient_accumulation_steps", "epochs", "checkpoint_every", "keep_checkpoints")
                + (() if train["batch_size"] == "auto" else ("batch_size",))):
        if not isinstance(train[key], int) or train[key] < 1:
            raise RecipeError(f"recipe key 'train.{key}' must be a positive integer, got {train[key]!r}")
    if not isinstance(train["swa_epochs"], int) or train["swa_epochs"] < 0:
        raise RecipeError(f"recipe key 'train.swa_epochs' must be a non-negative integer, got {train['swa_epochs']!r}")
    if train["max_steps"] is not None and (not isinstance(train["max_steps"], int) or train["max_steps"] < 1):
        raise RecipeError(f"recipe key 'train.max_steps' must be a positive integer, got {train['max_steps']!r}")
    if resolved["lora"]["enabled"] and resolved["stage"] != "finetune":
        raise RecipeError("recipe key 'lora.enabled' is only supported for stage 'finetune'")
    if resolved["model"]["init_from"] is not None and resolved["model"]["element_embedding_init"]:
        raise RecipeError("'model.element_embedding_init' only applies to models trained from scratch (no init_from)")
    if data["stability_bias"] != "none" and not data["stability_column"]:
        raise RecipeError("'data.stability_bias' needs 'data.stability_column' (e.g. energy_above_hull)")
    return resolved


def validate_recipe(recipe: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Validate a stage or pipeline recipe; return the resolved stages (each with a unique ``name``)."""
    if "pipeline" in recipe:
        unknown = sorted(set(recipe) - PIPELINE_KEYS)
        if unknown:
            raise RecipeError(f"unknown pipeline key(s) {unknown}; allowed: {sorted(PIPELINE_KEYS)}")
        stages = recipe["pipeline"]
        if not isinstance(stages, list) or not stages:
            raise RecipeError("'pipeline' must be a non-empty list of stage recipes")
        resolved = []
        for i, stage in enumerate(stages):
            if not isinstance(stage, Mapping):
                raise RecipeError(f"pipeline stage {i} must be a mapping")
            merged = dict(stage)
            if "seed" in recipe and "seed" not in merged:
                merged["seed"] = recipe["seed"]
            try:
                r = resolve_stage(merged)
            except RecipeError as err:
                raise RecipeError(f"pipeline stage {i} ({stage.get('name', stage.get('stage'))}): {err}") from None
            r["name"] = r["name"] or f"{i}_{r['stage']}"
            resolved.append(r)
        names = [r["name"] for r in resolved]
        if len(set(names)) != len(names):
            raise RecipeError(f"pipeline stage names must be unique, got {names}")
        for i, r in enumerate(resolved):
            ref = r["model"]["init_from"]
            if isinstance(ref, str) and ref.startswith("@") and ref[1:] not in names[:i]:
                raise RecipeError(f"stage {r['name']!r}: init_from {ref!r} names no earlier stage (have {names[:i]})")
        return resolved
    r = resolve_stage(recipe)
    r["name"] = r["name"] or r["stage"]
    return [r]
