"""The one formula grammar of CrossMat: standard library only, so it also travels as Hub remote code.

Every entry point validates with :func:`parse_amounts` (the package's ``parse_formula`` before pymatgen,
the remote-code tokenizer that a model folder carries, hence the pipelines, ``crossmat-predict``, the
training data loader, interpretability and the app). A string is accepted when it is, after stripping
leading/trailing whitespace:

* at most :data:`MAX_FORMULA_CHARS` characters of ``A-Z a-z 0-9 . ( ) [ ] { }`` and the hydrate/adduct
  separators ``·`` ``•`` ``∙`` ``*`` (whitespace is allowed only next to those separators); subscript digits
  ``₀``-``₉``, as formulas copied from papers and web pages write them (``Fe₂O₃``), read as ``0``-``9``;
* one or more parts joined by separators. A ``.`` is a separator when it is not between two digits
  (``CuSO4.H2O``) or when it follows a digit and precedes a letter or bracket; a ``.`` between digits is
  always a decimal point, so ``CuSO4.5H2O`` is ``Cu S O4.5 H2 O`` (write ``CuSO4·5H2O``);
* a part is an optional positive multiplier (``5H2O``) then units; a unit is a known element symbol
  (the 118 elements, ``D`` and ``T`` read as H) or a bracketed group of units, each optionally followed by
  a positive amount written ``12``, ``0.25`` or ``.25``.

Input errors, each refused with a one-line reason: line breaks, whitespace inside a formula
(``Fe2O3 LiCoO2``), NUL bytes and other control characters, scientific notation (``Fe1e3O``),
``-``, unbalanced or empty brackets, malformed amounts (``Fe2.5.3O``), numbers that follow nothing,
unknown symbols, zero amounts and element amounts below :data:`MIN_AMOUNT` (pymatgen drops those).
"""

from __future__ import annotations

import math
import re

__all__ = [
    "ELEMENT_SYMBOLS",
    "MAX_FORMULA_CHARS",
    "MIN_AMOUNT",
    "FormulaError",
    "check_formula",
    "format_amount",
    "parse_amounts",
    "simple_formula",
]

MAX_FORMULA_CHARS = 512
MIN_AMOUNT = 1e-8  # pymatgen's Composition.amount_tolerance: smaller amounts would vanish silently

# Elements by atomic number, H (Z=1) .. Og (Z=118).
ELEMENT_SYMBOLS: tuple[str, ...] = tuple(
    (
        "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
        "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm "
        "Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No "
        "Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
    ).split()
)
_SYMBOL_MAP = {s: s for s in ELEMENT_SYMBOLS} | {"D": "H", "T": "H"}  # isotopes of hydrogen

_SEPARATORS = "·•∙*"
_SUBSCRIPT_DIGITS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")  # Fe₂O₃ -> Fe2O3
_ALLOWED = re.compile(r"[A-Za-z0-9.()\[\]{}\s" + _SEPARATORS + "]")
_SPACED_SEP = re.compile(r"\s*([" + _SEPARATORS + r"])\s*")
_HYDRATE_SEP = re.compile(r"[" + _SEPARATORS + r"]|(?<!\d)\.(?!\d)|(?<=\d)\.(?=[A-Za-z(\[{])")
_SCIENTIFIC = re.compile(r"\d[eE][+-]?\d")
_LEADING_MULT = re.compile(r"\d+(?:\.\d+)?(?=[A-Z(\[{])")
_TOKEN = re.compile(r"(?P<el>[A-Z][a-z]*)|(?P<num>[\d.]+)|(?P<open>[(\[{])|(?P<close>[)\]}])|(?P<other>.)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_CLOSING = {"(": ")", "[": "]", "{": "}"}


class FormulaError(ValueError):
    """A formula string that cannot be turned into a composition; the message names input and reason."""

    def __init__(self, formula: object, reason: str) -> None:
        self.formula = formula
        self.reason = reason
        super().__init__(f"invalid formula {formula!r:.80}: {reason}")


def _amount(text: str, formula: object) -> float:
    if not _NUMBER.fullmatch(text):
        raise FormulaError(formula, f"malformed amount {text!r}")
    value = float(text)
    if value <= 0:
        raise FormulaError(formula, f"amount {text} is not positive")
    if not math.isfinite(value):
        raise FormulaError(formula, f"amount {text[:20]}... is too large")
    return value


def _parse_part(part: str, formula: object) -> dict[str, float]:
    """Amounts of one hydrate/adduct part (multiplier applied), in order of first appearance."""
    mult = 1.0
    m = _LEADING_MULT.match(part)
    if m:
        mult = _amount(m.group(0), formula)
        part = part[m.end() :]
    # stack of (opening bracket, amounts inside it); the bottom entry is the whole part
    stack: list[tuple[str, dict[str, float]]] = [("", {})]
    pending: dict[str, float] | None = None  # the element or closed group a following amount multiplies

    def flush(factor: float = 1.0) -> None:
        nonlocal pending
        if pending is not None:
            _merge(stack[-1][1], {k: v * factor for k, v in pending.items()} if factor != 1.0 else pending)
            pending = None

    for tok in _TOKEN.finditer(part):
        kind, text = tok.lastgroup, tok.group(0)
        if kind == "el":
            symbol = _SYMBOL_MAP.get(text)
            if symbol is None:
                raise FormulaError(formula, f"unknown element {text!r}{_case_hint(part, tok.start(), text)}")
            flush()
            pending = {symbol: 1.0}
        elif kind == "num":
            if pending is None:
                raise FormulaError(formula, f"amount {text!r} does not follow an element or a closing bracket")
            flush(_amount(text, formula))
        elif kind == "open":
            flush()
            stack.append((text, {}))
        elif kind == "close":
            flush()
            if len(stack) == 1:
                raise FormulaError(formula, f"unbalanced {text!r}")
            opening, inner = stack.pop()
            if _CLOSING[opening] != text:
                raise FormulaError(formula, f"unbalanced {text!r} (closes {opening!r})")
            if not inner:
                raise FormulaError(formula, "empty brackets")
            pending = inner
        elif text.islower():
            raise FormulaError(
                formula,
                "a formula starts with an element symbol (capitalised, like 'Fe') or a bracket"
                if tok.start() == 0
                else "lower-case letters outside an element symbol (symbols are written like 'Fe', 'O')",
            )
        else:
            raise FormulaError(formula, f"unexpected character {text!r}")
    flush()
    if len(stack) > 1:
        raise FormulaError(formula, f"unclosed {stack[-1][0]!r}")
    amounts = stack[0][1]
    if not amounts:
        raise FormulaError(formula, "no elements")
    return {k: v * mult for k, v in amounts.items()}


# what spreadsheets and pandas write for an empty cell; none of them is a formula ('Na' and 'NaN' are, and parse)
_MISSING_MARKERS = frozenset({"NA", "na", "N/A", "n/a", "nan", "NAN", "None", "none", "NONE", "null", "NULL", "Null",
                              "nil", "missing", "?", "#N/A"})


def _case_hint(part: str, start: int, text: str) -> str:
    """For an unknown one-letter symbol after a capital (``FE2O3``, ``NaCL``): the two-letter symbol it spells in the
    right case, since element symbols are case-sensitive."""
    if len(text) != 1:
        return ""
    spans = [part[start - 1 : start + 1]] if start > 0 and part[start - 1].isupper() else []
    spans += [part[start : start + 2]] if part[start + 1 : start + 2].isupper() else []
    for span in spans:
        guess = span[0] + span[1].lower()
        if guess in _SYMBOL_MAP:
            return f" (symbols are case-sensitive: {guess!r}, not {span!r}?)"
    return ""


def _merge(into: dict[str, float], new: dict[str, float]) -> None:
    for key, value in new.items():
        into[key] = into.get(key, 0.0) + value


def parse_amounts(formula: object, max_chars: int = MAX_FORMULA_CHARS) -> dict[str, float]:
    """Element amounts of ``formula`` (groups, hydrates and repeats expanded, D/T read as H), in order
    of first appearance, or :class:`FormulaError` with the reason (see the module docstring)."""
    if not isinstance(formula, str):
        raise FormulaError(formula, f"expected a string, got {type(formula).__name__}")
    text = formula.strip().translate(_SUBSCRIPT_DIGITS)
    if not text:
        raise FormulaError(formula, "empty string")
    if text in _MISSING_MARKERS:
        raise FormulaError(formula, f"{text!r} is a missing-value marker, not a formula")
    if len(text) > max_chars:
        raise FormulaError(formula, f"{len(text)} characters long; the limit is {max_chars}")
    if "\n" in text or "\r" in text:
        raise FormulaError(formula, "line break inside the formula (one formula per cell)")
    control = sorted({c for c in text if (ord(c) < 32 or 127 <= ord(c) < 160) and c not in "\t"})
    if control:
        raise FormulaError(
            formula, f"control character(s) {''.join(control)!r} (a NUL byte or similar: the input is corrupt)"
        )
    if "-" in text:
        raise FormulaError(formula, "negative amounts or '-' are not allowed")
    if _SCIENTIFIC.search(text):
        raise FormulaError(formula, "scientific notation (like '1e3') is not allowed; write amounts as decimals")
    bad = sorted({c for c in text if not _ALLOWED.match(c)})
    if bad:
        raise FormulaError(formula, f"unexpected character(s) {''.join(bad[:10])!r}")
    text = _SPACED_SEP.sub(r"\1", text)
    if re.search(r"\s", text):
        raise FormulaError(
            formula, "whitespace inside the formula (one formula per cell, written without spaces, e.g. 'Fe2O3')"
        )
    total: dict[str, float] = {}
    for part in _HYDRATE_SEP.split(text):
        if not part:
            raise FormulaError(formula, "a hydrate/adduct separator without a formula on both sides")
        _merge(total, _parse_part(part, formula))
    for symbol, value in total.items():
        if not math.isfinite(value):
            raise FormulaError(formula, f"amount of {symbol} is too large")
        if value < MIN_AMOUNT:
            raise FormulaError(formula, f"amount of {symbol} is {value:.3g}, below {MIN_AMOUNT:g}")
    return total


def check_formula(formula: object, max_chars: int = MAX_FORMULA_CHARS) -> str:
    """The reason ``formula`` is refused, or ``""`` when it is a valid formula."""
    try:
        parse_amounts(formula, max_chars)
    except FormulaError as err:
        return err.reason
    return ""


def format_amount(x: float) -> str:
    """Positional decimal string of ``x`` at 12 significant digits, no exponent, no trailing zeros."""
    text = f"{float(f'{x:.12g}'):.{max(0, 11 - math.floor(math.log10(abs(x))))}f}" if x else "0"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def simple_formula(amounts: dict[str, float]) -> str:
    """``{"Fe": 2.0, "O": 3.0}`` -> ``"Fe2O3"``: element symbols with positional amounts (1 omitted)."""
    out = []
    for symbol, value in amounts.items():
        a = format_amount(value)
        out.append(symbol if a == "1" else f"{symbol}{a}")
    return "".join(out)
