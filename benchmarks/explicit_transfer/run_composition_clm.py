"""Composition-only reference for the exKT table: a plain CrossMat CLM (no pretraining) trained on perov_5 val
formulas -> heat_ref, evaluated on perov_5 test (same split as the structure predictor).

    python benchmarks/explicit_transfer/run_composition_clm.py --epochs 40 --out benchmarks/explicit_transfer

The imKT variant (pretrained with the structure-alignment loss) is produced by the imKT pipeline; its number
is not measured by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, set_seed

import crossmat.modeling  # noqa: F401 - registers the CrossMat classes
from crossmat.explicit_transfer.base import data_dir
from crossmat.modeling import CrossMatConfig, CrossMatForPropertyPrediction
from crossmat.tokenization import CrossMatTokenizerFast


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    torch.set_num_threads(2)
    set_seed(args.seed)
    val = pd.read_csv(data_dir() / "perov_5" / "val.csv.gz")
    test = pd.read_csv(data_dir() / "perov_5" / "test.csv.gz")
    tok = CrossMatTokenizerFast()
    y = val.heat_ref.to_numpy(np.float32)
    cfg = CrossMatConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256, num_labels=1, problem_type="regression",
                         target_mean=[float(y.mean())], target_std=[float(y.std())])
    model = CrossMatForPropertyPrediction(cfg)

    def enc(formulas: list[str]) -> dict:
        return tok(formulas, padding="max_length", truncation=True, max_length=32)

    train = Dataset.from_dict({**enc(val.formula.tolist()), "labels": y.reshape(-1, 1).tolist()})
    t = time.time()
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(), num_train_epochs=args.epochs, per_device_train_batch_size=128,
                              learning_rate=1e-3, warmup_steps=30, lr_scheduler_type="cosine", save_strategy="no",
                              report_to=[], seed=args.seed, use_cpu=True, disable_tqdm=True, logging_steps=100)
    Trainer(model=model, args=targs, train_dataset=train).train()
    train_s = time.time() - t
    model.eval()
    x = enc(test.formula.tolist())
    with torch.no_grad():
        pred = model(input_ids=torch.tensor(x["input_ids"]), attention_mask=torch.tensor(x["attention_mask"])).logits
    mae = float(np.abs(pred[:, 0].numpy() - test.heat_ref.to_numpy()).mean())
    res = {"hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), no GPU",
           "model": "CrossMatForPropertyPrediction from scratch, hidden 128, 2 layers", "epochs": args.epochs,
           "train_rows": len(val), "test_rows": len(test), "train_s": train_s,
           "heat_ref_test_mae_eV_per_atom": mae}
    print(res)
    Path(args.out, "results_composition_clm.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
