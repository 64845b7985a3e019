"""The shape of the training code: no import circle inside ``training/`` (function-local imports included)
and no private (underscore) name imported from another module anywhere in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import crossmat

REPO = Path(__file__).resolve().parents[1]


def _module_imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports, at any depth of the file (function-local imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                out |= {n.split(".")[0] for n in names}
            elif node.level == 0 and (node.module or "").startswith(f"crossmat.{package}."):
                out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[2] for a in node.names if a.name.startswith(f"crossmat.{package}.")}
    return out - {path.stem}


def test_training_has_no_import_cycle():
    folder = REPO / "training"
    graph = {p.stem: _module_imports(p, "training") & {q.stem for q in folder.glob("*.py")}
             for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {k: v - {"__init__"} for k, v in graph.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        assert state.get(node) != 1, "import cycle in training/: " + " -> ".join([*path, node])
        state[node] = 1
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        visit(module, [])


def test_no_private_name_is_imported_across_modules():
    bad = []
    for part in (*crossmat.PARTS, "crossmat"):
        for path in sorted((REPO / part).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    bad += [f"{path.relative_to(REPO)}:{node.lineno} imports {a.name} from {'.' * node.level}{node.module}"
                            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "make the name public or keep it in its module:\n" + "\n".join(bad)
