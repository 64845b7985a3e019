"""Where the read-only benchmark data, pretrained structure models and download caches live."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "data_dir", "models_dir", "cache_dir"]


def repo_root() -> Path:
    """The checkout root (the folder holding ``dataset_builders/``)."""
    return Path(__file__).resolve().parent.parent


def data_dir(must_exist: bool = True) -> Path:
    """``$CROSSMAT_DATA_DIR`` or ``<repo root>/../shared/data``; raises ``FileNotFoundError`` if missing."""
    env = os.environ.get("CROSSMAT_DATA_DIR")
    path = Path(env).expanduser() if env else repo_root().parent / "shared" / "data"
    if must_exist and not path.is_dir():
        how = "CROSSMAT_DATA_DIR" if env else "the default <repo>/../shared/data (set CROSSMAT_DATA_DIR to override)"
        raise FileNotFoundError(f"benchmark data folder {path} does not exist ({how}).")
    return path


def models_dir() -> Path:
    """``$CROSSMAT_MODELS_DIR`` or the ``models`` folder next to :func:`data_dir` (``../shared/models``)."""
    env = os.environ.get("CROSSMAT_MODELS_DIR")
    return Path(env).expanduser() if env else data_dir(must_exist=False).parent / "models"


def cache_dir() -> Path:
    """Download cache: ``$CROSSMAT_CACHE`` or ``~/.cache/crossmat``."""
    env = os.environ.get("CROSSMAT_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "crossmat"
    path.mkdir(parents=True, exist_ok=True)
    return path
