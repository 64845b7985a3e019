"""Parse any chemical formula a user may type into a validated pymatgen ``Composition``.

Canonical form (what :func:`canonical_formula` returns and the tokenizer sees):

* groups, nesting and hydrates are expanded: ``(NH4)2SO4`` -> ``H8 S N2 O4`` amounts;
* elements are ordered by Pauling electronegativity, as pymatgen's ``Composition.formula`` orders
  them (ties broken by symbol), so the same composition always gives the same string;
* integer compositions are reduced by their greatest common divisor (``Fe4O6`` -> ``Fe2O3``);
  fractional compositions (``Li0.5Co0.5O2``, steel recipes) keep the amounts as written;
* amounts are written positionally (never ``1e-05``), rounded to 12 significant digits to remove
  floating-point noise, and an amount of exactly 1 is omitted (``NaCl``).

The grammar (what is accepted, what is refused and why) is :mod:`tokenization.formula_grammar`, the
one validator shared with the remote-code tokenizer that model folders carry: :func:`parse_formula`
runs it first and builds the pymatgen ``Composition`` from its amounts. Hydrate separators are ``·``,
``•``, ``∙``, ``*`` and a ``.`` that is not between two digits (``CuSO4.H2O``); the part after the
separator may start with a multiplier (``CuSO4·5H2O``). A ``.`` between digits is always a decimal
point, so ``CuSO4.5H2O`` means ``Cu S O4.5 H2 O`` (write ``CuSO4·5H2O`` for the pentahydrate).
Whitespace inside a formula, line breaks, control characters and scientific notation are refused.
"""

from __future__ import annotations

import math
import warnings
from functools import reduce

import numpy as np
from pymatgen.core import Composition, Element

from .formula_grammar import FormulaError, parse_amounts

__all__ = ["FormulaError", "parse_formula", "canonical_formula", "format_amount"]


def _electronegativities() -> dict[str, float]:
    """Pauling electronegativity per symbol; elements without one (noble gases) sort last (10.0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every element without a Pauling value
        return {el.symbol: (10.0 if math.isnan(el.X) else float(el.X)) for el in Element}


_X = _electronegativities()


def parse_formula(formula: object) -> Composition:
    """Return the validated pymatgen ``Composition`` of ``formula`` or raise :class:`FormulaError`."""
    if isinstance(formula, Composition):
        comp = formula
    else:
        comp = Composition(parse_amounts(formula))
    if not comp.valid:
        raise FormulaError(formula, "contains dummy species / unknown elements")
    if len(comp) == 0:
        raise FormulaError(formula, "no elements")
    for el, amt in comp.items():
        if not math.isfinite(amt) or amt <= 0:
            raise FormulaError(formula, f"amount of {el} is {amt}")
    return comp


def format_amount(x: float) -> str:
    """Positional decimal string of ``x`` at 12 significant digits, no exponent, no trailing zeros."""
    return np.format_float_positional(float(f"{x:.12g}"), trim="-")


def canonical_formula(formula: object) -> str:
    """The canonical string of ``formula`` (see module docstring)."""
    comp = parse_formula(formula)
    amounts = {el.symbol: float(a) for el, a in comp.items()}
    if all(abs(a - round(a)) < 1e-8 for a in amounts.values()):
        g = reduce(math.gcd, (round(a) for a in amounts.values()))
        amounts = {s: round(a) / g for s, a in amounts.items()}
    order = sorted(amounts, key=lambda s: (_X[s], s))
    out = []
    for sym in order:
        a = format_amount(amounts[sym])
        out.append(sym if a == "1" else f"{sym}{a}")
    return "".join(out)
