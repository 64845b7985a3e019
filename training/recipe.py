"""Training recipes: the schema (every key and its default, as the :class:`StageRecipe` dataclasses), YAML
loading, ``key=value`` overrides and validation. A recipe is either one *stage* (``stage: mlm | imkt |
finetune``, any name of the stage registry in :mod:`training.stage_kinds`) or a *pipeline* (``pipeline:
[stage, ...]``) whose stages can start from an earlier stage's output (``init_from: "@name"``). The YAML
stays a plain mapping; :func:`resolve_stage` turns one stage of it into a typed :class:`StageRecipe`.
See docs/training.md for the meaning of every key.

The stage registry (:data:`STAGE_TYPES`, filled by :func:`register_stage` in :mod:`training.stage_kinds`) lives
here, at the bottom of the package, so a recipe finds its stage object without importing upwards.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from crossmat.dataset_builders.paths import data_dir
from crossmat.dataset_builders.targets import TARGET_TRANSFORMS

__all__ = [
    "PIPELINE_KEYS",
    "STAGE_TYPES",
    "DataSection",
    "LoraSection",
    "ModelSection",
    "RecipeError",
    "STAGE_DEFAULTS",
    "StageRecipe",
    "TrainSection",
    "apply_overrides",
    "as_stage_recipe",
    "load_recipe",
    "register_stage",
    "resolve_stage",
    "stage_kind",
    "validate_recipe",
]


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the offending key and the reason."""


# ``stage:`` name -> stage class (a :class:`training.stage_kinds.Stage` subclass); filled by :func:`register_stage`
STAGE_TYPES: dict[str, type] = {}


def register_stage(cls: type) -> type:
    """Class decorator: make ``cls`` the stage for ``stage: <cls.name>`` in recipes."""
    STAGE_TYPES[cls.name] = cls
    return cls


def stage_kind(name: str | None) -> Any:
    """The stage object (a :class:`training.stage_kinds.Stage`) for a recipe's ``stage:`` name."""
    if name not in STAGE_TYPES:
        raise RecipeError(f"recipe key 'stage' is {name!r}; choose one of {list(STAGE_TYPES)}")
    return STAGE_TYPES[name]()


# A data source (``data.train`` / ``validation`` / ``test``) is a path string, a mapping or an in-memory
# ``datasets.Dataset`` / ``pandas.DataFrame`` (evaluation injects fold frames); ``None`` when absent.
Source = Any


@dataclass(frozen=True)
class ModelSection:
    """``model:``: where the weights start and the config overrides."""

    init_from: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    element_embedding_init: str | None = None
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class DataSection:
    """``data:``: the sources, columns, splits and per-stage data options."""

    train: Source = None
    validation: Source = None
    test: Source = None
    formula_column: str = "formula"
    target_column: str | list[str] | None = None
    embedding_column: str = "embedding"
    standardize_embeddings: bool = False  # imkt: z-score each embedding dimension with the train split's mean/std
    missing_embeddings: str = "error"  # imkt rows with no embedding (null): error | mlm_only (they train MLM only)
    structure_targets: Source = None  # fine-tune: formula -> structure vector table (train.structure_aux_weight)
    id_column: str | None = None
    task: str = "auto"
    positive_label: str | None = None  # a target of two text labels: this one is class 1 (default: sorts last)
    target_transform: str | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.0
    split_seed: int = 0
    group_by_formula: bool = True
    max_train_rows: int | None = None
    on_invalid: str = "error"
    clip_predictions: str = "none"
    duplicates: str = "keep"  # fine-tune train rows of one composition: keep | mean | first | error (reported always)
    stability_column: str | None = None
    stability_bias: str = "none"
    stability_temperature: float = 0.05
    stability_max: float = 0.1
    cif_column: str = "cif"  # cif_lm: the CIF column of every structure table
    cif_forms: list[str] = field(default_factory=lambda: ["symmetrized", "p1"])  # cif_lm augmentation forms
    cif_decimals: list[int] = field(default_factory=lambda: [4])  # cif_lm: one corpus copy per rounding


@dataclass(frozen=True)
class TrainSection:
    """``train:``: optimisation, evaluation, checkpoints and logging."""

    epochs: int = 3
    max_steps: int | None = None
    batch_size: int | str = 256
    eval_batch_size: int = 1024
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.05
    warmup_steps: int | None = None
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"
    mlm_probability: float = 0.15
    eval_every: int | None = None
    early_stopping_patience: int | None = None
    metric_for_best: str | None = None
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    resume: bool | str = False
    log_every: int = 10
    trackers: Any = "auto"
    progress_bar: bool = True
    swa_epochs: int = 0
    swa_guard_z: float | None = 4.0  # regression: keep the best-validation checkpoint if it beats SWA by > z SE
    calibrate: bool = True  # property models: uncertainty / decision threshold from the validation rows
    forest_blend: str | None = None  # property models: blend a forest on these element statistics (e.g. magpie)
    forest_blend_tasks: str = "all"  # which property models get the blend: all, classification or regression
    forest_trees: int = 200  # trees of the blended forest
    forest_max_nodes: int = 1_000_000  # cap on the stored forest's nodes (leaves per tree <= max / (2 * trees))
    same_composition: bool = False  # property models: correct formulas whose composition has training rows
    layer_lr_decay: float = 1.0  # < 1: encoder layer i of L at lr * decay ** (L - i), embeddings one step lower
    anchor_weight: float = 0.0  # > 0: keep the pooled embedding near the initial backbone's (training/anchor.py)
    freeze_encoder_epochs: int = 0  # > 0: train only the head for this many epochs, then everything (LP-FT)
    structure_aux_weight: float = 0.0  # > 0: regress data.structure_targets from the pooled embedding (structure_aux.py)


@dataclass(frozen=True)
class LoraSection:
    """``lora:``: LoRA adaptation (property-model stages: :attr:`Stage.property_model`)."""

    enabled: bool = False
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "out_proj", "fc1", "fc2"])
    modules_to_save: list[str] | None = field(default_factory=lambda: ["head"])
    merge: bool = False


@dataclass(frozen=True)
class StageRecipe:
    """One resolved stage: every key filled with its default and validated (built by :func:`resolve_stage`).

    ``stage`` names the stage type in the registry (:mod:`training.stage_kinds`); :attr:`kind` is its
    object, which owns everything that differs between stages. Change a field with
    ``dataclasses.replace``; :meth:`to_dict` is the plain mapping written to ``recipe.yaml`` and cards."""

    stage: str | None = None
    name: str | None = None
    seed: int = 42
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    lora: LoraSection = field(default_factory=LoraSection)
    push_to_hub: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> Any:
        """The stage object (MLM, imKT, fine-tune, ... a :class:`training.stage_kinds.Stage`) for :attr:`stage`."""
        if self.stage not in STAGE_TYPES:
            raise RecipeError(f"recipe key 'stage' is {self.stage!r}; choose one of {list(STAGE_TYPES)}")
        return STAGE_TYPES[self.stage]()

    @classmethod
    def from_dict(cls, resolved: Mapping[str, Any]) -> StageRecipe:
        """The dataclass for a fully resolved mapping (every key present; see :func:`resolve_stage`)."""
        return cls(**{k: (_SECTIONS[k](**v) if k in _SECTIONS else v) for k, v in resolved.items()})

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain nested mapping in schema order (in-memory data sources are kept as is)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


_SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "train": TrainSection, "lora": LoraSection}


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value if _is_dataset(value) else copy.deepcopy(value)


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cls):
        value = f.default_factory() if f.default_factory is not MISSING else f.default
        out[f.name] = _defaults(type(value)) if is_dataclass(value) else value
    return out


# every stage key and its default, as a nested mapping (derived from the dataclasses above)
STAGE_DEFAULTS: dict[str, Any] = _defaults(StageRecipe)

PIPELINE_KEYS = {"pipeline", "name", "description", "seed"}
_CHOICES = {
    "data.task": ("auto", "regression", "classification"),
    "data.target_transform": (None, *TARGET_TRANSFORMS),
    "data.on_invalid": ("error", "skip"),
    "data.missing_embeddings": ("error", "mlm_only"),
    "data.clip_predictions": ("none", "auto"),
    "data.duplicates": ("keep", "mean", "first", "error"),
    "data.stability_bias": ("none", "weight", "filter"),
    "train.mixed_precision": ("auto", "no", "fp16", "bf16"),
    "train.forest_blend_tasks": ("all", "classification", "regression"),
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


def load_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML recipe file (not yet validated). ``extends: NAME`` (a shipped recipe such as ``default``, or a
    file relative to this one) starts from that recipe; this file's keys override it, mappings merged key by key."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    with path.open() as fh:
        recipe = yaml.safe_load(fh)
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe {str(path)!r} must be a YAML mapping, got {type(recipe).__name__}")
    base_name = recipe.pop("extends", None)
    if base_name is None:
        return recipe
    if path.resolve() in _seen:
        raise RecipeError(f"recipe {str(path)!r}: 'extends' forms a loop ({' -> '.join(str(p) for p in _seen)})")
    base_path = path.parent / str(base_name)
    if not base_path.is_file():
        from crossmat.configs import recipe_path

        base_path = recipe_path(str(base_name)) or base_path
    if not base_path.is_file():
        raise RecipeError(f"recipe {str(path)!r}: extends {base_name!r}, which is neither a shipped recipe nor a file")
    return merge_recipes(load_recipe(base_path, (*_seen, path.resolve())), recipe)


def merge_recipes(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key, anything else (lists, scalars, null) replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_recipes(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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


def resolve_stage(stage: Mapping[str, Any]) -> StageRecipe:
    """Fill defaults into one stage recipe, rejecting unknown keys and bad values, naming the key; the
    stage type adds its own checks (:meth:`Stage.validate`)."""
    if not isinstance(stage, Mapping):
        raise RecipeError(f"a stage recipe must be a mapping, got {type(stage).__name__}")
    resolved = _merge(STAGE_DEFAULTS, {k: v for k, v in stage.items()}, "")
    resolved = {k: (_expand_env(v) if k != "data" else v) for k, v in resolved.items()}
    resolved["data"] = {k: (v if _is_dataset(v) else _expand_env(v)) for k, v in resolved["data"].items()}
    if resolved["stage"] not in STAGE_TYPES:
        raise RecipeError(f"recipe key 'stage' is {resolved['stage']!r}; choose one of {list(STAGE_TYPES)}")
    kind = STAGE_TYPES[resolved["stage"]]
    for dotted, choices in _CHOICES.items():
        node: Any = resolved
        for key in dotted.split("."):
            node = node[key]
        if node not in choices:
            raise RecipeError(f"recipe key {dotted!r} is {node!r}; choose one of {list(choices)}")
    data, train = resolved["data"], resolved["train"]
    if data["train"] is None:
        raise RecipeError("recipe key 'data.train' is required (a dataset folder, CSV/parquet file or builtin source)")
    for key in ("validation_fraction", "test_fraction"):
        if not 0.0 <= float(data[key]) < 1.0:
            raise RecipeError(f"recipe key 'data.{key}' must be in [0, 1), got {data[key]!r}")
    if not 0.0 < float(train["mlm_probability"]) <= 1.0:
        raise RecipeError(f"recipe key 'train.mlm_probability' must be in (0, 1], got {train['mlm_probability']!r}")
    for key in (("gradient_accumulation_steps", "epochs", "checkpoint_every", "keep_checkpoints", "forest_trees",
                 "forest_max_nodes")
                + (() if train["batch_size"] == "auto" else ("batch_size",))):
        if not isinstance(train[key], int) or train[key] < 1:
            raise RecipeError(f"recipe key 'train.{key}' must be a positive integer, got {train[key]!r}")
    if not isinstance(train["layer_lr_decay"], (int, float)) or not 0 < float(train["layer_lr_decay"]) <= 1:
        raise RecipeError(f"recipe key 'train.layer_lr_decay' must be in (0, 1], got {train['layer_lr_decay']!r}")
    if not isinstance(train["anchor_weight"], (int, float)) or float(train["anchor_weight"]) < 0:
        raise RecipeError(f"recipe key 'train.anchor_weight' must be a non-negative number, got {train['anchor_weight']!r}")
    if float(train["anchor_weight"]) > 0 and not (kind.property_model and resolved["model"]["init_from"]):
        raise RecipeError("recipe key 'train.anchor_weight' anchors a fine-tuned model to its pretrained backbone: "
                          "it needs a property stage with model.init_from")
    aux = train["structure_aux_weight"]
    if isinstance(aux, bool) or not isinstance(aux, (int, float)) or float(aux) < 0:
        raise RecipeError(f"recipe key 'train.structure_aux_weight' must be a non-negative number, got {aux!r}")
    if float(aux) > 0 and not (kind.property_model and data.get("structure_targets") is not None):
        raise RecipeError("recipe key 'train.structure_aux_weight' regresses each training row's crystal-structure "
                          "vector from its formula embedding: it needs a property stage and data.structure_targets "
                          "(a table with 'formula' and the vector column data.embedding_column)")
    freeze = train["freeze_encoder_epochs"]
    if isinstance(freeze, bool) or not isinstance(freeze, int) or freeze < 0:
        raise RecipeError(f"recipe key 'train.freeze_encoder_epochs' must be a non-negative integer, got {freeze!r}")
    if freeze > 0 and not (kind.property_model and resolved["model"]["init_from"]):
        raise RecipeError("recipe key 'train.freeze_encoder_epochs' keeps a pretrained backbone frozen while the head "
                          "learns: it needs a property stage with model.init_from")
    if (resolved["model"].get("config") or {}).get("structure_branch") and not (
            kind.property_model and resolved["model"]["init_from"]):
        raise RecipeError("recipe key 'model.config.structure_branch' keeps a frozen copy of the pretrained backbone "
                          "beside the fine-tuned encoder: it needs a property stage with model.init_from")
    guard = train["swa_guard_z"]
    if guard is not None and (isinstance(guard, bool) or not isinstance(guard, (int, float)) or float(guard) <= 0):
        raise RecipeError(f"recipe key 'train.swa_guard_z' must be a positive number or null, got {guard!r}")
    if not isinstance(train["swa_epochs"], int) or train["swa_epochs"] < 0:
        raise RecipeError(f"recipe key 'train.swa_epochs' must be a non-negative integer, got {train['swa_epochs']!r}")
    if train["max_steps"] is not None and (not isinstance(train["max_steps"], int) or train["max_steps"] < 1):
        raise RecipeError(f"recipe key 'train.max_steps' must be a positive integer, got {train['max_steps']!r}")
    blend = train["forest_blend"]
    if blend is not None and (not isinstance(blend, str) or not kind.property_model):
        raise RecipeError(f"recipe key 'train.forest_blend' is {blend!r}: the name of an element property table (e.g. "
                          "magpie) for a fine-tuning stage, or null")
    if not isinstance(train["same_composition"], bool):
        raise RecipeError(f"recipe key 'train.same_composition' must be true or false, got {train['same_composition']!r}")
    if resolved["lora"]["enabled"] and not kind.property_model:
        allowed = " or ".join(repr(n) for n, t in STAGE_TYPES.items() if t.property_model)
        raise RecipeError(f"recipe key 'lora.enabled' is only supported for stage {allowed}")
    explain = resolved["card"].get("explain")
    if explain is not None and (not kind.property_model or not isinstance(explain, (bool, str))):
        allowed = " or ".join(repr(n) for n, t in STAGE_TYPES.items() if t.property_model)
        raise RecipeError(f"card.explain {explain!r}: true or a formula, for stage {allowed} only "
                          f"(stage {resolved['stage']!r})")
    if resolved["model"]["init_from"] is not None and resolved["model"]["element_embedding_init"]:
        raise RecipeError("'model.element_embedding_init' only applies to models trained from scratch (no init_from)")
    if data["stability_bias"] != "none" and not data["stability_column"]:
        raise RecipeError("'data.stability_bias' needs 'data.stability_column' (e.g. energy_above_hull)")
    recipe = StageRecipe.from_dict(resolved)
    recipe.kind.validate(recipe)
    return recipe


def as_stage_recipe(recipe: StageRecipe | Mapping[str, Any]) -> StageRecipe:
    """``recipe`` as a :class:`StageRecipe`: a resolved one as is, a stage mapping resolved."""
    return recipe if isinstance(recipe, StageRecipe) else resolve_stage(recipe)


def validate_recipe(recipe: Mapping[str, Any]) -> list[StageRecipe]:
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
            resolved.append(replace(r, name=r.name or f"{i}_{r.stage}"))
        names = [r.name for r in resolved]
        if len(set(names)) != len(names):
            raise RecipeError(f"pipeline stage names must be unique, got {names}")
        for i, r in enumerate(resolved):
            ref = r.model.init_from
            if isinstance(ref, str) and ref.startswith("@") and ref[1:] not in names[:i]:
                raise RecipeError(f"stage {r.name!r}: init_from {ref!r} names no earlier stage (have {names[:i]})")
        return resolved
    r = resolve_stage(recipe)
    return [replace(r, name=r.name or r.stage)]
