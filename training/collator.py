"""Batch collation: masked-element modelling (MLM) masks element tokens only; labels are -100 elsewhere.

Masking is a pure function of ``(seed, epoch, row_id, position)`` through an integer hash, so a batch is
masked identically whether it is seen by one process or split over several, and a resumed run masks
exactly as the uninterrupted run did. Everything is vectorised over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from crossmat.tokenization.vocabulary import ELEMENT_START, MASK_ID, NUM_ELEMENTS, PAD_ID

__all__ = ["MaskedElementCollator", "hash_uniform", "trim_padding"]

_M32 = 0xFFFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors; products stay below 2**63."""
    x = x & _M32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _M32
    x = ((x ^ (x >> 15)) * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def hash_uniform(*keys: torch.Tensor | int) -> torch.Tensor:
    """Deterministic uniform [0, 1) numbers from integer keys (broadcast together)."""
    tensors = [k if isinstance(k, torch.Tensor) else torch.tensor(k, dtype=torch.long) for k in keys]
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    h = torch.zeros(shape, dtype=torch.long)
    for t in tensors:
        h = _mix(h * 31 + _mix(t.long().expand(shape) + 0x9E3779B9))
    return h.double() / 2.0**32


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut columns that are padding in every row of the batch."""
    mask = batch["attention_mask"]
    length = int(mask.sum(1).max())
    return {k: (v[:, :length] if v.dim() == 2 and v.shape[1] == mask.shape[1] and k not in ("structure_embeddings", "forest_output", "same_composition_target")
                else v)
            for k, v in batch.items()}


class MaskedElementCollator:
    """Collator for masked-element modelling on CrossMat token ids.

    Each element token is selected with probability ``mlm_probability`` (at least one per formula);
    selected tokens become ``[MASK]`` (80%), a random element (10%) or stay (10%); ``labels`` hold the
    original id there and -100 everywhere else (digits, groups, specials, unselected elements).
    Works on a list of tokenizer features (``input_ids`` lists, optional ``row_id``) or on a dict of
    padded tensors. Call :meth:`set_epoch` to draw new masks each epoch.
    """

    def __init__(self, mlm_probability: float = 0.15, seed: int = 0, mask_replace_prob: float = 0.8,
                 random_replace_prob: float = 0.1, keep_clean: bool = False) -> None:
        if not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
        self.mlm_probability = mlm_probability
        self.seed = seed
        self.epoch = 0
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.keep_clean = keep_clean  # also return the unmasked ids as ``clean_input_ids`` (clean-view alignment)
        self._calls = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, features: Sequence[Mapping[str, Any]] | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(features, Mapping):
            batch = {k: v.clone() if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in features.items()}
        else:
            batch = self._pad(features)
        if "row_id" not in batch:  # no stable row ids: fall back to a per-call counter (still seeded)
            n = batch["input_ids"].shape[0]
            batch["row_id"] = torch.arange(n) + self._calls * n
            self._calls += 1
        batch = trim_padding(batch)
        return self.mask_batch(batch)

    def mask_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mask ``batch["input_ids"]`` in place of the batch (labels added; with ``keep_clean`` the unmasked ids
        stay as ``clean_input_ids``)."""
        if self.keep_clean:
            batch["clean_input_ids"] = batch["input_ids"]
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"], batch["row_id"])
        return batch

    @staticmethod
    def _pad(features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), length), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        for i, f in enumerate(features):  # list-of-features entry point only; training uses tensors
            ids[i, : len(f["input_ids"])] = torch.as_tensor(f["input_ids"])
            mask[i, : len(f["input_ids"])] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if all("row_id" in f for f in features):
            out["row_id"] = torch.as_tensor([int(f["row_id"]) for f in features])
        return out

    def mask(self, input_ids: torch.Tensor, row_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return masked ids and labels for a batch (deterministic in seed, epoch, row id, position)."""
        ids = input_ids.clone()
        is_elem = (ids >= ELEMENT_START) & (ids < ELEMENT_START + NUM_ELEMENTS)
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        rows = row_id.view(-1, 1).expand_as(ids)
        u_select = hash_uniform(self.seed, self.epoch, rows, pos, 1)
        u_action = hash_uniform(self.seed, self.epoch, rows, pos, 2)
        u_random = hash_uniform(self.seed, self.epoch, rows, pos, 3)
        selected = is_elem & (u_select < self.mlm_probability)
        # at least one element per formula: the element token with the smallest draw
        score = torch.where(is_elem, u_select, torch.full_like(u_select, 2.0))
        first = torch.zeros_like(selected).scatter_(1, score.argmin(1, keepdim=True), True) & is_elem
        selected |= first & ~selected.any(1, keepdim=True)
        labels = torch.where(selected, ids, torch.full_like(ids, -100))
        to_mask = selected & (u_action < self.mask_replace_prob)
        to_random = selected & ~to_mask & (u_action < self.mask_replace_prob + self.random_replace_prob)
        random_elem = ELEMENT_START + (u_random * NUM_ELEMENTS).long().clamp(max=NUM_ELEMENTS - 1)
        ids = torch.where(to_mask, torch.full_like(ids, MASK_ID), ids)
        ids = torch.where(to_random, random_elem, ids)
        return ids, labels
