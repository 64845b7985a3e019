"""Rank generated candidates by a universal potential's energy per atom (batched), optional bounded relaxation."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from .base import GenerationBatch, GenerationFailure
from .potentials import predict_energies, relax, unsupported_elements

__all__ = ["rank_candidates"]


def rank_candidates(
    batch: GenerationBatch,
    potential: str = "chgnet",
    relax_steps: int = 0,
    fmax: float = 0.1,
    batch_size: int = 64,
    progress: bool = False,
) -> GenerationBatch:
    """Re-score every candidate with ``-energy_per_atom`` and sort each formula's list (lowest energy first).

    Candidates with elements the potential does not support are dropped; a formula left with none gets a
    failure record. ``relax_steps > 0`` relaxes each candidate (FIRE, cell + positions) for at most that
    many steps before scoring.
    """
    out = GenerationBatch([[] for _ in batch], batch.failures)
    flat, where = [], []
    for row, cands in enumerate(batch):
        bad = {c_i: unsupported_elements(c.structure, potential) for c_i, c in enumerate(cands)}
        kept = [c for c_i, c in enumerate(cands) if not bad[c_i]]
        if cands and not kept:
            els = sorted({e for v in bad.values() for e in v})
            out.failures.append(GenerationFailure(row, cands[0].structure.composition.reduced_formula, f"rank:{potential}",
                                                  f"unsupported element(s) {els} for potential {potential}"))
        for c in kept:
            flat.append(c)
            where.append(row)
    if relax_steps > 0:
        for c in tqdm(flat, desc=f"relax ({potential}, <= {relax_steps} steps)", disable=not progress):
            c.structure, e = relax(c.structure, potential, steps=relax_steps, fmax=fmax)
            c.metadata["relaxed_steps_max"] = relax_steps
            c.metadata["energy_per_atom"] = e
        energies = np.array([c.metadata["energy_per_atom"] for c in flat])
    else:
        energies = predict_energies([c.structure for c in flat], potential, batch_size=batch_size)
    for c, e, row in zip(flat, energies, where, strict=True):
        c.metadata["energy_per_atom"] = float(e)
        c.metadata["pre_rank_score"] = c.metadata.get("pre_rank_score", c.score)
        c.score = -float(e)
        out[row].append(c)
    for row in range(len(out)):
        out[row].sort(key=lambda c: -c.score)
    out.failures.sort(key=lambda f: f.row)
    return out
