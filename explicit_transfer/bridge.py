"""Bridge to imKT: embeddings of *generated* structures as alignment targets for formulas without a known structure.

Rows follow the schema of ``dataset_builders.embeddings`` shards (``id, formula, embedding, encoder, source,
generated, energy_per_atom``) with ``generated=True``, so an imKT corpus can concatenate real and generated rows
and filter or weight them by the flag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from crossmat.tokenization import canonical_formula

from .pipeline import read_jsonl

__all__ = ["generated_embeddings"]


def generated_embeddings(generated_jsonl: str | Path, output: str | Path, encoder: str = "chgnet",
                         batch_size: int = 64) -> pd.DataFrame:
    """Embed the top candidate of every formula in a ``generate`` job file; write parquet ``output``.

    Formulas without a candidate are listed in ``<output stem>_rejected.csv`` (row, formula, reason).
    """
    from crossmat.dataset_builders.structure_encoders import get_encoder

    recs = read_jsonl(generated_jsonl)
    keep = [r for r in recs if r["candidates"]]
    rejected = pd.DataFrame([{"row": r["row"], "formula": r["formula"], "reason": r["failure"] or "no candidate"}
                             for r in recs if not r["candidates"]], columns=["row", "formula", "reason"])
    structs = [Structure.from_str(r["candidates"][0]["cif"], fmt="cif") for r in keep]
    if structs:
        emb, energy = get_encoder(encoder)(structs, batch_size=batch_size)
    else:
        emb, energy = np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
    frame = pd.DataFrame({
        "id": [r["id"] or f"generated-{r['row']}" for r in keep],
        "formula": [canonical_formula(r["formula"]) for r in keep],
        "embedding": list(emb.astype(np.float32)),
        "encoder": encoder,
        "source": [f"exkt:{r['candidates'][0]['source']}" for r in keep],
        "generated": True,
        "energy_per_atom": energy.astype(np.float32),
    })
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    if len(rejected):
        rejected.to_csv(out.with_name(out.stem + "_rejected.csv"), index=False)
    return frame
