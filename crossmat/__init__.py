"""CrossMat: composition-based materials property prediction with cross-modal knowledge transfer.

The installed package is ``crossmat``; its parts live in the repository's top-level folders and install as
``crossmat.tokenization``, ``crossmat.modeling``, ``crossmat.training`` and so on (see docs/architecture.md).

    >>> import crossmat
    >>> model = crossmat.load_model("crossmat-imkt-mp-small")   # a shipped name, a folder, a LoRA folder or a Hub id

Importing ``crossmat`` stays light: the subpackages load when first used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PARTS = ("tokenization", "modeling", "dataset_builders", "model_cards", "interpretability", "training", "inference",
         "explicit_transfer", "evaluation", "cli", "configs")

try:
    __version__ = version("crossmat")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["PARTS", "__version__", "load_model", "predict"]


class _CheckoutParts(importlib.abc.MetaPathFinder):
    """In a source checkout (this file in ``<root>/crossmat/``, the parts in ``<root>/<part>/``), import
    ``crossmat.<part>`` from this checkout's folders, ahead of any installed copy: a second worktree or an
    uninstalled clone runs its own code. An installed wheel lays the parts inside ``crossmat/`` and never
    needs this finder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        prefix, _, part = fullname.partition(".")
        if prefix != "crossmat" or part not in PARTS:
            return None
        init = self.root / part / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "modeling" / "__init__.py").is_file():
    sys.meta_path.insert(0, _CheckoutParts(_ROOT))


def load_model(name_or_path: str, *, merge: bool = True) -> Any:
    """Load a CrossMat model by what a user writes: a shipped short name (``crossmat-imkt-mp-small``), a local
    folder (full or LoRA), or a Hub id. Property models come back with their trained head (LoRA merged unless
    ``merge=False``); pretraining backbones (MLM / imKT) as the class they were saved with. Eval mode."""
    from crossmat.modeling.model_folder import load_any_model

    return load_any_model(name_or_path, merge=merge)


def predict(model: str, formulas: list[str] | str, **kwargs: Any) -> Any:
    """Predict a property for formulas with a property model (name, folder or Hub id); see
    ``crossmat.inference.FormulaPredictor`` for the options and the returned fields."""
    from crossmat.inference.engine import FormulaPredictor, formula_list

    rows = formula_list(formulas)  # a table or a file name is refused before the model loads
    return FormulaPredictor(model, **kwargs).predict(rows)


def __getattr__(name: str) -> Any:  # crossmat.modeling, crossmat.training, ... on first use
    if name in PARTS:
        return importlib.import_module(f"crossmat.{name}")
    raise AttributeError(f"module 'crossmat' has no attribute {name!r}")
