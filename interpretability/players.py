"""Players of a formula and batched coalition inputs.

A *player* is one distinct element of the formula together with its amount: the element token and
the digit tokens that follow it. This matches how CrossMat reads a formula (only element slots are
attended; amounts are decoded from the digit tokens). A coalition keeps some players; the others are

* ``"mask"``: the element token becomes ``[MASK]`` and its amount digits stay, so every fraction is
  unchanged and the model only loses the *identity* of the absent elements;
* ``"remove"``: the element and its amount are dropped from the formula, so the remaining fractions
  renormalise. The model refuses a formula without elements, so the empty coalition is
  ``[CLS] [MASK] [SEP]``: a single element of unknown identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from crossmat.modeling import decode_composition
from crossmat.tokenization import FormulaError
from crossmat.tokenization.vocabulary import ELEMENT_START, MASK_ID, NUM_ELEMENTS, PAD_ID, SEP_ID, VOCAB, token_layout

__all__ = ["STRATEGIES", "FormulaPlayers", "coalition_inputs", "formula_players", "formula_players_batch"]

STRATEGIES = ("mask", "remove")


@dataclass
class FormulaPlayers:
    """A tokenized formula split into players (one per distinct element)."""

    formula: str
    canonical: str
    input_ids: np.ndarray  # (length,) token ids incl. [CLS]/[SEP]
    element_positions: np.ndarray  # (n_players,) position of each player's element token
    owner: np.ndarray  # (length,) player index owning each token, -1 for [CLS]/[SEP]
    elements: list[str] = field(default_factory=list)
    fractions: list[float] = field(default_factory=list)

    @property
    def n_players(self) -> int:
        return len(self.elements)


def formula_players(formula: str, tokenizer, row: int | None = None) -> FormulaPlayers:
    """Tokenize ``formula`` (validated and canonicalised by ``tokenizer``) and split it into players.

    Raises :class:`tokenization.FormulaError` naming the formula (and ``row``) on invalid input.
    """
    return formula_players_batch([formula], tokenizer, rows=[row])[0]


def formula_players_batch(
    formulas: Sequence[str], tokenizer, rows: Sequence[int | None] | None = None
) -> list[FormulaPlayers]:
    """:func:`formula_players` for many formulas: one tokenizer call, fractions decoded from the ids
    in one vectorised pass (the model's own decoding). ``rows`` (default 0..n-1) name rows in errors."""
    rows = list(range(len(formulas))) if rows is None else list(rows)
    prepare = getattr(tokenizer, "prepare_formula", None)
    texts = [prepare(f, r) if prepare is not None else f for f, r in zip(formulas, rows, strict=True)]
    if not texts:
        return []
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    ids_all, att_all = enc["input_ids"], enc["attention_mask"]
    is_elem_all = (ids_all >= ELEMENT_START) & (ids_all < ELEMENT_START + NUM_ELEMENTS)
    slot_mask, fractions = decode_composition(ids_all, SimpleNamespace(**token_layout()))
    out = []
    for k, (f, r, text) in enumerate(zip(formulas, rows, texts, strict=True)):
        where = f"row {r}: " if r is not None else ""
        length = int(att_all[k].sum())
        ids = ids_all[k, :length].numpy()
        is_elem = is_elem_all[k, :length].numpy()
        positions = np.flatnonzero(is_elem)
        if positions.size == 0:
            raise FormulaError(f, where + "no element tokens")
        if not bool(slot_mask[k, positions].all()):
            raise FormulaError(f, where + "repeated element after tokenization")
        # Every token from an element up to the next element (or [SEP]) belongs to that element.
        owner = np.cumsum(is_elem) - 1
        owner[0] = owner[-1] = -1
        symbols = [VOCAB[i] for i in ids[positions]]
        out.append(FormulaPlayers(f, text, ids, positions, owner, symbols, fractions[k, positions].tolist()))
    return out


def coalition_inputs(
    players: FormulaPlayers, coalitions: np.ndarray | torch.Tensor, strategy: str = "mask"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape ``(n_coalitions, length)`` for boolean ``coalitions``
    of shape ``(n_coalitions, n_players)`` (True = player present). Fully vectorised."""
    if strategy not in STRATEGIES:
        raise ValueError(f"masking strategy must be one of {STRATEGIES}, got {strategy!r}")
    coal = torch.as_tensor(np.asarray(coalitions, dtype=bool))
    if coal.ndim != 2 or coal.shape[1] != players.n_players:
        raise ValueError(f"coalitions must have shape (n, {players.n_players}), got {tuple(coal.shape)}")
    base = torch.as_tensor(players.input_ids).expand(coal.shape[0], -1).clone()
    if strategy == "mask":
        pos = torch.as_tensor(players.element_positions)
        base[:, pos] = torch.where(coal, base[:, pos], torch.full_like(base[:, pos], MASK_ID))
        return base, torch.ones_like(base)
    owner = torch.as_tensor(players.owner)
    keep = torch.where(owner >= 0, coal[:, owner.clamp(min=0)], torch.ones_like(coal[:, :1]).expand_as(base))
    # Stable sort moves the kept tokens to the front in their original order.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    ids = base.gather(1, order)
    attention = keep.gather(1, order).long()
    ids = torch.where(attention.bool(), ids, torch.full_like(ids, PAD_ID))
    # The model cannot read a formula without elements: the empty coalition is one unknown element.
    empty = ~coal.any(1)
    if bool(empty.any()):
        ids[empty, 1], ids[empty, 2] = MASK_ID, SEP_ID
        attention[empty, :3] = 1
    width = int(attention.sum(1).max())
    return ids[:, :width], attention[:, :width]
