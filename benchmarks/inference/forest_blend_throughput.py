"""What a blended forest (train.forest_blend) costs at predict time, as a ratio in one process (CPU).

The default-route model shape (hidden 128, 3 layers, 2 members) with a 200-tree Magpie-statistics forest fitted
on all matbench_expt_gap rows (the largest screening task: 4,604 rows), installed with weight 0.5, against the
same model with the forest off (``forest_weight = 1``): formulas/s of :class:`inference.FormulaPredictor` on the
first 10,000 matbench_mp_gap formulas, best of 3, and the folder's size with and without the trees.

    PYTHONPATH=. python benchmarks/inference/forest_blend_throughput.py > benchmarks/inference/forest_blend_throughput.txt

The encoder weights are random (throughput does not depend on them); the forest is a real fit.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from crossmat.inference import FormulaPredictor
from crossmat.modeling import CrossMatConfig, CrossMatForPropertyPrediction
from crossmat.modeling.forest import fit_forest_blend
from crossmat.tokenization import CrossMatTokenizerFast

DATA = Path(os.environ.get("CROSSMAT_DATA_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    tok = CrossMatTokenizerFast()
    gap = pd.read_csv(DATA / "matbench_v0.1" / "matbench_expt_gap.csv.gz")
    y = gap.iloc[:, 2].to_numpy()
    torch.manual_seed(0)
    model = CrossMatForPropertyPrediction(CrossMatConfig(
        hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, ensemble_size=2,
        num_labels=1, problem_type="regression", target_mean=[float(y.mean())], target_std=[float(y.std())],
        target_min=[0.0], architectures=["CrossMatForPropertyPrediction"])).eval()

    def split(frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        enc = tok(frame["formula"].tolist(), padding=True, return_tensors="pt")
        return {**enc, "labels": torch.as_tensor(frame.iloc[:, 2].to_numpy(), dtype=torch.float32).view(-1, 1)}

    cut = int(0.9 * len(gap))  # the last 10% stand in for the validation rows that choose the weight
    t = time.perf_counter()
    _, info = fit_forest_blend(model, split(gap.iloc[:cut]), split(gap.iloc[cut:]), trees=200, seed=0)
    fit_s = time.perf_counter() - t
    model.config.forest_weight = 0.5  # whatever the validation rows chose: measure a blend that runs the trees
    if model.forest is None:
        raise SystemExit("the forest was not kept (weight 1 chosen); nothing to time")
    formulas = pd.read_csv(DATA / "matbench_v0.1" / "matbench_mp_gap.csv.gz", usecols=["formula"])["formula"][:10_000]
    formulas = formulas.tolist()
    predictor = FormulaPredictor.from_model(model, tok, name="blend", batch_size=1024)
    blend_s = best_of(lambda: predictor.predict(formulas))
    model.config.forest_weight = 1.0
    plain_s = best_of(lambda: predictor.predict(formulas))
    with tempfile.TemporaryDirectory() as tmp:
        model.config.forest_weight = 0.5
        model.save_pretrained(Path(tmp) / "blend")
        blend_mb = (Path(tmp) / "blend" / "model.safetensors").stat().st_size / 2**20
        model.forest = None
        model.config.forest_nodes = 0
        del model.forest_feature_table
        model.save_pretrained(Path(tmp) / "plain")
        plain_mb = (Path(tmp) / "plain" / "model.safetensors").stat().st_size / 2**20
    print(f"torch {torch.__version__}, 1 thread, load average at the end {os.getloadavg()} (2 shared cores)")
    print(f"forest: {info['trees']} trees, {info['nodes']:,} nodes, fitted on {len(gap):,} expt_gap rows in {fit_s:.1f} s "
          f"(including the weight choice on the last {len(gap) - cut} rows: {info['weight']})")
    print(f"predict {len(formulas):,} mp_gap formulas: without the forest {len(formulas) / plain_s:,.0f} formulas/s, "
          f"with it {len(formulas) / blend_s:,.0f} formulas/s: ratio {plain_s / blend_s:.2f}")
    print(f"model.safetensors: {plain_mb:.1f} MB without, {blend_mb:.1f} MB with the forest")


if __name__ == "__main__":
    main()
