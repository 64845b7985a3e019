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

from .base import (
    GENERATION_ERRORS,
    Candidate,
    GenerationBatch,
    GenerationFailure,
    StructureGenerator,
    formula_rows,
    parse_target,
)
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
        batch_formulas: formulas whose prompts share one ``generate`` call (1: one call per formula and Z).
    """

    name = "cif-lm"

    def __init__(self, model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, n_samples: int = 20,
                 z_values: Sequence[int] = (1, 2, 4), temperature: float = 1.0, top_k: int | None = 10,
                 max_new_tokens: int | None = None, seed: int | None = 0, constrained: bool = True,
                 space_group: str = "p1", batch_formulas: int = 1) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.n_samples, self.z_values = n_samples, tuple(z_values)
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.constrained, self.space_group = constrained, space_group
        self.batch_formulas = int(batch_formulas)
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
        return self.sample_batch([prompt], n)[0]

    @torch.no_grad()
    def sample_batch(self, prompts: Sequence[str], n: int) -> list[list[tuple[str, float]]]:
        """``n`` completions of each prompt in one ``generate`` call (the prompts must encode to the same number
        of tokens: no padding); one list of (CIF text, mean token log-probability) per prompt."""
        enc = [encode_cif(self.tokenizer, p) for p in prompts]
        for prompt, ids in zip(prompts, enc, strict=True):
            if self.tokenizer.unk_token_id in ids:
                raise ValueError(f"prompt {prompt.strip()!r} has tokens outside the CIF vocabulary")
        if len({len(ids) for ids in enc}) != 1:
            raise ValueError("sample_batch needs prompts of equal token length (group them by length)")
        width = len(enc[0])
        x = torch.tensor(enc, device=self.model.device)
        budget = min(self.max_new_tokens, self.model.config.n_positions - width)
        processors = LogitsProcessorList()
        if self.constrained:
            bad = [p for p in prompts if not p.startswith("data_") or not p.endswith("\n")]
            if bad:
                raise ValueError(f"constrained decoding needs a 'data_<cell composition>\\n' prompt, got {bad[0]!r}")
            processors.append(CompositionConstrainedLogitsProcessor(
                self.tokenizer, [Composition(p[5:].strip()) for p in prompts], space_group=self.space_group,
                max_new_tokens=budget, num_return_sequences=n))
        out = self.model.generate(
            x, attention_mask=torch.ones_like(x), do_sample=True, temperature=self.temperature, top_k=self.top_k,
            max_new_tokens=budget, num_return_sequences=n, pad_token_id=self.newline, logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_DoubleNewline(self.newline, width)]),
            output_scores=True, return_dict_in_generate=True,
        )
        logp = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).cpu()
        gen = out.sequences[:, width:].cpu()
        # the end of each CIF: the first blank line (two newlines in a row) of the generated part
        double = (gen[:, 1:] == self.newline) & (gen[:, :-1] == self.newline)
        ends = torch.where(double.any(1), double.int().argmax(1) + 2, torch.full((gen.shape[0],), gen.shape[1]))
        res: list[list[tuple[str, float]]] = [[] for _ in prompts]
        for row in range(gen.shape[0]):  # rows are prompt-major: prompt row // n, draw row % n
            end = int(ends[row])
            lp = logp[row, :end]
            lp = lp[torch.isfinite(lp)]
            text = self.tokenizer.decode(enc[row // n] + gen[row, :end].tolist())
            res[row // n].append((text, float(lp.mean()) if len(lp) else -math.inf))
        return res

    def _draws_per_z(self) -> list[int]:
        return [self.n_samples // len(self.z_values) + (i < self.n_samples % len(self.z_values))
                for i in range(len(self.z_values))]

    def _keep_valid(self, samples: list[tuple[str, float]], target: Composition, z: int, cands: list[Candidate],
                    reasons: Counter) -> None:
        """Validate sampled CIFs against the cell composition ``target``; valid ones become candidates."""
        for text, score in samples:
            v = validate_cif(text, target, exact_cell=True)
            self.last_stats["samples"] += 1
            if v.valid:
                self.last_stats["valid"] += 1
                cands.append(Candidate(v.structure, score, self.name, {"z": z, "cif": text}))
            else:
                reasons[v.reasons[0].split(":")[0][:60]] += 1
                self.last_reasons[_reason_kind(v.reasons[0])] += 1

    def _ranked(self, cands: list[Candidate], reasons: Counter, n_candidates: int) -> list[Candidate]:
        if not cands:
            top = ", ".join(f"{r} (x{c})" for r, c in reasons.most_common(3))
            raise ValueError(f"no valid sample in {self.n_samples} draws; most common problems: {top}")
        cands.sort(key=lambda c: -c.score)
        return cands[:n_candidates]

    def generate(self, formulas: Sequence[object] | str, n_candidates: int = 1) -> GenerationBatch:
        """As :meth:`StructureGenerator.generate`; with ``batch_formulas > 1`` the prompts of up to that many
        formulas (grouped by prompt length) share one ``generate`` call (seeded once per call, so a formula's
        samples depend on its batch-mates)."""
        formulas = formula_rows(formulas)
        if self.batch_formulas <= 1:
            return super().generate(formulas, n_candidates)
        out = GenerationBatch([[] for _ in formulas])
        comps: dict[int, Composition] = {}
        for row, formula in enumerate(formulas):
            try:
                comps[row] = parse_target(formula)
            except GENERATION_ERRORS as err:
                out.failures.append(GenerationFailure(row, formula, self.name, f"{type(err).__name__}: {err}"))
        cands: dict[int, list[Candidate]] = {row: [] for row in comps}
        reasons: dict[int, Counter] = {row: Counter() for row in comps}
        for z, n in zip(self.z_values, self._draws_per_z(), strict=True):
            if n == 0:
                continue
            groups: dict[int, list[tuple[int, str]]] = {}
            for row, comp in comps.items():
                prompt = prompt_for(comp, z)
                groups.setdefault(len(encode_cif(self.tokenizer, prompt)), []).append((row, prompt))
            for members in groups.values():
                for lo in range(0, len(members), self.batch_formulas):
                    chunk = members[lo:lo + self.batch_formulas]
                    if self.seed is not None:
                        torch.manual_seed(self.seed)
                    for (row, _), samples in zip(chunk, self.sample_batch([p for _, p in chunk], n), strict=True):
                        self._keep_valid(samples, comps[row].reduced_composition * z, z, cands[row], reasons[row])
        for row in comps:
            try:
                out[row] = self._ranked(cands[row], reasons[row], n_candidates)
            except GENERATION_ERRORS as err:
                out.failures.append(GenerationFailure(row, formulas[row], self.name, f"{type(err).__name__}: {err}"))
        out.failures.sort(key=lambda f: f.row)
        return out

    def _generate_one(self, composition: Composition, n_candidates: int) -> list[Candidate]:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        cands: list[Candidate] = []
        reasons: Counter = Counter()
        for z, n in zip(self.z_values, self._draws_per_z(), strict=True):
            if n == 0:
                continue
            target = composition.reduced_composition * z
            self._keep_valid(self.sample(prompt_for(composition, z), n), target, z, cands, reasons)
        return self._ranked(cands, reasons, n_candidates)
