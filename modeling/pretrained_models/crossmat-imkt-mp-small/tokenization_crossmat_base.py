"""``CrossMatBaseTokenizerFast``: the formula-validating tokenizer that travels as Hub remote code.

It imports only ``transformers`` and :mod:`formula_grammar` (standard library), and a saved tokenizer
folder carries both files with an ``auto_map`` entry, so ``AutoTokenizer.from_pretrained(folder,
trust_remote_code=True)`` validates formulas without the ``crossmat`` package: this is what the
``text-classification`` pipeline (the Hub widget) and ``composition-property-prediction`` use there.
Every formula is checked by the one grammar (:func:`formula_grammar.parse_amounts`) and rewritten to
element symbols with positional amounts (groups, hydrates and repeats expanded); invalid input raises
``FormulaError`` (a ``ValueError``) naming the reason. The package's ``CrossMatTokenizerFast`` subclasses
this class and canonicalises further with pymatgen.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from .formula_grammar import FormulaError, parse_amounts, simple_formula

__all__ = ["CrossMatBaseTokenizerFast"]

_REMOTE_FILES = ("formula_grammar.py", Path(__file__).name)


class CrossMatBaseTokenizerFast(PreTrainedTokenizerFast):
    """Formula tokenizer that validates every input with the CrossMat formula grammar."""

    vocab_files_names = {"tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]
    # no __init__ here: transformers then loads tokenizer.json as saved (normaliser, pre-tokeniser)
    validate_formulas = True  # the pipeline switches it off for text it has already validated

    @staticmethod
    def prepare_formula(text: object, row: int | None = None) -> str:
        """Return ``text`` ready for the Rust tokenizer, or raise ``FormulaError`` naming the row."""
        try:
            return simple_formula(parse_amounts(text))
        except FormulaError as err:
            if row is None:
                raise
            raise FormulaError(err.formula, f"row {row}: {err.reason}") from None

    def prepare_formulas(self, texts: Sequence[object]) -> list[str]:
        """Validate and rewrite a batch of formulas (row numbers appear in errors)."""
        return [self.prepare_formula(t, i) for i, t in enumerate(texts)]

    def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        if self.validate_formulas and not kwargs.get("is_split_into_words", False):
            if isinstance(text, (list, tuple)):
                text = self.prepare_formulas(text)
            elif text is not None:
                text = self.prepare_formula(text)
        return super()._encode_plus(text, text_pair, *args, **kwargs)

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any):  # type: ignore[override]
        """Save as usual, plus this file and the grammar as remote code (``auto_map`` -> this class)."""
        files = super().save_pretrained(save_directory, *args, **kwargs)
        folder = Path(save_directory)
        here = Path(__file__).resolve().parent
        for name in _REMOTE_FILES:
            shutil.copyfile(here / name, folder / name)
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["auto_map"] = {"AutoTokenizer": [None, f"{Path(__file__).stem}.{CrossMatBaseTokenizerFast.__name__}"]}
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return files
