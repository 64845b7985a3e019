"""Structure auxiliary for fine-tuning (``train.structure_aux_weight`` with ``data.structure_targets``): cross-modal
transfer on the task's own compounds. Each training row whose composition has a crystal structure in
``data.structure_targets`` (a table of ``formula`` and a structure vector, e.g. the CHGNet embedding of its
lowest-energy Materials Project polymorph, written by ``python -m crossmat.dataset_builders embeddings``) gets that
vector, z-scored with the training rows' statistics, as a second target: a linear read-out of the pooled
formula embedding regresses it, and ``weight * mean squared error`` is added to the task loss. The read-out is
discarded after training, so the model still reads only formulas; validation and test rows never look a structure
up. This is imKT's alignment kept through fine-tuning, on the compounds the property model is trained on. In an
ensemble it acts on the member whose pooled embedding the model returns (the first)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from crossmat.tokenization import FormulaError, canonical_formula

from .data import DataError, load_source

__all__ = ["StructureAuxiliary", "structure_vectors"]


def structure_vectors(source: Any, embedding_column: str = "embedding",
                      what: str = "data.structure_targets") -> dict[str, np.ndarray]:
    """Canonical formula -> structure vector (the mean over the table's rows of that composition).

    Raises :class:`DataError` naming the row for a missing column, a malformed formula or a vector of the wrong
    length or with non-finite values; the table is only read (parquet / CSV / dataset folder), never executed."""
    frame, desc = load_source(source, what)
    missing = [c for c in ("formula", embedding_column) if c not in frame.columns]
    if missing:
        raise DataError(f"{what} ({desc}): missing column(s) {missing}; expected 'formula' and {embedding_column!r} "
                        f"(has {list(frame.columns)})")
    vectors = frame[embedding_column].to_numpy(dtype=object)
    lengths = np.array([len(v) if hasattr(v, "__len__") else -1 for v in vectors])
    if not (lengths > 0).any():
        raise DataError(f"{what} ({desc}): no row has a vector in column {embedding_column!r}")
    dim = int(np.bincount(lengths[lengths > 0]).argmax())
    keys: dict[str, list[int]] = {}
    for row, (formula, n) in enumerate(zip(frame["formula"].astype(str), lengths, strict=True)):
        if n != dim:
            raise DataError(f"{what} ({desc}) row {row} ({formula}): vector has length {n}, expected {dim}")
        try:
            keys.setdefault(canonical_formula(formula), []).append(row)
        except FormulaError as err:
            raise DataError(f"{what} ({desc}) row {row}: formula {formula!r} is not valid: {err}") from None
    mat = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    bad = np.flatnonzero(~np.isfinite(mat).all(axis=1))
    if len(bad):
        raise DataError(f"{what} ({desc}) row {int(bad[0])}: the vector holds non-finite values ({len(bad)} such row(s))")
    return {key: mat[rows].mean(0) for key, rows in keys.items()}


class StructureAuxiliary:
    """Per-training-row structure targets (z-scored on the rows that have one) and the linear read-out."""

    def __init__(self, vectors: dict[str, np.ndarray], formulas: Sequence[str], hidden_size: int, weight: float,
                 seed: int = 0) -> None:
        keys = list(formulas)  # canonical formulas, as a training split holds them (TensorSplit.formulas)
        dim = len(next(iter(vectors.values())))
        has = np.array([k in vectors for k in keys], dtype=bool)
        if not has.any():
            raise DataError("data.structure_targets: none of the training rows' compositions has a structure vector "
                            f"(e.g. {keys[0] if keys else 'no rows'}); check that the table's formulas are this task's")
        mat = np.zeros((len(keys), dim))
        mat[has] = np.stack([vectors[k] for k, h in zip(keys, has, strict=True) if h])
        mean = mat[has].mean(0)
        std = mat[has].std(0) if has.sum() > 1 else np.ones(dim)
        std = np.where(std > 1e-8, std, 1.0)  # constant dimensions are centred, not divided
        z = np.where(has[:, None], (mat - mean) / std, 0.0)
        self.weight = float(weight)
        self.targets = torch.as_tensor(z, dtype=torch.float32)
        self.mask = torch.as_tensor(has)
        generator = torch.Generator().manual_seed(int(seed) * 7919 + 17)
        self.head = torch.nn.Linear(int(hidden_size), dim)
        with torch.no_grad():  # seeded, independent of the global RNG state the model's own init used
            bound = 1.0 / float(hidden_size) ** 0.5
            self.head.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.zero_()
        self.rows_with_target = int(has.sum())
        self.dim = dim

    def summary(self) -> dict[str, Any]:
        return {"weight": self.weight, "dimensions": self.dim,
                "training_rows_with_structure": f"{self.rows_with_target} of {len(self.mask)}"}

    def loss(self, rows: torch.Tensor, pooled: torch.Tensor, head: torch.nn.Module | None = None) -> torch.Tensor:
        """``weight * mean squared error`` of the read-out over this batch's rows that have a structure target
        (zero, with a gradient path, for a batch with none). ``head`` is the read-out as prepared by Accelerate."""
        rows = rows.cpu()
        mask = self.mask[rows].to(pooled.device)
        target = self.targets[rows].to(pooled.device)
        pred = (head or self.head)(pooled.float())
        err = ((pred - target) ** 2).mean(-1) * mask
        return self.weight * err.sum() / mask.sum().clamp(min=1)

