"""Training throughput (samples/s, MLM and fine-tuning at the quickstart model size) and the quickstart
(`accelerate launch train.py`) wall time and test metrics. Writes results.json next to this file.

Run from the repository root: ``python benchmarks/training/run.py [--skip-quickstart]``.
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
import yaml

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "benchmarks" / "_work" / "training"


def _load() -> float:
    return os.getloadavg()[0]


def throughput(stage_name: str, steps: int) -> dict:
    """Run the quickstart's stage for ``steps`` optimizer steps in-process; samples/s from metrics.jsonl."""
    sys.path.insert(0, str(REPO))
    from crossmat.training import run_recipe

    recipe = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    stages = {s["name"]: s for s in recipe["pipeline"]}
    stage = dict(stages[stage_name])
    stage["model"] = dict(stage.get("model", {}))
    if stage_name == "finetune":  # same model size as the quickstart, from scratch
        stage["model"] = {"config": stages["mlm"]["model"]["config"]}
    stage["train"] = {**stage["train"], "max_steps": steps, "log_every": steps, "checkpoint_every": 10**6,
                      "eval_every": 10**6, "progress_bar": False}
    stage.pop("name", None)
    out = WORK / f"throughput_{stage_name}"
    load0 = _load()
    t0 = time.perf_counter()
    run_recipe(stage, out)
    wall = time.perf_counter() - t0
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rec if r["split"] == "train"][-1]
    return {"stage": stage_name, "steps": steps, "batch_size": stage["train"]["batch_size"],
            "samples_per_second": round(train["samples_per_second"], 1), "stage_wall_s": round(wall, 1),
            "load_avg_1min_before": round(load0, 2), "load_avg_1min_after": round(_load(), 2)}


def quickstart() -> dict:
    out = WORK / "quickstart"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--cpu", "--num_processes", "1", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py", "--output-dir", str(out)]
    load0 = _load()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        return {"error": proc.stderr[-3000:], "wall_s": wall}
    info = json.loads((out / "finetune" / "training_info.json").read_text())
    pred = pd.read_csv(out / "finetune" / "test_predictions.csv")
    train_mean = info["data"]["target_mean"][0]
    baseline = float(np.abs(pred["target_S_p"] - train_mean).mean())
    stage_metrics = {s: json.loads((out / s / "training_info.json").read_text())["metrics"] for s in ("mlm", "imkt", "finetune")}
    return {"wall_s": round(wall, 1), "load_avg_1min_before": round(load0, 2), "load_avg_1min_after": round(_load(), 2),
            "stdout_tail": proc.stdout[-1500:], "metrics": stage_metrics,
            "finetune_test_mae_uV_per_K": stage_metrics["finetune"]["test"]["mae"],
            "mean_predictor_test_mae_uV_per_K": baseline, "test_rows": len(pred)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {
        "hardware": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                     "processor": platform.processor() or "unknown", "torch": torch.__version__,
                     "note": "shared 2-core machine; other jobs were running (see load averages)"},
        "model": yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())["pipeline"][0]["model"]["config"],
        "throughput": [throughput("mlm", args.steps), throughput("finetune", args.steps)],
    }
    if not args.skip_quickstart:
        results["quickstart"] = quickstart()
    path = Path(__file__).parent / "results.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
