"""CIF language model for exKT: the sampling generator.

Training has one home, the ``cif_lm`` stage (``crossmat train --config cif_lm``, training/cif_lm_stage.py: structure
tables, augmentation, checkpoints and resume); ``python -m crossmat.explicit_transfer train-cif-lm`` runs it.

* :class:`CIFLanguageModelGenerator` — samples (temperature / top-k, several Z), validates every CIF
  (:mod:`.cif_validation`), ranks valid ones by mean token log-probability.

The CIF tokenizer and training text live in :mod:`dataset_builders.cif_text`, the GPT-2 factory in
:mod:`modeling.cif_lm`; they are re-exported here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pymatgen.core import Composition
from transformers import (
    GPT2LMHeadModel,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
    StoppingCriteria,
    StoppingCriteriaList,
)

from crossmat.dataset_builders.cif_text import (
    CIF_FORMS,
    CIF_KEYWORDS,
    PAD,
    UNK,
    build_cif_tokenizer,
    cell_formula,
    default_cif_vocabulary,
    encode_cif,
    preprocess_cif,
    prompt_for,
    render_cif,
)
from crossmat.modeling.cif_lm import new_cif_lm

from .base import Candidate, StructureGenerator
from .cif_validation import validate_cif
from .constrained_decoding import CompositionConstrainedLogitsProcessor

__all__ = ["CIF_FORMS", "CIF_KEYWORDS", "PAD", "UNK", "default_cif_vocabulary", "build_cif_tokenizer", "preprocess_cif",
           "render_cif", "cell_formula", "prompt_for", "encode_cif", "new_cif_lm",
           "CIFLanguageModelGenerator"]


_REASON_KINDS = ("CIF does not parse", "cell composition", "composition", "declared formula", "disordered sites",
                 "atoms", "bond length", "density", "non-positive cell volume", "unreadable _chemical_formula_sum")


def _reason_kind(reason: str) -> str:
    """A short kind of a validation reason (no numbers or formulas), for counting failures."""
    return next((k for k in _REASON_KINDS if reason.startswith(k)), reason[:30])


class _DoubleNewline(StoppingCriteria):
    """Stop a sequence after two consecutive newline tokens (the end of a CIF)."""

    def __init__(self, newline_id: int, prompt_len: int) -> None:
        self.nl, self.start = newline_id, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if input_ids.shape[1] - self.start < 2:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return (input_ids[:, -1] == self.nl) & (input_ids[:, -2] == self.nl)


class CIFLanguageModelGenerator(StructureGenerator):
    """Sample CIFs for each formula, keep the valid ones, rank by mean token log-probability.

    Args:
        model, tokenizer: a causal LM over CIF tokens (e.g. a ``cif_lm`` stage folder or the CrystaLLM converter).
        n_samples: draws per formula (spread over ``z_values``); the "valid sample budget".
        z_values: formula units per cell to prompt with (``data_<cell composition>``).
        constrained: composition-constrained decoding (:mod:`.constrained_decoding`): every sample follows the
            training layout and holds the prompt's species in the prompt's counts. ``False``: plain sampling.
        space_group: with ``constrained``, ``"p1"`` (every row one atom: the parsed cell has exactly the prompt's
            composition), ``"free"`` (the model writes the space group and Wyckoff multiplicities) or ``"auto"``.
    """

    name = "cif-lm"

    def __init__(self, model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, n_samples: int = 20,
                 z_values: Sequence[int] = (1, 2, 4), temperature: float = 1.0, top_k: int | None = 10,
                 max_new_tokens: int | None = None, seed: int | None = 0, constrained: bool = True,
                 space_group: str = "p1") -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.n_samples, self.z_values = n_samples, tuple(z_values)
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.constrained, self.space_group = constrained, space_group
        self.max_new_tokens = max_new_tokens or model.config.n_positions
        self.newline = tokenizer.convert_tokens_to_ids("\n")
        # a CIF ends with a blank line (two newlines), not at the first newline: no single-token EOS
        self.model.generation_config.eos_token_id = None
        self.last_stats: Counter = Counter()  # samples / valid, summed over generate calls
        self.last_reasons: Counter = Counter()  # the kind of the first rejection reason of each invalid sample

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> CIFLanguageModelGenerator:
        """Load a saved CIF LM folder (model + tokenizer)."""
        return cls(GPT2LMHeadModel.from_pretrained(path), PreTrainedTokenizerFast.from_pretrained(path), **kwargs)

    @torch.no_grad()
    def sample(self, prompt: str, n: int) -> list[tuple[str, float]]:
        """``n`` completions of ``prompt`` as (CIF text, mean token log-probability)."""
        ids = encode_cif(self.tokenizer, prompt)
        if self.tokenizer.unk_token_id in ids:
            raise ValueError(f"prompt {prompt.strip()!r} has tokens outside the CIF vocabulary")
        x = torch.tensor([ids])
        budget = min(self.max_new_tokens, self.model.config.n_positions - len(ids))
        processors = LogitsProcessorList()
        if self.constrained:
            if not prompt.startswith("data_") or not prompt.endswith("\n"):
                raise ValueError(f"constrained decoding needs a 'data_<cell composition>\\n' prompt, got {prompt!r}")
            processors.append(CompositionConstrainedLogitsProcessor(
                self.tokenizer, Composition(prompt[5:].strip()), space_group=self.space_group, max_new_tokens=budget,
                num_return_sequences=n))
        out = self.model.generate(
            x, attention_mask=torch.ones_like(x), do_sample=True, temperature=self.temperature, top_k=self.top_k,
            max_new_tokens=budget, num_return_sequences=n, pad_token_id=self.newline, logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_DoubleNewline(self.newline, len(ids))]),
            output_scores=True, return_dict_in_generate=True,
        )
        logp = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        gen = out.sequences[:, len(ids):]
        res = []
        for row in range(gen.shape[0]):
            seq = gen[row].tolist()
            end = next((i + 1 for i in range(1, len(seq)) if seq[i] == self.newline and seq[i - 1] == self.newline),
                       len(seq))
            lp = logp[row, :end]
            lp = lp[torch.isfinite(lp)]
            text = self.tokenizer.decode(ids + seq[:end])
            res.append((text, float(lp.mean()) if len(lp) else -math.inf))
        return res

    def _generate_one(self, composition: Composition, n_candidates: int) -> list[Candidate]:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        per_z = [self.n_samples // len(self.z_values) + (i < self.n_samples % len(self.z_values))
                 for i in range(len(self.z_values))]
        cands, reasons = [], Counter()
        for z, n in zip(self.z_values, per_z, strict=True):
            if n == 0:
                continue
            target = composition.reduced_composition * z
            for text, score in self.sample(prompt_for(composition, z), n):
                v = validate_cif(text, target, exact_cell=True)
                self.last_stats["samples"] += 1
                if v.valid:
                    self.last_stats["valid"] += 1
                    cands.append(Candidate(v.structure, score, self.name, {"z": z, "cif": text}))
                else:
                    reasons[v.reasons[0].split(":")[0][:60]] += 1
                    self.last_reasons[_reason_kind(v.reasons[0])] += 1
        if not cands:
            top = ", ".join(f"{r} (x{c})" for r, c in reasons.most_common(3))
            raise ValueError(f"no valid sample in {self.n_samples} draws; most common problems: {top}")
        cands.sort(key=lambda c: -c.score)
        return cands[:n_candidates]
