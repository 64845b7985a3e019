"""CIF text for the CIF language model (CrystaLLM-style): the CIF tokenizer and the canonical training text.

* :func:`build_cif_tokenizer` — a ``tokenizers`` WordLevel tokenizer whose pre-tokenizer isolates CIF tokens
  (element symbols, single digits, CIF keywords, punctuation, space-group symbols suffixed ``_sg``);
  wrapped as ``PreTrainedTokenizerFast``; ``decode`` gives back the CIF text.
* :func:`preprocess_cif` — canonical training text of a CIF (no comments, rounded numbers, single spaces,
  ``data_`` header = cell composition, ends with a blank line as CrystaLLM's CIFs do).
* :func:`render_cif` — the training text of a structure in one augmentation form (``symmetrized``: space
  group + symmetry-distinct sites; ``p1``: every site), coordinates rounded to a chosen number of decimals.
* :func:`prompt_for` / :func:`cell_formula` — the ``data_<cell composition>`` prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from pymatgen.core import Composition, Element
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["CIF_FORMS", "CIF_KEYWORDS", "CIF_SYMBOLS", "PAD", "UNK", "build_cif_tokenizer", "cell_formula",
           "default_cif_vocabulary", "encode_cif", "preprocess_cif", "prompt_for", "render_cif"]

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
    """``data_<cell composition>\\n`` for ``z`` formula units of the reduced composition.

    Elements in pymatgen's formula order (by electronegativity), the order of the training headers (they come
    from ``CifWriter``'s ``_chemical_formula_sum``), whatever order the caller's formula used.
    """
    red = comp.reduced_composition
    return f"data_{cell_formula(Composition((red * z).formula))}\n"


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
