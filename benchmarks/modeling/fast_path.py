"""The compact element-slot path of ``CrossMatModel.forward`` against the full-length computation it
replaced (every token through the transformer, only element slots and [CLS] as attention keys), in the
same process, on the same weights and real MatBench formulas: exactness and speed (train steps/s and
inference rows/s), as ratios.

Usage: ``python benchmarks/modeling/fast_path.py [--rows 4096] [--threads 1]`` -> ``fast_path.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch
from transformers.masking_utils import create_bidirectional_mask

from crossmat.modeling import CrossMatConfig, CrossMatForPropertyPrediction
from crossmat.modeling.element_features import install_element_features
from crossmat.modeling.modeling_crossmat import decode_composition
from crossmat.tokenization import CrossMatTokenizerFast
from crossmat.tokenization.vocabulary import token_layout
from crossmat.training.collator import trim_padding

HERE = Path(__file__).resolve().parent


def full_length(model: CrossMatForPropertyPrediction, ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """The pre-compaction forward (reference)."""
    enc = model.crossmat
    slot, frac = decode_composition(ids, model.config)
    slot = slot & att.bool()
    keys = slot | (ids == model.config.cls_token_id)
    keys[:, 0] = True
    h = enc.embeddings(ids, slot, frac)
    mask = create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=keys.long())
    for layer in enc.layers:
        h, _ = layer(h, mask)
    h = enc.final_norm(h)
    return model.head(enc.pool(h, slot, frac)) * model.config.target_std[0] + model.config.target_mean[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("CROSSMAT_DATA_DIR", HERE.parents[2] / "shared" / "data"))
    df = pd.read_csv(data / "matbench_v0.1" / "matbench_expt_gap.csv.gz").iloc[: args.rows]
    enc = CrossMatTokenizerFast()(df["formula"].tolist(), padding=True, return_tensors="pt")
    y = torch.tensor(df.iloc[:, 2].to_numpy(), dtype=torch.float32)[:, None]
    torch.manual_seed(0)
    cfg = CrossMatConfig(**token_layout(), hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=256, pooling="mean", num_labels=1, problem_type="regression",
                         target_mean=[float(y.mean())], target_std=[float(y.std())], element_features="mat2vec",
                         element_feature_dim=200, fraction_encoding="sinusoid_table")
    model = CrossMatForPropertyPrediction(cfg)
    install_element_features(model, "mat2vec")
    batches = [trim_padding({"input_ids": enc["input_ids"][i:i + 128], "attention_mask": enc["attention_mask"][i:i + 128]})
               for i in range(0, len(df), 128)]

    def compact(b):
        return model(**b).logits

    def reference(b):
        return full_length(model, b["input_ids"], b["attention_mask"])

    model.eval()
    with torch.no_grad():
        diff = max(float((compact(b) - reference(b)).abs().max()) for b in batches)
    result = {"rows": len(df), "threads": args.threads, "max_abs_difference": diff,
              "tokens_per_row": float(enc["attention_mask"].sum(1).float().mean()),
              "slots_per_row": float(decode_composition(enc["input_ids"], cfg)[0].sum(1).float().mean()) + 1.0,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"}
    for name, fn in (("reference", reference), ("compact", compact)):
        opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: both paths see identical weights
        best_train, best_infer = 0.0, 0.0
        for _ in range(args.repeats):
            model.train()
            t = time.perf_counter()
            for i, b in enumerate(batches):
                loss = torch.nn.functional.l1_loss(fn(b), y[i * 128:(i + 1) * 128])
                loss.backward()
                opt.step()
                opt.zero_grad()
            best_train = max(best_train, len(batches) / (time.perf_counter() - t))
            model.eval()
            t = time.perf_counter()
            with torch.no_grad():
                for b in batches:
                    fn(b)
            best_infer = max(best_infer, len(df) / (time.perf_counter() - t))
        result[name] = {"train_steps_per_s_batch128": best_train, "inference_rows_per_s": best_infer}
    result["train_speedup"] = result["compact"]["train_steps_per_s_batch128"] / result["reference"]["train_steps_per_s_batch128"]
    result["inference_speedup"] = result["compact"]["inference_rows_per_s"] / result["reference"]["inference_rows_per_s"]
    (HERE / "fast_path.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
