"""Parse any chemical formula a user may type into a validated pymatgen ``Composition``.

Canonical form (what :func:`canonical_formula` returns and the tokenizer sees):

* groups, nesting and hydrates are expanded: ``(NH4)2SO4`` -> ``H8 S N2 O4`` amounts;
* elements are ordered by Pauling electronegativity, as pymatgen's ``Composition.formula`` orders
  them (ties broken by symbol), so the same composition always gives the same string;
* integer compositions are reduced by their greatest common divisor (``Fe4O6`` -> ``Fe2O3``);
  fractional compositions (``Li0.5Co0.5O2``, steel recipes) keep the amounts as written;
* amounts are written positionally (never ``1e-05``), rounded to 12 significant digits to remove
  floating-point noise, and an amount of exactly 1 is omitted (``NaCl``).

Hydrate separators are ``·``, ``•``, ``∙``, ``*`` and a ``.`` that is not between two digits
(``CuSO4.H2O``); the part after the separator may start with a multiplier (``CuSO4·5H2O``).
A ``.`` between digits is always a decimal point, so ``CuSO4.5H2O`` means ``Cu S O4.5 H2 O``
(write ``CuSO4·5H2O`` for the pentahydrate).
"""

from __future__ import annotations

import math
import re
import warnings
from functools import reduce

import numpy as np
from pymatgen.core import Composition, Element

__all__ = ["FormulaError", "parse_formula", "canonical_formula", "format_amount"]

_HYDRATE_SEP = re.compile(r"\s*[·•∙*]\s*|(?<!\d)\.(?!\d)|(?<=\d)\.(?=[A-Za-z(\[{])")
_LEADING_MULT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?=[A-Z(\[{])")
_AMOUNT = re.compile(r"(?<=[A-Za-z)\]}])\s*(-?\d*\.?\d+)")
_SYMBOL = re.compile(r"[A-Z][a-z]*")
_ALLOWED = re.compile(r"^[A-Za-z0-9.()\[\]{}\s]+$")
_KNOWN = {el.symbol for el in Element} | {"D", "T"}


def _electronegativities() -> dict[str, float]:
    """Pauling electronegativity per symbol; elements without one (noble gases) sort last (10.0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every element without a Pauling value
        return {el.symbol: (10.0 if math.isnan(el.X) else float(el.X)) for el in Element}


_X = _electronegativities()


class FormulaError(ValueError):
    """A formula string that cannot be turned into a composition; the message names input and reason."""

    def __init__(self, formula: object, reason: str) -> None:
        self.formula = formula
        self.reason = reason
        super().__init__(f"invalid formula {formula!r}: {reason}")


def _check_brackets(text: str, original: object) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in text:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                raise FormulaError(original, f"unbalanced '{ch}'")
    if stack:
        raise FormulaError(original, f"unclosed '{stack[-1]}'")


def _parse_part(part: str, original: object) -> Composition:
    mult = 1.0
    m = _LEADING_MULT.match(part)
    if m:
        mult = float(m.group(1))
        part = part[m.end() :]
    if not part.strip():
        raise FormulaError(original, "a hydrate/adduct separator is not followed by a formula")
    if not _ALLOWED.match(part):
        bad = sorted({c for c in part if not re.match(r"[A-Za-z0-9.()\[\]{}\s]", c)})
        raise FormulaError(original, f"unexpected character(s) {''.join(bad)!r}")
    _check_brackets(part, original)
    for sym in _SYMBOL.findall(part):
        if sym not in _KNOWN:
            raise FormulaError(original, f"unknown element {sym!r}")
    for amount in _AMOUNT.findall(part):
        value = float(amount)
        if value <= 0:
            raise FormulaError(original, f"amount {amount} is not positive")
    if re.search(r"(?<![A-Za-z)\]}\d.])\d", part.replace(" ", "")):
        raise FormulaError(original, "a number does not follow an element or a group")
    try:
        comp = Composition(part.replace(" ", ""))
    except Exception as exc:  # pymatgen raises ValueError/KeyError with terse messages
        raise FormulaError(original, f"pymatgen cannot parse it ({exc})") from None
    return comp * mult


def parse_formula(formula: object) -> Composition:
    """Return the validated pymatgen ``Composition`` of ``formula`` or raise :class:`FormulaError`."""
    if isinstance(formula, Composition):
        comp = formula
    else:
        if not isinstance(formula, str):
            raise FormulaError(formula, f"expected a string, got {type(formula).__name__}")
        text = formula.strip()
        if not text:
            raise FormulaError(formula, "empty string")
        if "-" in text:
            raise FormulaError(formula, "negative amounts or '-' are not allowed")
        parts = _HYDRATE_SEP.split(text)
        comp = reduce(lambda a, b: a + b, (_parse_part(p, formula) for p in parts))
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
