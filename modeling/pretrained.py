"""Pretrained CrossMat backbones by short name: shipped inside the package, or downloaded from the Hub.

``resolve_model_path(name_or_path)`` turns what a user writes (``model.init_from`` in a recipe, the first
argument of the loaders) into a local folder:

* an existing folder: itself;
* a short name of :data:`SHIPPED` (e.g. ``crossmat-imkt-mp-small``): the folder inside the installed
  package (offline, like ``CHGNet.load()``);
* anything else that looks like a Hub id (``owner/name``): ``huggingface_hub.snapshot_download`` of the
  model files (safetensors, json, markdown only: nothing that would be executed or unpickled); offline
  this fails with a message saying so.

Not Hub remote code: this module may import the rest of the package.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["SHIPPED", "PretrainedNotFoundError", "is_hub_id", "resolve_model_path", "shipped_path"]

_HERE = Path(__file__).resolve().parent / "pretrained_models"

# short name -> (folder inside the package, Hub id once published)
SHIPPED: dict[str, tuple[str, str]] = {
    "crossmat-imkt-mp-small": ("crossmat-imkt-mp-small", "crossmat/crossmat-imkt-mp-small"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# model files only: weights as safetensors, configs, tokenizer and card; never pickles or code
_ALLOW = ["*.safetensors", "*.json", "*.md", "*.txt"]


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hugging Face Hub model id (``owner/name``)."""
    return bool(_HUB_ID.match(text))


class PretrainedNotFoundError(ValueError):
    """``name_or_path`` is neither a folder, a shipped short name, nor a reachable Hub model."""


def shipped_path(name: str) -> Path:
    """The packaged folder of a shipped backbone (raises if the wheel was built without it)."""
    if name not in SHIPPED:
        raise PretrainedNotFoundError(f"{name!r} is not a shipped CrossMat backbone; shipped: {sorted(SHIPPED)}")
    folder = _HERE / SHIPPED[name][0]
    if not (folder / "model.safetensors").is_file():
        raise PretrainedNotFoundError(f"shipped backbone {name!r}: {folder} has no model.safetensors (broken install?)")
    return folder


def resolve_model_path(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local model folder for a folder path, a shipped short name or a Hub id (see module docstring)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if text in SHIPPED:
        return shipped_path(text)
    if not _HUB_ID.match(text) or path.exists():
        raise PretrainedNotFoundError(
            f"{text!r} is not a model folder, a shipped backbone ({', '.join(sorted(SHIPPED))}) or a Hub id (owner/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=_ALLOW))
    except LocalEntryNotFoundError as exc:
        raise PretrainedNotFoundError(
            f"cannot download {text!r} from the Hugging Face Hub: offline or unreachable, and not in the local "
            f"cache ({str(exc).splitlines()[0][:160]}). Use a local folder or a shipped backbone "
            f"({', '.join(sorted(SHIPPED))})"
        ) from None
    except RepositoryNotFoundError:
        raise PretrainedNotFoundError(f"{text!r}: no such model on the Hub (or it is private: log in first)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise PretrainedNotFoundError(f"downloading {text!r} from the Hub failed: {type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0][:200]}") from None  # fmt: skip
