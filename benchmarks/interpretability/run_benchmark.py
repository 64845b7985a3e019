"""Interpretability on real MatBench models: CLI explanations + figures, dataset-level pair analysis,
completeness and approximation-error measurements, timings.

Trains a small CrossMatForPropertyPrediction per task on the official fold-0 training rows with a short
plain PyTorch loop (no pretraining; 15% of element tokens are replaced by [MASK] during training with
the label unchanged, so the model has seen [MASK] and the "mask" coalitions are in-distribution),
reports its fold-0 test score, then runs ``python -m crossmat.interpretability explain`` and ``aggregate`` on the
fold-0 test rows. Models go to benchmarks/_work (git-ignored); everything reported goes next to this file.

    python benchmarks/interpretability/run_benchmark.py            # both tasks, ~15 min on 2 busy shared cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import mean_absolute_error, roc_auc_score

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import crossmat.modeling  # noqa: E402,F401
from crossmat.interpretability import explain_attributions, explain_interactions, formula_players  # noqa: E402
from crossmat.modeling import CrossMatConfig, CrossMatForPropertyPrediction  # noqa: E402
from crossmat.tokenization import CrossMatTokenizerFast  # noqa: E402
from crossmat.tokenization.vocabulary import ELEMENT_START, MASK_ID, NUM_ELEMENTS  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = ROOT / "benchmarks" / "_work" / "interpretability"
DATA = Path(os.environ.get("CROSSMAT_DATA_DIR", ROOT.parent / "shared" / "data")) / "matbench_v0.1"
TASKS = {
    "matbench_expt_is_metal": ("is_metal", "single_label_classification"),
    "matbench_expt_gap": ("gap expt", "regression"),
}


def train(task: str, steps: int, seed: int = 0) -> tuple[Path, dict]:
    target, problem = TASKS[task]
    df = pd.read_csv(DATA / f"{task}.csv.gz")
    tr, te = df[df.test_fold != 0], df[df.test_fold == 0]
    tok = CrossMatTokenizerFast()
    torch.manual_seed(seed)
    y = tr[target].astype(float).to_numpy()
    kw = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              hidden_dropout_prob=0.1, fraction_frequencies=8)
    if problem == "regression":
        cfg = CrossMatConfig(num_labels=1, problem_type=problem, target_mean=[float(y.mean())],
                             target_std=[float(y.std())], target_names=[target], target_units=["eV"], **kw)
    else:
        cfg = CrossMatConfig(num_labels=2, problem_type=problem, id2label={0: "non-metal", 1: "metal"},
                             label2id={"non-metal": 0, "metal": 1}, **kw)
    model = CrossMatForPropertyPrediction(cfg)
    enc = tok(tr.formula.tolist(), padding=True, return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]
    labels = torch.tensor(y, dtype=torch.float32 if problem == "regression" else torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    t0 = time.time()
    for _ in range(steps):
        b = torch.randint(0, len(ids), (128,))
        bi = ids[b]
        is_el = (bi >= ELEMENT_START) & (bi < ELEMENT_START + NUM_ELEMENTS)
        bi = torch.where(is_el & (torch.rand(bi.shape) < 0.15), MASK_ID, bi)
        lab = labels[b].unsqueeze(-1) if problem == "regression" else labels[b]
        loss = model(input_ids=bi, attention_mask=att[b], labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    train_s = time.time() - t0
    model.eval()
    enc_te = tok(te.formula.tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc_te).logits
    if problem == "regression":
        score = {"fold0_test_MAE_eV": float(mean_absolute_error(te[target], logits[:, 0].numpy()))}
    else:
        score = {"fold0_test_ROC_AUC": float(roc_auc_score(te[target].astype(int), logits.softmax(-1)[:, 1].numpy()))}
    out = WORK / task
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, {"train_rows": len(tr), "test_rows": len(te), "steps": steps, "batch": 128,
                 "train_seconds": round(train_s, 1), **score}


def cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "crossmat.interpretability", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return res.stdout


def measurements(model_dir: Path, task: str) -> dict:
    from crossmat.interpretability import load_property_model

    model, tok = load_property_model(model_dir)
    df = pd.read_csv(DATA / f"{task}.csv.gz")
    te = df[df.test_fold == 0].formula.tolist()
    out: dict = {}
    # Integrated-gradients completeness over 300 test formulas: fixed 64 steps, then adaptive (default).
    for label, max_steps in (("integrated_gradients_fixed_64_steps", 64), ("integrated_gradients_adaptive", 1024)):
        t = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attr = explain_attributions(model, tok, te[:300], n_steps=64, max_steps=max_steps)
        gaps = np.array([abs(a.delta) for a in attr])
        diffs = np.array([abs(a.prediction - a.baseline_prediction) for a in attr])
        out[label] = {"formulas": 300, "seconds": round(time.time() - t, 2),
                      "formulas_refined_beyond_64_steps": int(sum(a.n_steps > 64 for a in attr)),
                      "max_abs_completeness_gap": float(gaps.max()),
                      "median_abs_completeness_gap": float(np.median(gaps)),
                      "median_abs_prediction_minus_baseline": float(np.median(diffs))}
    # Exact k-SII over 300 test formulas (batched) and its size distribution.
    t = time.time()
    res = explain_interactions(model, tok, te[:300], index="k-SII", order=2)
    n_el = [len(r.elements) for r in res]
    out["exact_ksii_order2"] = {"formulas": 300, "seconds": round(time.time() - t, 2),
                                "coalitions": int(sum(2**n for n in n_el)), "max_elements": max(n_el),
                                "max_efficiency_error": float(max(abs(r.baseline_value + sum(
                                    x["value"] for x in r.interactions) - r.prediction) for r in res))}
    # Approximation error against exact values. MatBench composition tasks have <= 4 distinct elements
    # per formula, so long formulas come from matbench_steels (12-14 elements; out of domain for this
    # model, but the game is well defined and exact values are computable: 2**n <= 16384 coalitions).
    steels = pd.read_csv(DATA / "matbench_steels.csv.gz").formula.head(3).tolist()
    rows = []
    for f in steels:
        n = len(formula_players(f, tok).elements)
        t = time.time()
        (ex,) = explain_interactions(model, tok, f, index="k-SII", order=2, method="exact")
        exact_s = time.time() - t
        exact = ex.matrix()
        for budget in (minimum_budget_safe(n), 4 * minimum_budget_safe(n), 2048):
            t = time.time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (ap,) = explain_interactions(model, tok, f, index="k-SII", order=2, method="approximate",
                                             budget=budget)
            err = np.abs(ap.matrix() - exact)
            rows.append({"formula": f, "elements": n, "budget": budget, "exact_coalitions": 2**n,
                         "exact_seconds": round(exact_s, 2), "approx_seconds": round(time.time() - t, 2),
                         "max_abs_error_first_order": float(np.diag(err).max()),
                         "max_abs_error_pairs": float((err - np.diag(np.diag(err))).max()),
                         "max_abs_exact_value": float(np.abs(exact).max())})
    out["kernelshapiq_vs_exact"] = rows
    return out


def minimum_budget_safe(n: int) -> int:
    from crossmat.interpretability import minimum_budget

    return minimum_budget(n, 2)


def write_card_section(task: str, formula: str) -> None:
    """The model-card section ``interpretability.card_section`` generates for this model."""
    from crossmat.interpretability import card_section, load_property_model

    model, tok = load_property_model(WORK / task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (HERE / task / "model_card_section.md").write_text(card_section(model, tok, formula))


def pick_examples(task: str, model_dir: Path, k: int = 3) -> list[str]:
    """k test formulas with 3-5 elements per class (classification) or spanning the target (regression)."""
    target, problem = TASKS[task]
    df = pd.read_csv(DATA / f"{task}.csv.gz")
    te = df[df.test_fold == 0].copy()
    te["n"] = [len(formula_players(f, CrossMatTokenizerFast()).elements) for f in te.formula]
    te = te[(te.n >= 3) & (te.n <= 5)]
    if problem == "regression":
        te = te.sort_values(target)
        return te.formula.iloc[np.linspace(0, len(te) - 1, 2 * k).astype(int)].tolist()
    return te[te[target] == 1].formula.head(k).tolist() + te[te[target] == 0].formula.head(k).tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=None, help="aggregate over the first N fold-0 test rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {"hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} shared CPU cores, "
                           f"1 torch thread, no GPU; load average at start {os.getloadavg()[0]:.1f}",
               "torch": torch.__version__, "python": platform.python_version(), "tasks": {}}
    for task in args.tasks:
        model_dir, train_info = train(task, args.steps)
        examples = pick_examples(task, model_dir)
        out = HERE / task
        t = time.time()
        text = cli("explain", "--model", str(model_dir), "--output-dir", str(out / "explain"),
                   *[a for f in examples for a in ("--formula", f)], "--format", "png", "--threads", "1")
        explain_s = time.time() - t
        (out / "cli_output.md").write_text(
            f"$ python -m crossmat.interpretability explain --model <{task} model> "
            + " ".join(f'--formula "{f}"' for f in examples) + f" --output-dir {task}/explain\n\n" + text
        )
        t = time.time()
        agg_args = ["aggregate", "--model", str(model_dir), "--output-dir", str(out / "aggregate"), "--input",
                    str(DATA / f"{task}.csv.gz"), "--id-column", "id", "--test-fold", "0", "--task", task,
                    "--threads", "1"]
        if args.limit:
            agg_args += ["--limit", str(args.limit)]
        agg_text = cli(*agg_args)
        (out / "aggregate" / "cli_output.json").write_text(agg_text)
        agg_s = time.time() - t
        (out / "aggregate" / "interactions.jsonl").unlink()  # per-formula store (~1 MB): regenerated by the run
        write_card_section(task, examples[0])
        results["tasks"][task] = {"model": train_info, "examples": examples,
                                  "explain_cli_seconds": round(explain_s, 1),
                                  "aggregate_cli_seconds": round(agg_s, 1),
                                  "aggregate_summary": json.loads((out / "aggregate" / "summary.json").read_text()),
                                  "measurements": measurements(model_dir, task)}
        (HERE / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2)[:4000])


if __name__ == "__main__":
    main()
