"""``CrossMatTokenizerFast``: a formula tokenizer backed by a ``tokenizers`` WordLevel model.

Amount representation: every element is one token; its amount follows as **digit tokens** with a
``.`` token for the decimal point (``Fe0.62C0.000953`` -> ``Fe 0 . 6 2 C 0 . 0 0 0 9 5 3``), so any
amount, including 6-digit steel fractions, is represented exactly and decoding returns the same
string. Grouping symbols ``(`` ``)`` are tokens (``[ ] { }`` are normalised to them) and whitespace is
removed, so the bare ``tokenizer.json`` handles ``(NH4)2SO4`` on its own; the model turns the digit
tokens back into exact element fractions (see ``modeling``).

With this class (the package installed) every input is validated first: strings already in simple
form (elements and positive numbers, each element once, all known) pass straight to the Rust
tokenizer; anything else (groups, hydrates, repeated elements, ``D``) is checked by the one formula
grammar (:mod:`tokenization.formula_grammar`) and rewritten to its canonical formula by
:func:`tokenization.formula.canonical_formula`; invalid input raises :class:`FormulaError` naming the
row. A saved folder carries :class:`CrossMatBaseTokenizerFast` (the same grammar, no pymatgen) as
remote code, which ``AutoTokenizer.from_pretrained(folder, trust_remote_code=True)`` loads without the
package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import BatchEncoding

from .formula import FormulaError, canonical_formula
from .formula_grammar import MAX_FORMULA_CHARS
from .tokenization_crossmat_base import CrossMatBaseTokenizerFast
from .vocabulary import CLS_ID, DECIMAL_ID, DIGIT_START, ELEMENTS, PAD_ID, SEP_ID, TOKEN_TO_ID

__all__ = ["CrossMatTokenizerFast", "build_backend_tokenizer", "encode_simple_formulas"]

_SIMPLE = re.compile(r"(?:[A-Z][a-z]?(?:[0-9]+(?:\.[0-9]+)?)?)+")  # ASCII: \d matches '٣', '２'
_SYMBOLS = re.compile(r"[A-Z][a-z]?")
_ZERO = re.compile(r"(?<![0-9.])0+(?:\.0+)?(?![0-9.])")
_TINY = re.compile(r"\.0{7}")  # amounts that may fall below the grammar's MIN_AMOUNT: take the full path
_ELEMENT_SET = frozenset(ELEMENTS)


def build_backend_tokenizer() -> Tokenizer:
    """The Rust tokenizer: normaliser, pre-tokeniser (element | digit | '.' | group | other char)."""
    tok = Tokenizer(WordLevel(vocab=dict(TOKEN_TO_ID), unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(r"\s+"), ""),
            normalizers.Replace(Regex(r"[\[{]"), "("),
            normalizers.Replace(Regex(r"[\]}]"), ")"),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[A-Z][a-z]?|[0-9]|\.|[()]|."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", TOKEN_TO_ID["[CLS]"]), ("[SEP]", TOKEN_TO_ID["[SEP]"])],
    )
    tok.decoder = decoders.Fuse()
    return tok


def _element_table() -> np.ndarray:
    """Lookup ``[upper - 'A', lower - 'a' + 1 or 0] -> element token id`` for the vectorised encoder."""
    table = np.full((26, 27), -1, dtype=np.int64)
    for sym in ELEMENTS:
        table[ord(sym[0]) - 65, (ord(sym[1]) - 96) if len(sym) > 1 else 0] = TOKEN_TO_ID[sym]
    return table


_ELEMENT_TABLE = _element_table()


def encode_simple_formulas(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised twin of the Rust tokenizer for formulas in simple form (elements + numbers).

    Returns ``(ids, lengths)``: ``ids`` is ``(n, max_len)`` int64 with ``[CLS] ... [SEP]`` and
    ``[PAD]`` filling, identical to what ``tokenizer.json`` produces (a test checks this).
    """
    n = len(texts)
    buf = np.frombuffer("\n".join(texts).encode("ascii"), dtype=np.uint8).astype(np.int64)
    upper = (buf >= 65) & (buf <= 90)
    lower = (buf >= 97) & (buf <= 122)
    newline = buf == 10
    starts = ~lower & ~newline  # every char but a lowercase second letter starts a token
    nxt = np.append(buf[1:], 0)
    nxt_lower = np.append(lower[1:], False)
    ids = np.where(buf == 46, DECIMAL_ID, DIGIT_START + buf - 48)
    el = _ELEMENT_TABLE[np.clip(buf - 65, 0, 25), np.where(nxt_lower, nxt - 96, 0)]
    ids = np.where(upper, el, ids)[starts]
    row = np.cumsum(newline)[starts]
    counts = np.bincount(row, minlength=n)
    width = int(counts.max(initial=0)) + 2
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    col = np.arange(ids.size) - first[row] + 1
    out = np.full((n, width), PAD_ID, dtype=np.int64)
    out[row, col] = ids
    out[:, 0] = CLS_ID
    out[np.arange(n), counts + 1] = SEP_ID
    return out, counts + 2


def _is_simple(text: str) -> bool:
    if len(text) > MAX_FORMULA_CHARS or not _SIMPLE.fullmatch(text) or _ZERO.search(text) or _TINY.search(text):
        return False
    symbols = _SYMBOLS.findall(text)
    return len(set(symbols)) == len(symbols) and _ELEMENT_SET.issuperset(symbols)


class CrossMatTokenizerFast(CrossMatBaseTokenizerFast):
    """Formula tokenizer; validates and canonicalises formulas before the Rust tokenizer runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "tokenizer_object" not in kwargs and "tokenizer_file" not in kwargs:
            kwargs["tokenizer_object"] = build_backend_tokenizer()
        kwargs.setdefault("model_max_length", 256)
        for name in ("pad", "unk", "cls", "sep", "mask"):
            kwargs.setdefault(f"{name}_token", f"[{name.upper()}]")
        kwargs.setdefault("validate_formulas", True)
        self.validate_formulas = bool(kwargs["validate_formulas"])
        super().__init__(*args, **kwargs)

    @staticmethod
    def prepare_formula(text: object, row: int | None = None) -> str:
        """Return ``text`` ready for the Rust tokenizer, or raise ``FormulaError`` naming the row."""
        if isinstance(text, str) and _is_simple(text):
            return text
        try:
            return canonical_formula(text)
        except FormulaError as err:
            if row is None:
                raise
            raise FormulaError(err.formula, f"row {row}: {err.reason}") from None

    def encode_formulas(self, formulas: Sequence[object], return_tensors: str | None = "np") -> BatchEncoding:
        """Fast batch path: validate, canonicalise where needed, encode with numpy, pad to the longest.

        Same ids as ``tokenizer(formulas, padding=True)``; >= 100k formulas/s (see benchmarks/tokenizer).
        """
        texts = self.prepare_formulas(formulas)
        ids, lengths = encode_simple_formulas(texts)
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        return BatchEncoding({"input_ids": ids, "attention_mask": mask}, tensor_type=return_tensors)
