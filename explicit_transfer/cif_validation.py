"""Validation of generated CIFs / structures: parse, composition and site multiplicities, bond lengths, density.

A malformed CIF is an invalid sample with a reason, never an exception.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Composition, Structure

from .elements import element_radius

__all__ = ["ValidationResult", "validate_cif", "validate_structure", "MIN_DISTANCE", "MIN_BOND_RATIO", "DENSITY_RANGE"]

MIN_DISTANCE = 0.5  # Å, absolute floor for any interatomic distance (CDVAE's structural validity)
MIN_BOND_RATIO = 0.5  # distance / (r_i + r_j) must be at least this (atomic radii)
DENSITY_RANGE = (0.5, 25.0)  # g/cm^3


@dataclass
class ValidationResult:
    """Outcome for one sample: ``valid`` and, if not, the reasons; ``structure`` when it parsed."""

    valid: bool
    structure: Structure | None = None
    reasons: list[str] = field(default_factory=list)


def _same_counts(a: Composition, b: Composition) -> bool:
    return a.almost_equals(b, rtol=0, atol=1e-3)


def validate_structure(structure: Structure, expected: Composition | str | None = None,
                       exact_cell: bool = False) -> ValidationResult:
    """Check composition (reduced, or exact cell counts with ``exact_cell``), bond lengths and density."""
    reasons: list[str] = []
    if not structure.is_ordered:
        reasons.append("disordered sites (partial occupancy)")
    if expected is not None:
        exp = Composition(expected) if isinstance(expected, str) else expected
        got = structure.composition
        if exact_cell:
            if not _same_counts(got, exp):
                reasons.append(f"cell composition {got.formula} != prompt {exp.formula} (site multiplicities)")
        elif got.reduced_composition != exp.reduced_composition:
            reasons.append(f"composition {got.reduced_formula} != expected {exp.reduced_formula}")
    if len(structure) > 1:
        dm = structure.distance_matrix
        iu = np.triu_indices(len(structure), k=1)
        d = dm[iu]
        # the dominant species of each site: a disordered sample is already invalid, but its distances are still checked
        radii = np.array([element_radius(max(site.species.items(), key=lambda kv: kv[1])[0].symbol) for site in structure])
        ratio = d / (radii[iu[0]] + radii[iu[1]])
        if d.min() < MIN_DISTANCE:
            reasons.append(f"atoms {d.min():.2f} Å apart (< {MIN_DISTANCE} Å)")
        elif ratio.min() < MIN_BOND_RATIO:
            reasons.append(f"bond length {ratio.min():.2f} x sum of atomic radii (< {MIN_BOND_RATIO})")
    if structure.volume <= 0 or not np.isfinite(structure.volume):
        reasons.append("non-positive cell volume")
    else:
        rho = float(structure.density)
        if not DENSITY_RANGE[0] <= rho <= DENSITY_RANGE[1]:
            reasons.append(f"density {rho:.2f} g/cm3 outside {DENSITY_RANGE}")
    return ValidationResult(not reasons, structure, reasons)


_SUM = re.compile(r"_chemical_formula_sum\s+'?([^'\n]+)'?")


def validate_cif(text: str, expected: Composition | str | None = None, exact_cell: bool = True) -> ValidationResult:
    """Parse CIF text and validate it; the declared ``_chemical_formula_sum`` must match the parsed sites."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pymatgen.io.cif import CifParser

            structures = CifParser.from_str(text).parse_structures(primitive=False)
        if not structures:
            raise ValueError("no structure in CIF")
        s = structures[0]
    except Exception as err:  # noqa: BLE001 - malformed CIFs are invalid samples, never crashes
        return ValidationResult(False, None, [f"CIF does not parse: {type(err).__name__}: {str(err)[:120]}"])
    res = validate_structure(s, expected, exact_cell=exact_cell)
    m = _SUM.search(text)
    if m:
        try:
            declared = Composition(m.group(1))
            if not _same_counts(declared, s.composition):
                res.reasons.append(f"declared formula {declared.formula} != sites {s.composition.formula}")
                res.valid = False
        except Exception:  # noqa: BLE001
            res.reasons.append(f"unreadable _chemical_formula_sum {m.group(1)!r}")
            res.valid = False
    return res
