"""How well an imKT backbone's alignment head predicts its teacher on the held-out validation formulas, read from the
masked formula (the MLM pass, as ``alignment_input=masked`` trains it) and from the clean one (as fine-tuning and
inference see formulas). Per target column: R^2 and MSE of the z-scored target (SECTION.md, "Alignment on the clean
formula").

The validation split, the target standardisation and the masks are the backbone's own: its saved ``recipe.yaml`` is
resolved and its data prepared exactly as pretraining did; masks use the recipe's seed at epoch 0.

Usage: PYTHONPATH=. python benchmarks/imkt/alignment_views.py BACKBONE [BACKBONE ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from crossmat.modeling import CrossMatForStructureAlignment
from crossmat.tokenization import CrossMatTokenizerFast
from crossmat.training.collator import MaskedElementCollator
from crossmat.training.data import prepare_stage_data
from crossmat.training.recipe import resolve_stage


@torch.no_grad()
def views(folder: Path, batch_size: int = 1024) -> dict:
    """R^2 / MSE per target column on the backbone's validation split, masked and clean input."""
    recipe = resolve_stage(yaml.safe_load((folder / "recipe.yaml").read_text()))
    data = prepare_stage_data(recipe, CrossMatTokenizerFast.from_pretrained(folder))
    split = data.validation
    model = CrossMatForStructureAlignment.from_pretrained(folder).eval()
    collator = MaskedElementCollator(recipe.train.mlm_probability, seed=int(recipe.seed))
    target = split.tensors["structure_embeddings"].double().numpy()
    out: dict = {"backbone": str(folder), "alignment_input": getattr(model.config, "alignment_input", "masked"),
                 "validation_rows": len(split)}
    for view in ("masked", "clean"):
        preds = []
        for rows in torch.arange(len(split)).split(batch_size):
            ids = split.tensors["input_ids"][rows]
            if view == "masked":
                ids, _ = collator.mask(ids, split.tensors["row_id"][rows])
            pooled = model.crossmat(ids, attention_mask=split.tensors["attention_mask"][rows]).pooler_output
            preds.append(model.projection(pooled).double().numpy())
        pred = np.concatenate(preds)
        mse = ((pred - target) ** 2).mean(0)
        r2 = 1.0 - mse / target.var(0)
        out[view] = {"mse": [round(float(v), 4) for v in mse], "r2": [round(float(v), 4) for v in r2],
                     "mse_mean": round(float(mse.mean()), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backbones", nargs="+", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    for folder in args.backbones:
        res = views(folder)
        results.append(res)
        print(f"{folder.name} (trained on the {res['alignment_input']} view; {res['validation_rows']} validation "
              f"formulas): masked input R2 {res['masked']['r2']} MSE {res['masked']['mse_mean']}; "
              f"clean input R2 {res['clean']['r2']} MSE {res['clean']['mse_mean']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
