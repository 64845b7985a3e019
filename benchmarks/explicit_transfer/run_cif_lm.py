"""perov_5 CIF language model benchmark: train a small GPT-2 on val CIFs (or load one trained by ``train.py``), sample
for test formulas, validate, match.

    python benchmarks/explicit_transfer/run_cif_lm.py --max-steps 150 --targets 40 --samples 10 --out benchmarks/explicit_transfer
    python benchmarks/explicit_transfer/run_cif_lm.py --model outputs/cif_lm --targets 0 --samples 20   # all test formulas

The model folder goes to benchmarks/_work/cif_lm_perov5 (git-ignored). Sampling is composition-constrained unless
``--unconstrained`` (results written before issue 24 are plain sampling with prompts in the formula's element
order). Prompts use Z=1 (every perov_5 cell
holds one formula unit). Candidates are ranked by mean token log-probability (n=1 = the most likely valid CIF).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

warnings.filterwarnings("ignore")

from crossmat.explicit_transfer.cif_lm import CIFLanguageModelGenerator  # noqa: E402
from crossmat.explicit_transfer.csp_metrics import CSP_MATCHER_KWARGS, csp_metrics  # noqa: E402
from crossmat.explicit_transfer.data import load_perov5  # noqa: E402
from crossmat.training import train_recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--model", help="a CIF LM folder trained by `train.py --config configs/cif_lm.yaml` (no training here)")
    ap.add_argument("--targets", type=int, default=40, help="test formulas to score (seeded sample; 0 = the full test split)")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--work", default="benchmarks/_work/cif_lm_perov5")
    ap.add_argument("--results-name", default="results_cif_lm.json")
    ap.add_argument("--unconstrained", action="store_true",
                    help="plain sampling (default since issue 24: composition-constrained decoding, P1)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    res: dict = {"hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), no GPU",
                 "matcher": CSP_MATCHER_KWARGS, "seed": args.seed}
    test = load_perov5("test")
    if args.targets:
        test = test.sample(n=args.targets, random_state=args.seed).reset_index(drop=True)
    if args.model:
        model, tok = GPT2LMHeadModel.from_pretrained(args.model, use_safetensors=True), PreTrainedTokenizerFast.from_pretrained(args.model)
        info = json.loads(Path(args.model, "training_info.json").read_text())
        res["training"] = {"model": args.model, "parameters": model.num_parameters(), **info}
        label = f"cif-lm (GPT-2 {model.config.n_layer}x{model.config.n_embd}, {info['training']['steps']} steps, train.py)"
    else:
        val = load_perov5("val")
        arch = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": 4, "n_positions": 320}
        t = time.time()
        table = Path(args.work) / "val_cifs.csv"
        table.parent.mkdir(parents=True, exist_ok=True)
        val[["cif"]].to_csv(table, index=False)
        run = train_recipe({"stage": "cif_lm", "seed": args.seed, "model": {"config": arch},
                            "data": {"train": str(table), "cif_forms": ["symmetrized"], "validation_fraction": 0},
                            "train": {"max_steps": args.max_steps, "batch_size": args.batch_size, "learning_rate": 3e-3,
                                      "weight_decay": 0.1, "lr_scheduler": "cosine", "warmup_steps": 20,
                                      "trackers": "none", "progress_bar": False}}, Path(args.work) / "model")
        model, tok = run.model, PreTrainedTokenizerFast.from_pretrained(run.folder)
        info = json.loads((run.folder / "training_info.json").read_text())
        res["training"] = {"arch": arch, "parameters": model.num_parameters(), "max_steps": args.max_steps,
                           "batch_size": args.batch_size, "n_train_cifs": info["data"]["texts_kept"],
                           "n_rejected": info["data"]["rejected"], "train_tokens": info["data"]["train_tokens"],
                           "final_avg_train_loss": info["training"]["train_loss"],
                           "epochs": args.max_steps * args.batch_size / info["data"]["texts_kept"], "train_s": time.time() - t}
        label = f"cif-lm (GPT-2 {arch['n_layer']}x{arch['n_embd']}, {args.max_steps} steps)"
    print(res["training"], flush=True)
    gen = CIFLanguageModelGenerator(model, tok, n_samples=args.samples, z_values=(1,), temperature=1.0, top_k=10,
                                    seed=args.seed, constrained=not args.unconstrained)
    t = time.time()
    batch = gen.generate(test.formula.tolist(), args.samples)
    dt = time.time() - t
    m = csp_metrics([[c.structure for c in row] for row in batch], test.structure.tolist(), ks=(1, args.samples))
    m.update({"samples": gen.last_stats["samples"], "valid_samples": gen.last_stats["valid"],
              "validity": gen.last_stats["valid"] / max(gen.last_stats["samples"], 1),
              "samples_per_s": gen.last_stats["samples"] / dt, "valid_structures_per_s": gen.last_stats["valid"] / dt,
              "formulas_without_valid_sample": len(batch.failures),
              "example_failure": batch.failures[0].reason if batch.failures else None})
    res["csp"] = {label: m}
    res["sizes"] = {"test_targets": len(test), "samples_per_formula": args.samples}
    print(m, flush=True)
    Path(args.out, args.results_name).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
