"""End-to-end training through ``accelerate launch`` subprocesses (tiny models, few steps, CPU):
every stage, LoRA save/reload, kill + resume to identical weights, 2-process DDP vs 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from .conftest import free_port

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}




def launch(args: list[str], nproc: int = 1, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``accelerate launch --cpu`` train.py from the repo root (as a user would)."""
    # several CPU processes need torchrun (`--multi_gpu`; without mpirun `--cpu` starts a single process)
    mode = "--cpu" if nproc == 1 else "--multi_gpu"
    cmd = [str(ACCELERATE), "launch", mode, "--num_processes", str(nproc), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "train.py", *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def gap_csv(expt_gap_csv) -> Path:
    return expt_gap_csv(400)


@pytest.fixture(scope="module")
def perov_embeddings(tmp_path_factory, data_dir: Path) -> Path:
    """CHGNet embeddings of 40 real perov_5 structures, as a parquet with formula + embedding."""
    from crossmat.dataset_builders.embeddings import embed_structures, parse_structure

    df = pd.read_csv(data_dir / "perov_5" / "val.csv.gz").iloc[:40]
    structures = [parse_structure(c) for c in df["cif"]]
    emb = embed_structures(structures, encoder="chgnet")
    out = tmp_path_factory.mktemp("emb") / "perov_chgnet.parquet"
    pd.DataFrame({"formula": df["formula"], "embedding": list(emb), "heat_ref": df["heat_ref"]}).to_parquet(out)
    return out


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def _finetune_recipe(gap_csv: Path, dropout: float) -> dict:
    return {"stage": "finetune", "seed": 7,
            "model": {"config": {**TINY, "hidden_dropout_prob": dropout}},
            "data": {"train": str(gap_csv), "target_column": "gap", "validation_fraction": 0.2},
            "train": {"max_steps": 8, "batch_size": 32, "checkpoint_every": 2, "eval_every": 4, "log_every": 1,
                      "learning_rate": 3e-3, "progress_bar": False}}


def test_all_stages_lora_and_auto_loading(tmp_path, gap_csv, perov_embeddings):
    from peft import PeftModel
    from transformers import (
        AutoConfig,
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    import crossmat.modeling  # noqa: F401
    from crossmat.training import load_lora_model

    steps = {"max_steps": 3, "batch_size": 16, "progress_bar": False, "log_every": 1}
    recipe = {"name": "tiny", "seed": 1, "pipeline": [
        {"name": "mlm", "stage": "mlm", "model": {"config": TINY, "element_embedding_init": "magpie"},
         "data": {"train": str(gap_csv), "test_fraction": 0.2}, "train": steps},
        {"name": "imkt", "stage": "imkt", "model": {"init_from": "@mlm", "config": {"alignment_loss": "infonce",
                                                                                "alignment_input": "clean"}},
         "data": {"train": str(perov_embeddings), "stability_column": "heat_ref", "stability_bias": "weight",
                  "stability_temperature": 0.5}, "train": steps},
        {"name": "finetune", "stage": "finetune", "model": {"init_from": "@imkt"},
         "data": {"train": str(gap_csv), "target_column": "gap", "test_fraction": 0.2}, "train": steps},
        {"name": "lora", "stage": "finetune", "model": {"init_from": "@mlm"}, "lora": {"enabled": True, "r": 4},
         "data": {"train": str(gap_csv), "target_column": "gap", "test_fraction": 0.2}, "train": steps},
    ]}
    out = tmp_path / "run"
    proc = launch(["--config", str(_write(tmp_path / "r.yaml", recipe)), "--output-dir", str(out)])
    assert f"card -> {out / 'finetune' / 'README.md'}" in proc.stdout
    for name in ("mlm", "imkt", "finetune", "lora"):
        files = {p.name for p in (out / name).iterdir()}
        weights = "adapter_model.safetensors" if name == "lora" else "model.safetensors"
        assert {"config.json", weights, "tokenizer.json", "README.md", "metrics.jsonl", "recipe.yaml"} <= files, name
        records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
        assert "model-index" in (out / name / "README.md").read_text()
        assert AutoTokenizer.from_pretrained(out / name)("Fe2O3")["input_ids"]
    assert type(AutoModelForMaskedLM.from_pretrained(out / "mlm")).__name__ == "CrossMatForMaskedLM"
    imkt = AutoModelForPreTraining.from_pretrained(out / "imkt")
    assert imkt.config.structure_embedding_dim == 64 and imkt.config.alignment_loss == "infonce"
    assert imkt.config.alignment_input == "clean"
    ft = AutoModelForSequenceClassification.from_pretrained(out / "finetune").eval()
    tok = AutoTokenizer.from_pretrained(out / "finetune")
    pred = pd.read_csv(out / "finetune" / "test_predictions.csv")
    with torch.no_grad():
        logits = ft(**tok(pred["formula"].tolist(), padding=True, return_tensors="pt")).logits[:, 0]
    torch.testing.assert_close(logits, torch.tensor(pred["prediction"].values, dtype=torch.float32), atol=1e-4, rtol=1e-4)
    # LoRA adapter: reload through peft (base recorded in adapter_config.json) and reproduce the test predictions
    lora_pred = pd.read_csv(out / "lora" / "test_predictions.csv")
    for model in (load_lora_model(out / "lora"), PeftModel.from_pretrained(
            AutoModelForSequenceClassification.from_pretrained(out / "mlm", config=AutoConfig.from_pretrained(out / "lora"),
                                                               ignore_mismatched_sizes=True), out / "lora")):
        model.eval()
        with torch.no_grad():
            got = model(**tok(lora_pred["formula"].tolist(), padding=True, return_tensors="pt")).logits[:, 0]
        torch.testing.assert_close(got, torch.tensor(lora_pred["prediction"].values, dtype=torch.float32), atol=1e-4, rtol=1e-4)
    info = json.loads((out / "lora" / "training_info.json").read_text())
    assert 0 < info["model"]["lora_trainable_parameters"] < info["model"]["parameters"]
    # rerunning the finished pipeline with --resume skips every stage
    again = launch(["--config", str(tmp_path / "r.yaml"), "--output-dir", str(out), "--resume"])
    assert again.stdout.count("already finished") == 4
    # the evaluate.py shim at the repo root keeps `import evaluate` pointing at Hugging Face evaluate
    shim = subprocess.run([sys.executable, "-c", "import evaluate; print(evaluate.load.__module__)"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert shim.returncode == 0 and shim.stdout.strip().startswith("evaluate"), shim.stderr


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_kill_resume_exact_and_ddp_matches_single_process(tmp_path, gap_csv):
    cfg = _write(tmp_path / "ft.yaml", _finetune_recipe(gap_csv, dropout=0.1))
    launch(["--config", str(cfg), "--output-dir", str(tmp_path / "full")])
    killed = launch(["--config", str(cfg), "--output-dir", str(tmp_path / "killed")],
                    env={"CROSSMAT_TRAIN_FAULT_AFTER_STEP": "5"}, check=False)
    assert killed.returncode != 0, "the fault hook must kill the run"
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("step_*"))
    assert ckpts[-1] == "step_000000004" and not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = launch(["--config", str(cfg), "--output-dir", str(tmp_path / "killed"), "--resume"])
    assert "resumed from" in resumed.stdout + resumed.stderr
    full, res = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert full.keys() == res.keys()
    for k in full:
        assert torch.equal(full[k], res[k]), f"{k} differs after kill + resume"

    def losses(folder: Path) -> list:
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["split"], r.get("loss")) for r in rows]

    assert losses(tmp_path / "full") == losses(tmp_path / "killed")

    # one process vs two (DDP, gloo): same global batches, so the same weights up to float reduction order
    cfg0 = _write(tmp_path / "ft0.yaml", _finetune_recipe(gap_csv, dropout=0.0))
    launch(["--config", str(cfg0), "--output-dir", str(tmp_path / "p1")], nproc=1)
    two = launch(["--config", str(cfg0), "--output-dir", str(tmp_path / "p2")], nproc=2)
    assert "on 2 process(es)" in two.stdout
    one, ddp = _weights(tmp_path / "p1"), _weights(tmp_path / "p2")
    worst = max(float((one[k] - ddp[k]).abs().max()) for k in one)
    assert worst < 1e-5, f"2-process weights differ from 1-process by {worst}"
