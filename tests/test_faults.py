"""Fault tests: multi-process runs that must finish (not hang), and bad inputs / broken disks that must give
one-line errors while keeping finished work."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import free_port

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}




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
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "train.py", *args]
    return run_bounded(cmd, timeout)


@pytest.fixture(scope="module")
def small_csv(expt_gap_csv) -> Path:
    return expt_gap_csv(96)


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
        assert len(pred) > 0 and pred["prediction"].notna().all()
        held_out = set(pred["formula"])
        in_order = [f for f in pd.read_csv(small_csv)["formula"] if f in held_out]
        assert pred["formula"].tolist() == in_order, "test predictions gathered from both ranks, in row order"


# ---------------------------------------------------------------- bad files and broken disks: one-line errors
def _one_line_error(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    last = err[-1]
    assert last.startswith(prefix), err
    return last


@pytest.fixture
def read_only(monkeypatch, tmp_path):
    """A folder under which nothing can be created (``os.mkdir`` raises EROFS there, as on a read-only mount)."""
    root = tmp_path / "ro"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    return root


def test_train_cli_bad_files_and_read_only_output(tmp_path, small_csv, capsys, read_only):
    from crossmat.training.cli import main

    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump(_recipe(small_csv, 0.0)))
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "latin1.csv").write_bytes("formula,gap\nFe2O3,1.0\nNaCl,2.0\nCaF\xe9,3.0\n".encode("latin-1"))
    (tmp_path / "ragged.csv").write_text("formula,gap\nFe2O3,1.0\nNaCl,2.0,7\n")
    for name, reason in [("empty", "is empty (no header row)"), ("latin1", "line 4 (data row 2) is not UTF-8 text (byte b'\\xe9')"),
                         ("ragged", "line 3 (data row 1) has 3 fields, the header 2")]:
        rc = main(["--config", str(cfg), "--output-dir", str(tmp_path / name), f"data.train={tmp_path / name}.csv"])
        assert rc == 2 and reason in _one_line_error(capsys, "train.py: error: data.train:"), name
    rc = main(["--config", str(cfg), "--output-dir", str(read_only / "out")])
    line = _one_line_error(capsys, "train.py: error: output folder")
    assert rc == 2 and "the file system is read-only" in line


def test_train_disk_full_keeps_finished_stage_and_resumes(tmp_path, small_csv, capsys, monkeypatch):
    """A full disk during the second stage's checkpoint: one line naming the disk, the first stage kept, and
    ``--resume`` after freeing space finishes without redoing it. torch's writer says only 'file write failed'."""
    import shutil

    import torch

    from crossmat.training.cli import main

    stage = _recipe(small_csv, 0.0)
    pipeline = {"name": "two", "seed": 3, "pipeline": [{**stage, "name": "a"}, {**stage, "name": "b"}]}
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(pipeline))
    out = tmp_path / "out"
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):  # what torch raises when the disk fills up mid-write
        if f"{os.sep}b{os.sep}" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 448 vs 342")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    assert main(["--config", str(cfg), "--output-dir", str(out)]) == 2
    line = _one_line_error(capsys, "train.py: error: writing a file under")
    assert "the disk is full (0.0 MiB free" in line and "rerun with --resume" in line
    assert (out / "a" / "model.safetensors").is_file() and not (out / "b" / "model.safetensors").exists()
    monkeypatch.setattr(torch, "save", real_save)  # space freed
    assert main(["--config", str(cfg), "--output-dir", str(out), "--resume"]) == 0
    assert "stage 'a' already finished" in capsys.readouterr().out
    assert (out / "b" / "model.safetensors").is_file()


def test_train_ctrl_c_says_how_to_continue_and_resume_finishes(tmp_path, small_csv, capsys, monkeypatch):
    """Ctrl-C during training used to end in a KeyboardInterrupt traceback: now one line says what is kept and
    that ``--resume`` continues, and it does, from the newest checkpoint."""
    from crossmat.training.cli import main
    from crossmat.training.loop import FAULT_ENV

    recipe = _recipe(small_csv, 0.0)
    recipe["train"].update(max_steps=6, checkpoint_every=2)
    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump(recipe))

    def ctrl_c(pid: int, sig: int) -> None:  # the loop's fault hook, as a keyboard interrupt
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setenv(FAULT_ENV, "5")
        m.setattr(os, "kill", ctrl_c)
        assert main(["--config", str(cfg), "--output-dir", str(tmp_path / "out")]) == 130
    line = _one_line_error(capsys, "train.py: interrupted.")
    assert "rerun the same command with --resume to continue" in line
    assert main(["--config", str(cfg), "--output-dir", str(tmp_path / "out"), "--resume"]) == 0
    assert "step_000000004 at step 4" in capsys.readouterr().out


def test_train_full_tmpfs(tmp_path, small_csv, capsys):
    """The real thing where a small tmpfs can be mounted (root): torch's 'iostream error' becomes 'disk is full'."""
    from crossmat.training.cli import main

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root); the patched-writer test covers the message")
    try:
        recipe = _recipe(small_csv, 0.0)
        recipe["model"]["config"] = {**TINY, "hidden_size": 64, "intermediate_size": 128}
        recipe["train"]["checkpoint_every"] = 1
        cfg = tmp_path / "r.yaml"
        cfg.write_text(yaml.safe_dump(recipe))
        assert main(["--config", str(cfg), "--output-dir", str(mnt / "out")]) == 2
        assert "the disk is full" in _one_line_error(capsys, "train.py: error: ")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_builders_and_interpretability_on_broken_disks(tmp_path, capsys, monkeypatch, read_only, data_dir):
    from crossmat.dataset_builders.cli import main as build
    from crossmat.interpretability.cli import main as interpret

    from .test_inference_support import make_property_model

    args = ["matbench", "--source", str(data_dir / "matbench_v0.1"), "--tasks", "matbench_expt_gap"]
    assert build([*args, "--out", str(read_only / "mb")]) == 2
    assert "the file system is read-only" in _one_line_error(capsys, "error: cannot write")

    def no_space(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    model = make_property_model(tmp_path / "model")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_space)
    assert build([*args, "--out", str(tmp_path / "mb")]) == 2
    assert "the disk is full" in _one_line_error(capsys, "error: cannot write")
    monkeypatch.setattr(pd.DataFrame, "to_csv", no_space)  # explanations.json is written before the CSVs
    out = tmp_path / "explained"
    assert interpret(["explain", "--model", str(model), "--formula", "Fe2O3", "--out", str(out)]) == 2
    assert "the disk is full" in _one_line_error(capsys, "error: cannot write")
    assert json.loads((out / "explanations.json").read_text())[0]["attributions"]["canonical"] == "Fe2O3"
    assert interpret(["explain", "--model", str(model), "--formula", "Fe2O3", "--out", str(read_only / "x")]) == 2
    assert "the file system is read-only" in _one_line_error(capsys, "error: cannot write")


def test_push_failure_is_one_line_with_hf_upload_and_no_pickles(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from crossmat.training import RecipeError
    from crossmat.training.folder import PUSH_ALLOW, PUSH_IGNORE, push_folder

    def offline(*a, **k):
        raise huggingface_hub.errors.OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    with pytest.raises(RecipeError, match=r"push to the Hub \(me/gap\) failed: OfflineModeIsEnabled") as info:
        push_folder(tmp_path, "me/gap")
    msg = str(info.value)
    assert "\n" not in msg and "huggingface-cli" not in msg and f"`hf upload me/gap {tmp_path} . --include" in msg
    files = ["model.safetensors", "config.json", "README.md", "tokenizer.json", "metrics.jsonl", "recipe.yaml",
             "pipeline_crossmat.py", "test_predictions.csv", "checkpoints/step_000000002/model.safetensors",
             "checkpoints/step_000000002/optimizer.bin", "checkpoints/step_000000002/random_states_0.pkl",
             "checkpoints/best/model.safetensors", "checkpoints/step_000000002/loop_state.json", "extra.pkl",
             "pytorch_model.bin", "model.safetensors.tmp"]
    uploaded = set(filter_repo_objects(files, allow_patterns=PUSH_ALLOW, ignore_patterns=PUSH_IGNORE))
    assert uploaded == {"model.safetensors", "config.json", "README.md", "tokenizer.json", "metrics.jsonl",
                        "recipe.yaml", "pipeline_crossmat.py", "test_predictions.csv"}
