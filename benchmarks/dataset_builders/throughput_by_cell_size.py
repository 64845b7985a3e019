"""Structure-embedding throughput by cell size on real Materials Project structures (CHGNet, TensorNet).

Run from the repo root:  python benchmarks/dataset_builders/throughput_by_cell_size.py [--per-bin 64]
Samples ``--per-bin`` structures (seeded) from each site-count bin of ``mp_structures``, parses them, then
times each encoder on each bin in the same process (1 torch thread, batch 64, one warm-up batch first).
Writes benchmarks/dataset_builders/throughput_by_cell_size.json (load average included: the 2 cores of
this machine are shared, so compare bins and encoders with each other, not with other runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from crossmat.dataset_builders.embeddings import get_encoder, parse_structure
from crossmat.dataset_builders.paths import data_dir

HERE = Path(__file__).resolve().parent
BINS = ((1, 8), (9, 16), (17, 32), (33, 64), (65, 200))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-bin", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(HERE / "throughput_by_cell_size.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = pd.read_csv(data_dir() / "mp_structures" / "structures.csv.gz")
    rng = np.random.default_rng(0)
    samples = {}
    for lo, hi in BINS:
        rows = table[(table["nsites"] >= lo) & (table["nsites"] <= hi)]
        pick = rows.iloc[np.sort(rng.choice(len(rows), size=min(args.per_bin, len(rows)), replace=False))]
        samples[f"{lo}-{hi}"] = (len(rows), [parse_structure(c) for c in pick["cif"]])
    results = []
    for name in ("chgnet", "matgl-tensornet"):
        encoder = get_encoder(name)
        encoder(samples["1-8"][1][:8], batch_size=8)  # warm-up (lazy imports, first graph build)
        for label, (n_total, structures) in samples.items():
            ok = [s for s in structures if not encoder.unsupported(s)]
            start = time.perf_counter()
            encoder(ok, batch_size=args.batch_size)
            sec = time.perf_counter() - start
            atoms = sum(len(s) for s in ok)
            results.append({"encoder": name, "sites": label, "structures_in_mp": int(n_total), "timed": len(ok),
                            "mean_sites": round(atoms / len(ok), 1), "seconds": round(sec, 2),
                            "structures_per_s": round(len(ok) / sec, 1), "atoms_per_s": round(atoms / sec, 1)})  # fmt: skip
            print(json.dumps(results[-1]))
    # the full-build estimate: every MP structure at its bin's measured rate
    estimate = {}
    for name in ("chgnet", "matgl-tensornet"):
        rate = {r["sites"]: r["structures_per_s"] for r in results if r["encoder"] == name}
        estimate[name] = round(sum(samples[b][0] / rate[b] for b in rate) / 60, 1)
    out = {"per_bin": results, "estimated_minutes_all_54629_mp_structures_1_thread": estimate,
           "load_average_after": os.getloadavg(), "torch_threads": 1, "batch_size": args.batch_size,
           "per_bin_sample": args.per_bin}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["estimated_minutes_all_54629_mp_structures_1_thread"]))


if __name__ == "__main__":
    main()
