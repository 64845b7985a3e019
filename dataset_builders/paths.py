"""The one home of paths and environment variables: benchmark data, pretrained structure models and
caches. Every module reads them through these functions.

=========================  ==============================================================
variable                   meaning (default)
=========================  ==============================================================
``CROSSMAT_DATA_DIR``      read-only benchmark data (``<repo>/../shared/data``)
``CROSSMAT_MODELS_DIR``    pretrained structure models (``models`` next to the data folder)
``CROSSMAT_TENSORNET``     matgl TensorNet folder (``<models>/matgl/TensorNet-MatPES-PBE-v2025.1-PES``)
``CROSSMAT_MATBENCH_DIR``  MatBench v0.1 source files (``<data>/matbench_v0.1``)
``CROSSMAT_CACHE_DIR``     downloads and feature caches (``~/.cache/crossmat``); the old name
                           ``CROSSMAT_CACHE`` is still read, with a ``DeprecationWarning``
=========================  ==============================================================
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = [
    "DEFAULT_MATGL_MODEL",
    "cache_dir",
    "data_dir",
    "matbench_dir",
    "models_dir",
    "repo_root",
    "resolve_recipe",
    "tensornet_dir",
]

DEFAULT_MATGL_MODEL = "TensorNet-MatPES-PBE-v2025.1-PES"


def _env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def repo_root() -> Path:
    """The checkout root (the folder holding ``dataset_builders/``)."""
    return Path(__file__).resolve().parent.parent


def resolve_recipe(name: str | Path) -> Path:
    """The YAML recipe a user names: an existing file as given; else a recipe shipped with the package
    (``own_data``, ``configs/own_data.yaml``, ``configs/accelerate/two_processes.yaml``); else a path relative
    to the checkout root (``benchmarks/.../x.yaml``, only in a source checkout). Raises ``FileNotFoundError``
    listing the shipped recipes."""
    from crossmat.configs import recipe_path, shipped_recipes

    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = recipe_path(path) if not path.is_absolute() else None
    if shipped is not None:
        return shipped
    if not path.is_absolute() and (repo_root() / path).is_file():
        return repo_root() / path
    raise FileNotFoundError(f"recipe {str(name)!r} not found: not a file, and not a shipped recipe "
                            f"({', '.join(shipped_recipes())})")


def data_dir(must_exist: bool = True) -> Path:
    """``$CROSSMAT_DATA_DIR`` or ``<repo root>/../shared/data``; raises ``FileNotFoundError`` if missing."""
    env = _env("CROSSMAT_DATA_DIR")
    path = env or repo_root().parent / "shared" / "data"
    if must_exist and not path.is_dir():
        how = "CROSSMAT_DATA_DIR" if env else "the default <repo>/../shared/data (set CROSSMAT_DATA_DIR to override)"
        raise FileNotFoundError(f"benchmark data folder {path} does not exist ({how}).")
    return path


def models_dir() -> Path:
    """``$CROSSMAT_MODELS_DIR`` or the ``models`` folder next to :func:`data_dir` (``../shared/models``)."""
    return _env("CROSSMAT_MODELS_DIR") or data_dir(must_exist=False).parent / "models"


def tensornet_dir() -> Path:
    """``$CROSSMAT_TENSORNET`` or ``<models_dir()>/matgl/TensorNet-MatPES-PBE-v2025.1-PES``."""
    return _env("CROSSMAT_TENSORNET") or models_dir() / "matgl" / DEFAULT_MATGL_MODEL


def matbench_dir() -> Path:
    """``$CROSSMAT_MATBENCH_DIR`` or ``data_dir()/matbench_v0.1``."""
    return _env("CROSSMAT_MATBENCH_DIR") or data_dir() / "matbench_v0.1"


def cache_dir(create: bool = True) -> Path:
    """Downloads and feature caches: ``$CROSSMAT_CACHE_DIR`` or ``~/.cache/crossmat``.

    The old variable ``CROSSMAT_CACHE`` is read when ``CROSSMAT_CACHE_DIR`` is unset, with a
    ``DeprecationWarning``.
    """
    path = _env("CROSSMAT_CACHE_DIR")
    if path is None and _env("CROSSMAT_CACHE") is not None:
        warnings.warn("CROSSMAT_CACHE is deprecated; set CROSSMAT_CACHE_DIR instead", DeprecationWarning, stacklevel=2)
        path = _env("CROSSMAT_CACHE")
    path = path or Path.home() / ".cache" / "crossmat"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
