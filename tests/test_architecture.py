"""Dependencies point down the layers (docs/architecture.md): a package imports only packages of a
lower layer, never one of its own layer or above. Checked on the source (ast), including
``importlib.import_module("...")`` calls with a literal name."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lower number = lower layer. A package may import packages of strictly lower layers only.
LAYERS: dict[str, int] = {
    "tokenization": 0,
    "modeling": 1,
    "dataset_builders": 2,
    "model_cards": 2,  # renders cards from config files and numbers; runs no model
    "interpretability": 3,  # explains a loaded model; training calls it for the opt-in card section
    "training": 4,
    "explicit_transfer": 4,
    "inference": 4,
    "evaluation": 5,  # runs training per fold and scores with inference's predictor
    "cli": 6,  # the `crossmat` command: a front end that forwards to every entry point
    "crossmat": 7,  # the package root: crossmat.load_model / predict, lazy access to the parts
}
# Folders that hold data only (package data, no imports of the package).
DATA_PACKAGES = {"configs"}
# (importer, imported) pairs that break the rule on purpose, each with its reason. Empty: none needed.
EXCEPTIONS: dict[tuple[str, str], str] = {}
# Modules of the package root below every layer (any layer may import them): standard library only.
BASE_MODULES = {"crossmat._extras": "crossmat/_extras.py"}  # the one MissingExtraError (which extra to install)
# Files that travel as Hub remote code: only torch, transformers, the standard library and each other.
REMOTE_CODE = ["modeling/configuration_crossmat.py", "modeling/modeling_crossmat.py", "modeling/pipeline_crossmat.py",
               "tokenization/formula_grammar.py", "tokenization/tokenization_crossmat_base.py"]


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, module, relative)`` for every import in ``path`` (``import_module("x")`` included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, node.module or "", node.level > 0))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value, node.args[0].value.startswith(".")))
    return out


def _layer_name(module: str) -> str | None:
    """The package folder an absolute import lands in (``crossmat.training.x`` -> ``training``); ``None`` for
    modules outside the package."""
    parts = module.split(".")
    if parts[0] != "crossmat" or module in BASE_MODULES or (len(parts) > 1 and parts[1] in DATA_PACKAGES):
        return None  # outside the package, a base module, or a data package (below every layer)
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "crossmat"


def test_layers_cover_every_package():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "benchmarks"} - DATA_PACKAGES
    assert packages == set(LAYERS), f"give every package a layer: {sorted(packages ^ set(LAYERS))}"


def test_every_import_goes_through_the_crossmat_namespace():
    """The installed wheel has one top-level name, ``crossmat``: a bare ``import training`` works only in a
    checkout, so no file of the package, the tests or the benchmarks may use one."""
    bare = set(LAYERS) | DATA_PACKAGES
    bad = [f"{path.relative_to(REPO)}:{line} imports {module}"
           for path in sorted(REPO.rglob("*.py")) if not {".venv", ".ci-venv", "_work", "build"} & set(path.parts)
           for line, module, relative in _imports(path)
           if not relative and module.split(".")[0] in bare - {"crossmat"}]
    assert not bad, "import the package as crossmat.<part>:\n" + "\n".join(bad)


def test_no_upward_or_sideways_imports():
    bad = []
    for package, layer in LAYERS.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for line, module, relative in _imports(path):
                target = _layer_name(module)
                if relative or target is None or target == package:
                    continue
                if LAYERS[target] >= layer and (package, target) not in EXCEPTIONS:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {module} "
                               f"(layer {LAYERS[target]} from layer {layer})")
    assert not bad, "imports against the layering (docs/architecture.md):\n" + "\n".join(bad)


def test_remote_code_files_import_only_torch_and_transformers():
    allowed = {"torch", "transformers", "__future__"} | set(sys.stdlib_module_names)
    bad = [f"{f}:{line} imports {module}" for f in REMOTE_CODE for line, module, relative in _imports(REPO / f)
           if not relative and module.split(".")[0] not in allowed]
    assert not bad, "Hub remote-code files must stay self-contained:\n" + "\n".join(bad)


def test_base_modules_import_only_the_standard_library():
    allowed = {"__future__"} | set(sys.stdlib_module_names)
    bad = [f"{f}:{line} imports {module}" for f in BASE_MODULES.values() for line, module, relative in _imports(REPO / f)
           if relative or module.split(".")[0] not in allowed]
    assert not bad, "base modules sit below every layer (standard library only):\n" + "\n".join(bad)


def test_checker_sees_imports_of_every_kind(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import crossmat.inference.engine\nfrom crossmat.training import run_recipe\nfrom . import x\n"
                   "import importlib\nimportlib.import_module('crossmat.interpretability')\n")
    assert [(m, r) for _, m, r in _imports(src)] == [
        ("crossmat.inference.engine", False), ("crossmat.training", False), ("", True), ("importlib", False),
        ("crossmat.interpretability", False)]
    assert [_layer_name(m) for _, m, _ in _imports(src)] == ["inference", "training", None, None, "interpretability"]
