"""Formula parsing and the CrossMat formula tokenizer."""

from .formula import FormulaError, canonical_formula, format_amount, parse_formula
from .tokenization_crossmat import CrossMatTokenizerFast, build_backend_tokenizer
from .vocabulary import ELEMENTS, VOCAB, token_layout

__all__ = [
    "ELEMENTS",
    "VOCAB",
    "CrossMatTokenizerFast",
    "FormulaError",
    "build_backend_tokenizer",
    "canonical_formula",
    "format_amount",
    "parse_formula",
    "token_layout",
]
