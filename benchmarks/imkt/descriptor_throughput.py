"""Throughput of the ``descriptors`` structure encoder on 500 real MP structures (one core, parsing excluded).

Usage: PYTHONPATH=. python benchmarks/imkt/descriptor_throughput.py [--n 500] [--metadata DIR]
Writes benchmarks/imkt/descriptor_throughput.json and, with ``--metadata`` (an embeddings folder holding
``embeddings_metadata.json``), stores the result there as ``descriptors.throughput_check``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from crossmat.dataset_builders.embeddings import load_structure_table, parse_structure
from crossmat.dataset_builders.structure_encoders import DescriptorEncoder

HERE = Path(__file__).resolve().parent


def measure(n: int = 500, seed: int = 0) -> dict:
    """Seeded random sample of ``n`` MP structures: structures/s overall and by cell size."""
    table = load_structure_table("mp_structures")
    rows = np.sort(np.random.default_rng(seed).choice(len(table), size=n, replace=False))
    structures = [parse_structure(table["structure"].iloc[i]) for i in rows]
    enc = DescriptorEncoder()
    enc.describe(structures[0])  # warm-up (imports, radius table), not timed
    enc.symmetry_failures = 0
    seconds = []
    for s in structures:
        t = time.perf_counter()
        enc.describe(s)
        seconds.append(time.perf_counter() - t)
    seconds, sites = np.array(seconds), np.array([len(s) for s in structures])
    bins = [(1, 8), (9, 16), (17, 32), (33, 64), (65, 200)]
    return {
        "structures": n, "seed": seed, "threads": os.environ.get("OMP_NUM_THREADS"),
        "seconds": round(float(seconds.sum()), 2), "structures_per_s": round(n / float(seconds.sum()), 1),
        "median_ms": round(1000 * float(np.median(seconds)), 2), "max_ms": round(1000 * float(seconds.max()), 1),
        "by_sites": {f"{lo}-{hi}": {"n": int(m.sum()), "structures_per_s": round(int(m.sum()) / float(seconds[m].sum()), 1)}
                     for lo, hi in bins if (m := (sites >= lo) & (sites <= hi)).any()},
        "symmetry_failures": enc.symmetry_failures,
        "note": "one process, 1 thread, 2 CPU cores shared with other jobs; parsing the CIFs is not timed",
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--metadata", default=None, help="embeddings folder whose metadata gets the measurement")
    args = ap.parse_args()
    result = measure(args.n)
    (HERE / "descriptor_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.metadata:
        path = Path(args.metadata) / "embeddings_metadata.json"
        meta = json.loads(path.read_text())
        meta.setdefault("descriptors", {})["throughput_check"] = result
        path.write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
