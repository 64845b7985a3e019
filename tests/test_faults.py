"""Fault tests: multi-process runs that must finish (not hang), and bad inputs / broken disks that must give
one-line errors while keeping finished work."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bounded(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``; on timeout kill its whole process tree (launcher and workers) and fail the test."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil  # an accelerate dependency

        # torchrun starts each worker in its own session: kill the whole tree, not just the launcher's group
        tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        for pid in reversed(tree):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung (> {timeout} s):\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch2(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 train.py`` (gloo on CPU), bounded by ``timeout``."""
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_port()), "train.py", *args]
    return run_bounded(cmd, timeout)


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory, data_dir: Path) -> Path:
    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_expt_gap.csv.gz").iloc[:96]
    path = tmp_path_factory.mktemp("gap") / "gap.csv"
    df.rename(columns={df.columns[2]: "gap"}).to_csv(path, index=False)
    return path


def _recipe(csv: Path, test_fraction: float) -> dict:
    return {"stage": "finetune", "seed": 3, "model": {"config": TINY},
            "data": {"train": str(csv), "target_column": "gap", "validation_fraction": 0.2, "test_fraction": test_fraction},
            "train": {"max_steps": 2, "batch_size": 16, "eval_batch_size": 16, "progress_bar": False, "trackers": "none"}}


@pytest.mark.parametrize("test_fraction", [0.0, 0.25], ids=["no-test-split", "test-split"])
def test_two_process_finetune_finishes(tmp_path, small_csv, test_fraction):
    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump(_recipe(small_csv, test_fraction)))
    out = tmp_path / "out"
    proc = launch2(["--config", str(cfg), "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stdout
    assert (out / "model.safetensors").is_file() and (out / "training_info.json").is_file()
    if test_fraction:
        pred = pd.read_csv(out / "test_predictions.csv")
        assert len(pred) > 0 and pred["predicted_gap"].notna().all()
        assert pred["row"].tolist() == sorted(pred["row"]), "test predictions gathered from both ranks, in row order"
