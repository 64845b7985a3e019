"""CIF language model (Hugging Face GPT-2 over CIF tokens), CrystaLLM-style prompts ``data_<cell composition>``.

* :func:`build_cif_tokenizer` — a ``tokenizers`` WordLevel tokenizer whose pre-tokenizer isolates CIF tokens
  (element symbols, single digits, CIF keywords, punctuation, space-group symbols suffixed ``_sg``);
  wrapped as ``PreTrainedTokenizerFast``; ``decode`` gives back the CIF text.
* :func:`preprocess_cif` — canonical training text (no comments, 4-decimal numbers, single spaces,
  ``data_`` header = cell composition, ends with a blank line as CrystaLLM's CIFs do).
* :func:`render_cif` — the training text of a structure in one augmentation form (``symmetrized``: space
  group + symmetry-distinct sites; ``p1``: every site), coordinates rounded to a chosen number of decimals.
* :func:`train_cif_lm` — ``transformers.Trainer`` on any CIF corpus.
* :class:`CIFLanguageModelGenerator` — samples (temperature / top-k, several Z), validates every CIF
  (:mod:`.cif_validation`), ranks valid ones by mean token log-probability.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from pymatgen.core import Composition, Element
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, StoppingCriteria, StoppingCriteriaList

from .base import Candidate, StructureGenerator
from .cif_validation import validate_cif

__all__ = ["CIF_FORMS", "CIF_KEYWORDS", "default_cif_vocabulary", "build_cif_tokenizer", "preprocess_cif", "render_cif",
           "cell_formula",
           "prompt_for", "encode_cif", "new_cif_lm", "train_cif_lm", "CIFLanguageModelGenerator"]

CIF_KEYWORDS = (
    "data_", "loop_", "_symmetry_space_group_name_H-M", "_symmetry_Int_Tables_number", "_symmetry_equiv_pos_site_id",
    "_symmetry_equiv_pos_as_xyz", "_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha",
    "_cell_angle_beta", "_cell_angle_gamma", "_cell_volume", "_cell_formula_units_Z", "_chemical_formula_structural",
    "_chemical_formula_sum", "_chemical_name_systematic", "_atom_site_type_symbol", "_atom_site_label",
    "_atom_site_symmetry_multiplicity", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z",
    "_atom_site_occupancy", "_atom_site_attached_hydrogens", "_atom_site_B_iso_or_equiv", "_atom_type_symbol",
    "_atom_type_electronegativity", "_atom_type_radius", "_atom_type_ionic_radius", "_atom_type_oxidation_number",
)
CIF_SYMBOLS = ("x", "y", "z", ".", "(", ")", "+", "-", "/", "'", ",", " ", "\n")
UNK, PAD = "<unk>", "<pad>"


def default_cif_vocabulary() -> list[str]:
    """Elements H..Pu, digits, CIF keywords, punctuation, space-group symbols (``<symbol>_sg``), ``<unk>``, ``<pad>``."""
    return list(_default_vocabulary())


@cache
def _default_vocabulary() -> tuple[str, ...]:
    from pymatgen.symmetry.groups import SpaceGroup

    atoms = [Element.from_Z(z).symbol for z in range(1, 95)]
    groups = []
    for n in range(1, 231):
        sym = SpaceGroup.from_int_number(n).symbol.replace(" ", "")
        if sym + "_sg" not in groups:
            groups.append(sym + "_sg")
    return tuple(atoms + [str(d) for d in range(10)] + list(CIF_KEYWORDS) + list(CIF_SYMBOLS) + groups + [UNK, PAD])


def build_cif_tokenizer(vocabulary: Sequence[str] | None = None, pad_token: str | None = PAD) -> PreTrainedTokenizerFast:
    """CIF tokenizer over ``vocabulary`` (token order = ids; default :func:`default_cif_vocabulary`)."""
    vocab = []
    for t in vocabulary or default_cif_vocabulary():  # a repeated token (space group 'Pm' vs element) gets '_sg'
        vocab.append(t + "_sg" if t in vocab else t)
    if UNK not in vocab:
        raise ValueError(f"the CIF vocabulary must contain {UNK!r}")
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token=UNK))
    pieces = sorted((t for t in vocab if t not in (UNK, PAD)), key=len, reverse=True)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(re.escape(p) for p in pieces)), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("_sg", ""), decoders.Fuse()])
    pad = pad_token if pad_token in ids else "\n"
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=pad, eos_token="\n",
                                   clean_up_tokenization_spaces=False, model_input_names=["input_ids", "attention_mask"])


def encode_cif(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of CIF text (space-group symbols get the ``_sg`` suffix when the vocabulary has it)."""
    vocab = tokenizer.get_vocab()

    def _sg(m: re.Match) -> str:
        sym = m.group(2).strip("'").replace(" ", "")
        return f"{m.group(1)}{sym}_sg\n" if sym + "_sg" in vocab else m.group(0)

    text = re.sub(r"(_symmetry_space_group_name_H-M +)('[^'\n]*'|\S+)\n", _sg, text)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def cell_formula(comp: Composition) -> str:
    """Cell composition as CrystaLLM prompts write it: pymatgen element order, amount 1 omitted (``Na2Cl2``)."""
    parts = []
    for el, amt in comp.items():
        n = int(round(amt))
        parts.append(el.symbol + ("" if n == 1 else str(n)))
    return "".join(parts)


def prompt_for(comp: Composition, z: int = 1) -> str:
    """``data_<cell composition>\\n`` for ``z`` formula units of the reduced composition."""
    red = comp.reduced_composition
    return f"data_{cell_formula(red * z)}\n"


_NUM = re.compile(r"-?\d+\.\d+")


def preprocess_cif(cif: str, decimals: int = 4) -> str:
    """Canonical CIF training text (see module docstring); the CIF is parsed once to check it."""
    from pymatgen.core import Structure

    return _canonical(cif, Structure.from_str(cif, fmt="cif").composition, decimals)


CIF_FORMS = ("symmetrized", "p1")
# the symmetry-operation loop: dropped from training text; CifParser rebuilds the operations from the H-M symbol
_SYMOPS_LOOP = re.compile(r"loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n(?: +\d+ +'[^'\n]*'\n)+")
_SUM = re.compile(r"_chemical_formula_sum\s+'?([^'\n]+)'?")


def render_cif(structure: Any, form: str = "symmetrized", decimals: int = 4, symprec: float = 0.1) -> str:
    """Training text of a pymatgen ``Structure`` in one augmentation form of :data:`CIF_FORMS`.

    ``symmetrized``: the refined conventional cell, its space-group symbol and the symmetry-distinct sites with
    multiplicities (pymatgen ``CifWriter(symprec=...)``); ``p1``: every site of the given cell. The
    symmetry-operation loop is left out (as CrystaLLM does; pymatgen's parser rebuilds the operations from the
    space-group symbol). Numbers are rounded to ``decimals``; the ``data_`` header is the written cell's composition.
    """
    from pymatgen.io.cif import CifWriter

    if form not in CIF_FORMS:
        raise ValueError(f"CIF form {form!r}; choose one of {list(CIF_FORMS)}")
    text = str(CifWriter(structure, symprec=symprec if form == "symmetrized" else None))
    m = _SUM.search(text)
    comp = Composition(m.group(1)) if m else structure.composition
    return _canonical(_SYMOPS_LOOP.sub("", text), comp, decimals)


def _canonical(cif: str, composition: Composition, decimals: int) -> str:
    lines = [ln for ln in cif.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    body = "\n".join(ln for ln in lines if not ln.startswith("data_"))
    zero = "0." + "0" * decimals
    body = _NUM.sub(lambda m: f"{float(m.group(0)) + 0.0:.{decimals}f}".replace("-" + zero, zero), body)
    body = re.sub(r"(_symmetry_space_group_name_H-M\s+)'([^'\n]*)'", lambda m: m.group(1) + m.group(2).replace(" ", ""), body)
    body = re.sub(r"[ \t]+", " ", body)
    body = "\n".join(ln.strip() if not ln.startswith(" ") else " " + ln.strip() for ln in body.splitlines())
    return f"data_{cell_formula(composition)}\n{body}\n\n"


def new_cif_lm(tokenizer: PreTrainedTokenizerFast, n_embd: int = 128, n_layer: int = 4, n_head: int = 4,
               n_positions: int = 512, dropout: float = 0.0) -> GPT2LMHeadModel:
    """A fresh GPT-2 over the CIF vocabulary (CrystaLLM's architecture, ``gelu_new``, tied embeddings)."""
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, activation_function="gelu_new",
                     layer_norm_epsilon=1e-5, bos_token_id=tokenizer.convert_tokens_to_ids("data_"),
                     eos_token_id=tokenizer.convert_tokens_to_ids("\n"), pad_token_id=tokenizer.pad_token_id,
                     tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg)
    model.generation_config.eos_token_id = None  # a CIF ends with a blank line, not at its first newline
    return model


def train_cif_lm(
    cifs: Iterable[str], output_dir: str | Path, *, model: GPT2LMHeadModel | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None, epochs: float = 3.0, batch_size: int = 32,
    learning_rate: float = 1e-3, max_steps: int = -1, seed: int = 0, **model_kwargs: Any,
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, dict[str, Any]]:
    """Train a CIF LM on CIF strings with ``transformers.Trainer``; saves model + tokenizer to ``output_dir``.

    CIFs that do not parse or exceed the context are reported in the returned info (``rejected``), not dropped silently.
    """
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    set_seed(seed)
    tokenizer = tokenizer or build_cif_tokenizer()
    model = model or new_cif_lm(tokenizer, **model_kwargs)
    ids, rejected = [], []
    unk = tokenizer.unk_token_id
    for i, cif in enumerate(cifs):
        try:
            seq = encode_cif(tokenizer, preprocess_cif(cif))
        except Exception as err:  # noqa: BLE001 - reported below
            rejected.append({"row": i, "reason": f"{type(err).__name__}: {str(err)[:100]}"})
            continue
        if unk in seq:
            rejected.append({"row": i, "reason": "contains tokens outside the CIF vocabulary"})
        elif len(seq) > model.config.n_positions:
            rejected.append({"row": i, "reason": f"{len(seq)} tokens > context {model.config.n_positions}"})
        else:
            ids.append(seq)
    if not ids:
        raise ValueError(f"no usable CIF in the corpus ({len(rejected)} rejected, first: {rejected[:1]})")
    ds = Dataset.from_dict({"input_ids": ids})
    out = Path(output_dir)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=epochs, max_steps=max_steps,
        per_device_train_batch_size=batch_size, learning_rate=learning_rate, weight_decay=0.1, warmup_steps=20,
        lr_scheduler_type="cosine", logging_steps=20, save_strategy="no", report_to=[], seed=seed,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True, dataloader_num_workers=0,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    result = trainer.train()
    import shutil

    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"n_train": len(ids), "rejected": rejected, "train_loss": float(result.training_loss),
            "steps": int(result.global_step), "n_tokens": int(sum(map(len, ids)))}
    return model, tokenizer, info


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
        model, tokenizer: a causal LM over CIF tokens (e.g. from :func:`train_cif_lm` or the CrystaLLM converter).
        n_samples: draws per formula (spread over ``z_values``); the "valid sample budget".
        z_values: formula units per cell to prompt with (``data_<cell composition>``).
    """

    name = "cif-lm"

    def __init__(self, model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, n_samples: int = 20,
                 z_values: Sequence[int] = (1, 2, 4), temperature: float = 1.0, top_k: int | None = 10,
                 max_new_tokens: int | None = None, seed: int | None = 0) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.n_samples, self.z_values = n_samples, tuple(z_values)
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.max_new_tokens = max_new_tokens or model.config.n_positions
        self.newline = tokenizer.convert_tokens_to_ids("\n")
        # a CIF ends with a blank line (two newlines), not at the first newline: no single-token EOS
        self.model.generation_config.eos_token_id = None
        self.last_stats: Counter = Counter()

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
        out = self.model.generate(
            x, attention_mask=torch.ones_like(x), do_sample=True, temperature=self.temperature, top_k=self.top_k,
            max_new_tokens=budget, num_return_sequences=n, pad_token_id=self.newline,
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
        if not cands:
            top = ", ".join(f"{r} (x{c})" for r, c in reasons.most_common(3))
            raise ValueError(f"no valid sample in {self.n_samples} draws; most common problems: {top}")
        cands.sort(key=lambda c: -c.score)
        return cands[:n_candidates]
