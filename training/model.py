"""The model of a formula stage: from ``model.init_from`` (a checked CrossMat folder, full or LoRA) or from
scratch, the stage's head and config keys, optional element-feature tables, element-embedding init and LoRA."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import crossmat.modeling  # noqa: F401  (registers CrossMat with the Auto classes)
from crossmat.modeling import CrossMatConfig
from crossmat.modeling.element_features import (
    element_feature_table,
    install_element_features,
    install_element_statistics,
)
from crossmat.modeling.model_folder import ModelFolderError, check_folder, is_lora_folder, load_model
from crossmat.modeling.pretrained import PretrainedNotFoundError, resolve_model_path
from crossmat.tokenization.vocabulary import ELEMENT_START, ELEMENTS, token_layout

from .data import StageData
from .recipe import RecipeError, StageRecipe

__all__ = ["build_model", "check_checkpoint", "init_element_embeddings"]


def check_checkpoint(path: Path) -> CrossMatConfig:
    """Load and check the config of ``init_from`` (a CrossMat folder, full or LoRA, with this vocabulary)."""
    try:
        check_folder(path)
    except ModelFolderError as exc:
        raise RecipeError(f"model.init_from: {exc}") from exc
    if not is_lora_folder(path) and not (path / "model.safetensors").is_file():
        raise RecipeError(f"model.init_from {str(path)!r} has no model.safetensors (weights are read from safetensors only)")
    return CrossMatConfig.from_pretrained(str(path))


# weights a model built from a pretrained encoder gets new (its heads; ensemble members and the frozen branch are
# copied from the encoder right after loading) and what it leaves behind (pretraining heads, a fine-tuned model's
# calibration rows, which calibration rebuilds): neither is worth a warning
_EXPECTED_PARTS = ("head", "ensemble_members", "structure_branch", "element_statistics_table", "lm_head", "projection",
                   "uncertainty_keys", "uncertainty_residuals", "forest", "forest_feature_table")


# config keys that shape a pretrained encoder's weights: a recipe that fine-tunes a backbone cannot change them
_ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "fraction_encoding")


def _parts(keys: list[str]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in keys})


def _quiet_from_pretrained(cls: type, source: Path, config: CrossMatConfig, property_model: bool
                           ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``cls.from_pretrained`` without transformers' per-key load report and progress bar (a property model from a
    backbone always has new heads); returns the model and a short account of the weights. Encoder weights missing
    from the checkpoint, or checkpoint tensors nobody expected, are named in a warning."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, loading = cls.from_pretrained(str(source), config=config, ignore_mismatched_sizes=property_model,
                                             use_safetensors=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    missing, unexpected = list(loading["missing_keys"]), list(loading["unexpected_keys"])
    mismatched = [str(m[0]) if isinstance(m, tuple) else str(m) for m in loading["mismatched_keys"]]
    loaded = len(model.state_dict()) - len(missing) - len(mismatched)
    odd_missing = sorted(k for k in missing if k.split(".", 1)[0] not in _EXPECTED_PARTS)
    odd_unexpected = sorted(k for k in unexpected if k.split(".", 1)[0] not in _EXPECTED_PARTS)
    summary = f"{loaded} tensors loaded"
    if missing:
        summary += f"; new: {', '.join(_parts(missing))}"
    if mismatched:
        summary += f"; re-initialised (shape differs): {', '.join(_parts(mismatched))}"
    if unexpected:
        summary += f"; not used: {', '.join(_parts(unexpected))}"
    for what, keys in (("are missing from the checkpoint and start random", odd_missing),
                       ("in the checkpoint are not used by the model", odd_unexpected)):
        if keys:
            print(f"[crossmat] warning: {len(keys)} weight(s) {what}: {', '.join(keys[:8])}"
                  + (" ..." if len(keys) > 8 else ""))
    return model, {"summary": summary, "missing": odd_missing, "unexpected": odd_unexpected,
                   "new": _parts(missing), "mismatched": _parts(mismatched), "not_used": _parts(unexpected)}


def init_element_embeddings(model: torch.nn.Module, source: str, seed: int = 0) -> int:
    """Initialise element-token embeddings from an ``elementembeddings`` representation (mat2vec, magpie,
    ...): standardise features, project to ``hidden_size`` by PCA (zero-padded when smaller), rescale to
    ``initializer_range``. Returns how many element tokens were set (others keep their random init)."""
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


def build_model(recipe: StageRecipe, data: StageData,
                stage_cfg: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The stage's model: from ``model.init_from`` (a checked CrossMat folder) or from scratch; the class
    and the config keys it adds (``stage_cfg``, default ``recipe.kind.model_config(recipe, data)``) come from
    the stage object (``recipe.kind``)."""
    kind = recipe.kind
    cls = kind.model_class
    mcfg = recipe.model
    overrides = dict(mcfg.config)
    bad = sorted(set(overrides) & set(token_layout()))
    if bad:
        raise RecipeError(f"model.config may not change the token layout keys {bad}")
    stage_cfg = kind.model_config(recipe, data) if stage_cfg is None else stage_cfg
    features = overrides.get("element_features")
    if features:
        try:
            overrides["element_feature_dim"] = int(element_feature_table(features)[0].shape[1])
        except ValueError as exc:
            raise RecipeError(f"model.config.element_features: {exc}") from None
    statistics = overrides.get("element_statistics")
    if statistics:
        if not kind.property_model:
            raise RecipeError("model.config.element_statistics feeds a property head: it needs a fine-tuning stage")
        try:
            overrides["element_statistics_dim"] = int(element_feature_table(statistics)[0].shape[1])
        except ValueError as exc:
            raise RecipeError(f"model.config.element_statistics: {exc}") from None
    info: dict[str, Any] = {"class": cls.__name__}
    init = mcfg.init_from
    # every new weight (a fine-tuned backbone's head and extra members' heads too) comes from the recipe's seed, not
    # from whatever the process drew before: torch seeds itself at random at start-up
    torch.manual_seed(int(recipe.seed))
    if init:
        try:  # a folder, a shipped backbone's short name, or a Hub id
            path = resolve_model_path(init)
        except PretrainedNotFoundError as exc:
            raise RecipeError(f"model.init_from: {exc}") from None
        config = check_checkpoint(path)
        kept = {k: (getattr(config, k), overrides.pop(k)) for k in _ARCHITECTURE_KEYS
                if k in overrides and overrides[k] != getattr(config, k)}
        if kept:  # a recipe's size keys describe a model from scratch: a pretrained encoder keeps its own
            print(f"[crossmat] model.init_from {init}: the backbone's "
                  + ", ".join(f"{k}={b!r} (recipe: {r!r})" for k, (b, r) in kept.items()) + " are kept")
            info["architecture_from_backbone"] = {k: b for k, (b, _) in kept.items()}
        for key, value in {**overrides, **stage_cfg}.items():
            setattr(config, key, value)
        config.architectures = [cls.__name__]
        with tempfile.TemporaryDirectory() as tmp:
            source = path
            if is_lora_folder(path):  # a LoRA output folder: start from its merged weights
                load_model(path).save_pretrained(tmp)
                source = Path(tmp)
            try:
                model, loading = _quiet_from_pretrained(cls, source, config, kind.property_model)
            except (OSError, ValueError, RuntimeError) as exc:
                raise RecipeError(f"model.init_from {str(path)!r} cannot be loaded as {cls.__name__} ({exc})") from exc
        info["init_from"] = str(path)
        info["weights"] = loading
        print(f"[crossmat] model.init_from {init}: {loading['summary']}")
        if features and not getattr(check_checkpoint(path), "element_features", None):
            raise RecipeError("model.config.element_features applies to models trained from scratch; "
                              f"{str(path)!r} has no element feature table")
        for member in getattr(model, "ensemble_members", ()):  # every ensemble member starts from the pretrained encoder
            member.crossmat.load_state_dict(model.crossmat.state_dict())
        if getattr(model, "structure_branch", None) is not None:  # the frozen branch is the pretrained encoder
            model.structure_branch.load_state_dict(model.crossmat.state_dict())
    else:
        try:
            config = CrossMatConfig(**{**token_layout(), **overrides, **stage_cfg})
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"model.config: {exc}") from None
        model = cls(config)
        if features:
            info["element_features"] = features
            info["elements_with_features"] = install_element_features(model, features)
        if mcfg.element_embedding_init:
            info["element_embedding_init"] = mcfg.element_embedding_init
            info["elements_initialised"] = init_element_embeddings(model, mcfg.element_embedding_init)
    if statistics:
        info["element_statistics"] = statistics
        info["elements_with_statistics"] = install_element_statistics(model, statistics)
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


