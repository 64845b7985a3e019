"""Deviation of bfloat16 / int8 inference from float32 for a *trained* property model.

    python benchmarks/inference/precision.py --model DIR --task matbench_expt_is_metal [--n 2000]

Random-weight models (throughput.py) give near-constant outputs, so only a trained model shows what
reduced precision costs. Writes precision_<task>.json next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from crossmat.inference import FormulaPredictor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True, help="MatBench v0.1 task whose formulas are used")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    data = Path(os.environ.get("CROSSMAT_DATA_DIR", REPO.parent / "shared" / "data"))
    formulas = pd.read_csv(data / "matbench_v0.1" / f"{args.task}.csv.gz", usecols=["formula"])["formula"]
    formulas = formulas.tolist()[: args.n]
    ref_pred = FormulaPredictor(args.model)
    ref = ref_pred.predict(formulas).values
    cfg = ref_pred.model.config
    out = {
        "model": str(args.model),
        "model_size": {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size")},
        "problem_type": ref_pred.problem_type,
        "formulas": f"first {len(formulas)} of {args.task}",
        "output": "probabilities" if ref_pred.problem_type != "regression" else "values in physical units",
        "float32_output_std": float(ref.std()),
        "results": {},
    }
    for precision in ("bfloat16", "int8"):
        got = FormulaPredictor(args.model, precision=precision).predict(formulas).values
        err = np.abs(got - ref)
        row = {"max_abs_diff": float(err.max()), "mean_abs_diff": float(err.mean())}
        if ref_pred.problem_type != "regression":
            row["label_agreement"] = float((got.argmax(1) == ref.argmax(1)).mean())
        out["results"][precision] = row
        print(precision, row)
    (HERE / f"precision_{args.task}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
