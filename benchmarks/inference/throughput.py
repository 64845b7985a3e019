"""Inference throughput of CrossMat property models on real MatBench formulas (CPU).

Measures formulas/s of :class:`inference.FormulaPredictor` (validation + tokenisation + model) for
several model sizes, with the model's own ``forward`` (which owns any fast path) in float32, bfloat16
and int8; then the ``crossmat-predict`` file path end to end (CSV in -> CSV out) and its
peak memory on a 100k-row and a 1M-row file (streaming: memory must not grow with the file).

    python benchmarks/inference/throughput.py            # writes results.json / results.txt here
    python benchmarks/inference/throughput.py --quick    # fewer formulas (smoke run)

Weights are random (throughput does not depend on their values). Work files go to benchmarks/_work/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import crossmat.modeling  # noqa: E402,F401
from crossmat.inference import FormulaPredictor  # noqa: E402
from crossmat.modeling import CrossMatConfig, CrossMatForPropertyPrediction  # noqa: E402
from crossmat.tokenization import CrossMatTokenizerFast  # noqa: E402

SIZES = {
    "default (CrossMatConfig(): hidden 256, 4 layers, 8 heads, FFN 1024)": {},
    "small (hidden 128, 2 layers, 4 heads, FFN 512)": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
    ),
    "tiny (hidden 64, 2 layers, 4 heads, FFN 256)": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
    ),
}


def data_dir() -> Path:
    return Path(os.environ.get("CROSSMAT_DATA_DIR", REPO.parent / "shared" / "data"))


def make_model(path: Path, overrides: dict) -> Path:
    cfg = CrossMatConfig(
        num_labels=1,
        problem_type="regression",
        target_mean=[1.0],
        target_std=[1.5],
        target_names=["band_gap"],
        target_units=["eV"],
        **overrides,
    )
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(cfg)
    model.save_pretrained(path)
    CrossMatTokenizerFast().save_pretrained(path)
    return path


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cli_run(model: Path, src: Path, out: Path) -> dict:
    """Run crossmat-predict in a child process; wall time and the child's peak RSS."""
    code = (
        "import resource, sys, time; from inference.predict import main; t = time.perf_counter(); "
        f"rc = main(['--model', {str(model)!r}, '--input', {str(src)!r}, '--output', {str(out)!r}, '--no-progress']); "
        "print('WALL', time.perf_counter() - t); "
        "print('RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    vals = dict(line.split() for line in proc.stdout.splitlines() if line.startswith(("WALL", "RSS_MB")))
    return {"wall_s": float(vals["WALL"]), "peak_rss_mb": float(vals["RSS_MB"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--cli-only",
        action="store_true",
        help="rerun only the 100k-row tiny-model CLI run and add it to the existing results (as cli_rerun)",
    )
    ap.add_argument("--n", type=int, default=10_000, help="formulas per throughput measurement")
    args = ap.parse_args()
    n = 2_000 if args.quick else args.n
    work = REPO / "benchmarks" / "_work" / "inference"
    work.mkdir(parents=True, exist_ok=True)
    formulas = pd.read_csv(data_dir() / "matbench_v0.1" / "matbench_mp_gap.csv.gz", usecols=["formula"])[
        "formula"
    ].tolist()
    sample = formulas[:n]
    if args.cli_only:
        res = cli_run(work / "model_64", work / "mp_gap_100k.csv", work / "out.csv")
        res.update(size="tiny", rows=100_000, formulas_per_s=100_000 / res["wall_s"], input="mp_gap_100k.csv")
        res["load_average"] = os.getloadavg()
        saved = json.loads((HERE / "results.json").read_text())
        saved.setdefault("cli_rerun", []).append(res)
        (HERE / "results.json").write_text(json.dumps(saved, indent=2))
        line = (
            f"rerun (current code) crossmat-predict tiny model, 100,000 rows: {res['wall_s']:.1f} s = "
            f"{res['formulas_per_s']:,.0f} rows/s, peak RSS {res['peak_rss_mb']:.0f} MB, load {res['load_average']}"
        )
        with open(HERE / "results.txt", "a") as fh:
            fh.write(line + "\n")
        print(line)
        return
    tok = CrossMatTokenizerFast()
    lengths = [len(e.ids) for e in tok.backend_tokenizer.encode_batch(sample)]
    env = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
        ),
        "os_cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg(),
        "note": "2 CPU cores shared with other jobs during the run; see load averages",
        "formulas": f"first {n} formulas of MatBench v0.1 matbench_mp_gap",
        "tokens_per_formula_mean": float(np.mean(lengths)),
        "tokens_per_formula_max": int(max(lengths)),
    }
    results: dict = {"environment": env, "throughput": [], "cli": []}
    lines = []

    t_tok = timed(lambda: [tok.prepare_formula(f) for f in sample], 2)
    t_enc = timed(lambda: tok.backend_tokenizer.encode_batch(sample), 2)
    results["tokenizer_only_formulas_per_s"] = {"validate": n / t_tok, "encode": n / t_enc}
    lines.append(f"tokenizer only: validate {n / t_tok:,.0f}/s, encode {n / t_enc:,.0f}/s")

    for label, overrides in SIZES.items():
        folder = make_model(work / f"model_{overrides.get('hidden_size', 256)}", overrides)
        params = sum(p.numel() for p in CrossMatForPropertyPrediction.from_pretrained(folder).parameters())
        reference = None
        for mode, precision in [
            ("model forward, float32", "float32"),
            ("model forward, bfloat16", "bfloat16"),
            ("model forward, int8 dynamic quantisation", "int8"),
        ]:
            pred = FormulaPredictor(folder, batch_size=2048, precision=precision)
            pred.predict(sample[:2048])  # warm-up
            out: dict = {}

            def run(p=pred, o=out) -> None:
                o["values"] = p.predict(sample).values[:, 0]

            secs = timed(run, 1)
            if reference is None or precision == "float32":
                reference = out["values"] if reference is None else reference
            err = np.abs(out["values"] - reference)
            row = {
                "size": label,
                "parameters": params,
                "mode": mode,
                "formulas": n,
                "seconds": secs,
                "formulas_per_s": n / secs,
                "max_abs_diff_vs_float32_forward": float(err.max()),
                "output_std": float(np.std(reference)),
            }
            results["throughput"].append(row)
            lines.append(
                f"{label} [{params / 1e6:.2f} M params] {mode}: {n / secs:,.0f} formulas/s "
                f"(max |diff| vs float32 {err.max():.2g}, output std {np.std(reference):.2g})"
            )
            print(lines[-1], flush=True)

    # end to end: CSV in -> CSV out, tiny and default sizes; memory with a 10x larger file
    src = work / "mp_gap_100k.csv"
    pd.DataFrame({"formula": formulas[:100_000], "row": range(100_000)}).to_csv(src, index=False)
    big = work / "mp_gap_1M.csv"
    if not args.quick:
        with open(big, "w") as fh:
            fh.write("formula,row\n")
            for rep in range(10):
                fh.writelines(f"{f},{rep * 100_000 + i}\n" for i, f in enumerate(formulas[:100_000]))
    runs = [("tiny", work / "model_64", src, 100_000)]
    if not args.quick:
        src20 = work / "mp_gap_20k.csv"
        pd.DataFrame({"formula": formulas[:20_000], "row": range(20_000)}).to_csv(src20, index=False)
        runs += [("tiny", work / "model_64", big, 1_000_000), ("default", work / "model_256", src20, 20_000)]
    for size, model, path, rows in runs:
        res = cli_run(model, path, work / "out.csv")
        res.update(size=size, rows=rows, formulas_per_s=rows / res["wall_s"], input=path.name)
        results["cli"].append(res)
        lines.append(
            f"crossmat-predict {size} model, {rows:,} rows ({path.name}): {res['wall_s']:.1f} s = "
            f"{res['formulas_per_s']:,.0f} rows/s end to end, peak RSS {res['peak_rss_mb']:.0f} MB"
        )
        print(lines[-1], flush=True)

    env["load_average_end"] = os.getloadavg()
    target = 5000
    best_default = max(r["formulas_per_s"] for r in results["throughput"] if r["size"].startswith("default"))
    verdict = (
        f"target >= {target} formulas/s at the default size: {'MET' if best_default >= target else 'NOT MET'} "
        f"(best {best_default:,.0f}/s)"
    )
    results["verdict"] = verdict
    lines.append(verdict)
    out = "benchmarks/inference/results_quick" if args.quick else "benchmarks/inference/results"
    (REPO / f"{out}.json").write_text(json.dumps(results, indent=2))
    header = [f"{k}: {v}" for k, v in env.items()]
    (REPO / f"{out}.txt").write_text("\n".join(header + [""] + lines) + "\n")
    print(verdict)


if __name__ == "__main__":
    main()
