"""Formula parsing and the CrossMat formula tokenizer."""

from .formula import FormulaError, canonical_formula, format_amount, parse_formula
from .formula_grammar import MAX_FORMULA_CHARS, check_formula, parse_amounts
from .tokenization_crossmat import CrossMatTokenizerFast, build_backend_tokenizer
from .tokenization_crossmat_base import CrossMatBaseTokenizerFast
from .vocabulary import ELEMENTS, VOCAB, token_layout

__all__ = [
    "ELEMENTS",
    "MAX_FORMULA_CHARS",
    "VOCAB",
    "CrossMatBaseTokenizerFast",
    "CrossMatTokenizerFast",
    "FormulaError",
    "build_backend_tokenizer",
    "canonical_formula",
    "check_formula",
    "format_amount",
    "parse_amounts",
    "parse_formula",
    "token_layout",
]
