"""Dataset-builder benchmarks: full MatBench build time and structure-embedding throughput.

Run from the repo root:  python benchmarks/dataset_builders/run_benchmarks.py [--quick]
Writes benchmarks/dataset_builders/results.json (hardware, load average and sizes included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from crossmat.dataset_builders.embeddings import build_embeddings, get_encoder, load_structure_table, parse_structure
from crossmat.dataset_builders.matbench import build_matbench
from crossmat.dataset_builders.paths import data_dir

HERE = Path(__file__).resolve().parent


def _machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def bench_matbench(work: Path) -> dict:
    out = work / "matbench"
    start = time.perf_counter()
    meta = build_matbench(data_dir() / "matbench_v0.1", out)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    rows = sum(t["n_rows"] for t in meta["tasks"].values())
    return {"tasks": len(meta["tasks"]), "rows": rows, "seconds": round(seconds, 2), "output_mib": round(size / 2**20, 1),
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def bench_encoder(name: str, n: int, runs: list[tuple[int, int]]) -> dict:
    """Throughput for each (torch threads, batch size) in ``runs``."""
    table = load_structure_table("perov_5", limit=n)
    t0 = time.perf_counter()
    structures = [parse_structure(c) for c in table["structure"]]
    parse_s = time.perf_counter() - t0
    enc = get_encoder(name)
    enc(structures[:8], batch_size=8)  # warm-up
    sweep = {}
    default_threads = torch.get_num_threads()
    for i, (threads, bs) in enumerate(runs):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        enc(structures, batch_size=bs)
        dt = time.perf_counter() - t0
        sweep[f"run{i}:threads={threads},batch={bs}"] = {"seconds": round(dt, 2), "structures_per_s": round(len(structures) / dt, 1),
                                                  "load_average_1min": round(os.getloadavg()[0], 2)}  # fmt: skip
    torch.set_num_threads(default_threads)
    return {"structures": len(structures), "atoms_per_structure": len(structures[0]),
            "cif_parse_structures_per_s": round(len(structures) / parse_s, 1), "sweep": sweep}  # fmt: skip


def bench_end_to_end(work: Path, n: int, batch_size: int) -> dict:
    out = work / "emb"
    t0 = time.perf_counter()
    meta = build_embeddings("perov_5", "chgnet", out, batch_size=batch_size, shard_size=250, limit=n, num_threads=1)
    dt = time.perf_counter() - t0
    return {"structures": meta["rows"], "batch_size": batch_size, "torch_threads": 1, "seconds_total": round(dt, 2),
            "structures_per_s_total": round(meta["rows"] / dt, 1),
            "structures_per_s_embedding_loop": meta["last_run"]["structures_per_s"]}  # fmt: skip


def bench_aflow(work: Path) -> dict:
    """All 288 pip-shipped AFLOW prototypes with CHGNet (the training quickstart's alignment targets)."""
    t0 = time.perf_counter()
    meta = build_embeddings("aflow_prototypes", "chgnet", work / "aflow", batch_size=64, shard_size=100,
                            on_bad="report", num_threads=1)  # fmt: skip
    dt = time.perf_counter() - t0
    return {"rows": meta["rows"], "rejected_rows": meta["rejected_rows"], "unique_formulas": meta["unique_formulas"],
            "seconds_total": round(dt, 2), "structures_per_s_total": round(meta["rows"] / dt, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--out", default=None, help="results file (default results.json / results_aflow.json)")
    parser.add_argument("--aflow", action="store_true", help="only time the AFLOW-prototype CHGNet build")
    args = parser.parse_args()
    if args.aflow:
        work = Path(tempfile.mkdtemp(prefix="crossmat_bench_"))
        try:
            res = {"machine_before": _machine(), "aflow_prototypes_chgnet": bench_aflow(work), "machine_after": _machine()}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out = Path(args.out or HERE / "results_aflow.json")
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
        return
    args.out = args.out or str(HERE / "results.json")
    n = 128 if args.quick else 512
    work = Path(tempfile.mkdtemp(prefix="crossmat_bench_"))
    results: dict = {"machine_before": _machine()}
    try:
        results["matbench_full_build"] = bench_matbench(work)
        print(json.dumps(results["matbench_full_build"]), flush=True)
        results["chgnet_perov5"] = bench_encoder("chgnet", n, [(1, 32), (1, 128), (1, 256), (2, 128), (1, 128)])
        print(json.dumps(results["chgnet_perov5"]), flush=True)
        results["matgl_tensornet_perov5"] = bench_encoder("matgl-tensornet", n // 2, [(1, 128), (2, 128)])
        print(json.dumps(results["matgl_tensornet_perov5"]), flush=True)
        results["chgnet_end_to_end_build"] = bench_end_to_end(work, 2 * n, 128)
        print(json.dumps(results["chgnet_end_to_end_build"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine_after"] = _machine()
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
