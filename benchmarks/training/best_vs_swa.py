"""Does the weight average (SWA, the default recipe's final model) ever lose clearly to the best-validation
checkpoint? Paired per validation row, for finished default-route fold models (their ``model/`` folders with
``checkpoints/best``): mean |error| of each, the paired difference and its standard error. Only the held-out
validation rows of each fold (never trained on) are scored; test rows are not read.

    PYTHONPATH=. python benchmarks/training/best_vs_swa.py --runs /work/wt_route/benchmarks/_work/default_route \\
        > benchmarks/training/best_vs_swa.log

Used to fix the rule of ``train.keep_best_if_clearly_better`` before any test score: the rule must leave these
folds (where 200 epochs + SWA was chosen) alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model

from crossmat.evaluation.protocol import matbench_folds
from crossmat.evaluation.tasks import load_matbench_frame, matbench_task
from crossmat.modeling import CrossMatForPropertyPrediction
from crossmat.tokenization import CrossMatTokenizerFast
from crossmat.training.loop import swa_guard_decision


def _predict(model: CrossMatForPropertyPrediction, enc: dict) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 0].double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="folder with <task>/crossmat/fold_<k>/model")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("best_vs_swa.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = CrossMatTokenizerFast()
    rows = []
    for task_dir in sorted(p for p in args.runs.iterdir() if (p / "crossmat").is_dir()):
        task = matbench_task(task_dir.name)
        if task.task_type != "regression":
            continue
        frame = load_matbench_frame(task.name)
        for data in matbench_folds(task, frame, range(5), 0.1, 0):
            folder = task_dir / "crossmat" / f"fold_{data.fold}" / "model"
            if not (folder / "checkpoints" / "best" / "model.safetensors").is_file():
                continue
            enc = tok(data.validation["formula"].tolist(), padding=True, return_tensors="pt")
            y = data.validation["target"].to_numpy(np.float64)
            model = CrossMatForPropertyPrediction.from_pretrained(str(folder)).eval()
            e_swa = np.abs(_predict(model, enc) - y)
            load_model(model, str(folder / "checkpoints" / "best" / "model.safetensors"), strict=False)
            e_best = np.abs(_predict(model, enc) - y)
            d = e_swa - e_best
            best = json.loads((folder / "checkpoints" / "best" / "best.json").read_text())
            rec = {"task": task.name, "fold": data.fold, "validation_rows": len(y), "best_step": best["step"],
                   "mae_swa": float(e_swa.mean()), "mae_best": float(e_best.mean()),
                   "paired_diff": float(d.mean()), "paired_se": float(d.std(ddof=1) / np.sqrt(len(d))),
                   "z": swa_guard_decision(e_swa, e_best, 4.0)[0]}  # the rule the training loop applies
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"max z over {len(rows)} folds: {max(r['z'] for r in rows):.2f}")


if __name__ == "__main__":
    main()
