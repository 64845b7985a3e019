"""Per-element descriptors used for chemical-similarity element assignment and volume rescaling."""

from __future__ import annotations

from functools import cache

import numpy as np
from pymatgen.core import Element

__all__ = ["element_features", "element_radius", "FEATURE_NAMES"]

FEATURE_NAMES = ("electronegativity", "atomic_radius", "ionic_radius", "oxidation_state", "row", "group")
# Rough scales that put each descriptor on a comparable footing (units: Pauling, Å, Å, e, -, -).
_SCALE = np.array([0.5, 0.3, 0.3, 1.5, 2.0, 4.0])


@cache
def _raw(symbol: str) -> np.ndarray:
    el = Element(symbol)
    x = el.X if el.X == el.X and el.X else 1.5  # noble gases have NaN electronegativity
    r = float(el.atomic_radius or el.atomic_radius_calculated or 1.5)
    ri = float(el.average_ionic_radius) or r
    ox = el.common_oxidation_states
    o = float(np.mean(ox)) if ox else 0.0
    return np.array([x, r, ri, o, el.row, el.group], dtype=float)


def element_features(symbols: list[str] | tuple[str, ...]) -> np.ndarray:
    """Scaled descriptor matrix ``[len(symbols), 6]`` (Euclidean distance = chemical dissimilarity)."""
    return np.stack([_raw(s) for s in symbols]) / _SCALE


def element_radius(symbol: str) -> float:
    """Atomic radius in Å (fallback: calculated radius, then 1.5 Å)."""
    return float(_raw(symbol)[1])
