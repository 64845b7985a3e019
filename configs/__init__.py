"""The shipped YAML recipes (package data): ``recipe_path("own_data")`` or ``recipe_path("configs/mlm.yaml")``."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent

__all__ = ["CONFIG_DIR", "recipe_path", "shipped_recipes"]


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``own_data``, ``quickstart``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def recipe_path(name: str | Path) -> Path | None:
    """The shipped recipe a user names: ``own_data``, ``own_data.yaml``, ``configs/own_data.yaml`` or
    ``configs/accelerate/two_processes.yaml``; ``None`` when it is not a shipped recipe."""
    parts = Path(name).parts
    rel = Path(*parts[1:]) if parts and parts[0] == "configs" and len(parts) > 1 else Path(name)
    for candidate in (rel, rel.with_suffix(".yaml")):
        path = CONFIG_DIR / candidate
        if path.is_file() and CONFIG_DIR in path.resolve().parents:
            return path
    return None
