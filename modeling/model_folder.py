"""What a CrossMat model folder is, and the one way to load it.

Two kinds of folder come out of training (see docs/training.md):

* **full**: ``config.json`` + ``model.safetensors`` (+ tokenizer, card, remote code);
* **LoRA**: ``adapter_config.json`` + ``adapter_model.safetensors`` (the adapter, with the property
  head in ``modules_to_save``) + ``config.json`` (the property head's config) + tokenizer. The base
  model is the folder recorded in ``adapter_config.json`` (``base_model_name_or_path``).

:func:`load_model` reads both (a Hub id is read as a full folder); :func:`load_property_model` adds
the checks every entry point needs (a trained property head) and returns the tokenizer too. What the
head outputs (problem type, labels, names, units) is :func:`output_info`, read from the config.

Not Hub remote code: this module may import the rest of the package and ``peft`` (lazily).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from crossmat._extras import needs_extra
from crossmat.tokenization import CrossMatTokenizerFast
from crossmat.tokenization.vocabulary import token_layout

from .configuration_crossmat import CrossMatConfig, num_labels_of, output_info, problem_type_of
from .pipeline_crossmat import scores_from_logits

__all__ = [
    "PROPERTY_ARCHITECTURE",
    "ModelFolderError",
    "NotAPropertyModelError",
    "check_folder",
    "is_lora_folder",
    "is_property_config",
    "load_any_model",
    "load_lora_model",
    "load_model",
    "load_property_model",
    "load_tokenizer",
    "num_labels_of",
    "output_info",
    "problem_type_of",
    "read_config",
    "scores_from_logits",
]

PROPERTY_ARCHITECTURE = "CrossMatForPropertyPrediction"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelFolderError(ValueError):
    """A folder is not a loadable CrossMat model folder (the message names the folder and the reason)."""


class NotAPropertyModelError(ModelFolderError):
    """The model has no trained property head (e.g. an MLM or imKT pretraining checkpoint)."""


def is_lora_folder(path: str | Path) -> bool:
    """A LoRA output folder: an adapter and no full weights."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not any((path / w).is_file() for w in WEIGHT_FILES)


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a local CrossMat folder as a dict; :class:`ModelFolderError` when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"{str(path)!r} is not a folder")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelFolderError(f"{str(path)!r} has no config.json (not a saved model folder)")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if raw.get("model_type") != CrossMatConfig.model_type:
        raise ModelFolderError(f"{str(path)!r} is a {raw.get('model_type')!r} model ({raw.get('architectures')}); "
                               "a CrossMat checkpoint is needed")
    return raw


def check_folder(path: str | Path) -> dict[str, Any]:
    """Check a local folder is a complete CrossMat folder (full or LoRA) with this tokenizer's token
    layout; return its config dict. Raises :class:`ModelFolderError` naming what is missing."""
    path = Path(path)
    raw = read_config(path)
    mismatch = {k: (raw.get(k), v) for k, v in token_layout().items() if raw.get(k, v) != v}
    if mismatch:
        raise ModelFolderError(f"{str(path)!r} uses another token layout (folder vs tokenizer: {mismatch})")
    if is_lora_folder(path):
        if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise ModelFolderError(f"{str(path)!r} has adapter_config.json but no adapter weights")
    elif not any((path / w).is_file() for w in WEIGHT_FILES):
        raise ModelFolderError(f"{str(path)!r} has no model weights (model.safetensors)")
    return raw


def is_property_config(config: Any) -> bool:
    """Whether a config (object or dict) was saved from a property model."""
    archs = config.get("architectures") if isinstance(config, dict) else getattr(config, "architectures", None)
    return PROPERTY_ARCHITECTURE in (archs or [])


def load_lora_model(path: str | Path, merge: bool = False) -> PreTrainedModel:
    """A LoRA output folder: its base model with this folder's property-head config, then the adapter;
    ``merge=True`` folds the adapter into the weights (a plain ``CrossMatForPropertyPrediction``)."""
    from transformers import AutoModelForSequenceClassification

    with needs_extra("lora", "loading a LoRA adapter folder"):
        from peft import PeftConfig, PeftModel

    path = Path(path)
    base_path = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    if not base_path:
        raise ModelFolderError(f"{str(path)!r}: adapter_config.json names no base model (base_model_name_or_path)")
    if Path(base_path).is_absolute() and not Path(base_path).is_dir():
        raise ModelFolderError(f"{str(path)!r}: its base model folder {base_path!r} (adapter_config.json) does not exist")
    config = CrossMatConfig.from_pretrained(str(path))
    base = AutoModelForSequenceClassification.from_pretrained(base_path, config=config, ignore_mismatched_sizes=True,
                                                              use_safetensors=True)
    model = PeftModel.from_pretrained(base, str(path))
    return model.merge_and_unload() if merge else model


def _local_name(path: str | Path) -> str | Path:
    """A local folder for what a user names: a folder is itself, a shipped short name (``crossmat-imkt-mp-small``)
    its packaged folder, a Hub id (``owner/name``) the model files downloaded by ``resolve_model_path`` (weights,
    configs, tokenizer and card; no code, no pickles; offline it fails at once with a message that says so). A name
    that is none of these fails at once too."""
    from .pretrained import SHIPPED, is_hub_id, resolve_model_path

    if Path(path).is_dir():
        return path
    if str(path) in SHIPPED or is_hub_id(str(path)):
        return resolve_model_path(str(path))
    raise ModelFolderError(f"{str(path)!r} is not a model folder, a shipped model ({', '.join(sorted(SHIPPED))}) "
                           "or a Hub id (owner/name)")


def load_model(path: str | Path, *, merge: bool = True, output_loading_info: bool = False) -> Any:
    """A saved property model (full folder, LoRA folder or Hub id), in eval mode.

    LoRA folders are merged by default, so every caller gets the same ``CrossMatForPropertyPrediction``.
    With ``output_loading_info`` returns ``(model, missing_keys)`` (empty for LoRA folders).
    """
    from transformers import AutoModelForSequenceClassification

    path = _local_name(path)  # a local folder from here on (a Hub id is downloaded first)
    check_folder(path)
    if is_lora_folder(path):
        model, missing = load_lora_model(path, merge=merge), []
    else:
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(str(path), output_loading_info=True,
                                                                             use_safetensors=True)
        except OSError as exc:
            raise OSError(f"cannot load a CrossMat model from {str(path)!r}: {exc}") from exc
        missing = list(info.get("missing_keys", ()))
    model.eval()
    return (model, missing) if output_loading_info else model


def load_tokenizer(path: str | Path) -> CrossMatTokenizerFast:
    """The folder's tokenizer (the package default when a local folder has none)."""
    if Path(path).is_dir() and not (Path(path) / "tokenizer.json").is_file():
        return CrossMatTokenizerFast()
    return CrossMatTokenizerFast.from_pretrained(str(path))


def load_any_model(name_or_path: str | Path, *, merge: bool = True) -> PreTrainedModel:
    """Any CrossMat model by name, folder or Hub id, in eval mode (``crossmat.load_model``).

    Shipped short names and Hub ids are resolved to a local folder first (``modeling.pretrained``). A property
    model (full or LoRA folder) loads with its trained head, LoRA merged unless ``merge=False``; a pretraining
    backbone (MLM / imKT) loads as the architecture saved in its ``config.json``."""
    from transformers import AutoModel

    from . import modeling_crossmat
    from .pretrained import resolve_model_path

    path = resolve_model_path(name_or_path)
    raw = check_folder(path)
    if is_property_config(raw):
        return load_model(path, merge=merge)
    arch = (raw.get("architectures") or [""])[0]
    cls = getattr(modeling_crossmat, arch, None) or AutoModel  # no recorded architecture: the bare encoder
    return cls.from_pretrained(str(path), use_safetensors=True).eval()


def load_property_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[PreTrainedModel, CrossMatTokenizerFast]:
    """``(model, tokenizer)`` of a trained property model (full or LoRA folder, or Hub id), in eval mode.

    Refuses checkpoints without a trained property head: ``AutoModelForSequenceClassification`` would
    silently attach a *random* head to an MLM or imKT checkpoint.
    """
    given, path = str(path), _local_name(path)
    raw = read_config(path)
    if not is_property_config(raw):
        raise NotAPropertyModelError(
            f"{given!r} is not a property model: it holds {raw.get('architectures') or 'an unknown architecture'}, "
            f"not a {PROPERTY_ARCHITECTURE}, so it has no trained property head: fine-tune it on your data first "
            "(crossmat evaluate --train ... --test ... --target ..., docs/your_own_data.md; or crossmat train, "
            "docs/training.md)")
    model, missing = load_model(path, output_loading_info=True)
    untrained = sorted(k for k in missing if k.startswith("head."))
    if untrained or not is_property_config(model.config):
        raise NotAPropertyModelError(
            f"{given!r} is not a property model: its checkpoint has no trained property head"
            + (f" (missing {untrained[:2]})" if untrained else "") + "; fine-tune it first (see docs/training.md)")
    return model.to(device), load_tokenizer(path)
