"""Tiny CrossMat models saved to folders, shared by the inference / model card / app tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import crossmat.modeling  # noqa: F401
from crossmat.modeling import (
    CrossMatConfig,
    CrossMatForMaskedLM,
    CrossMatForPropertyPrediction,
    CrossMatForStructureAlignment,
)
from crossmat.tokenization import CrossMatTokenizerFast

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0)
PROJECT_PACKAGES = (
    "modeling",
    "tokenization",
    "inference",
    "model_cards",
    "training",
    "evaluation",
    "interpretability",
    "explicit_transfer",
    "dataset_builders",
)


def _randomise(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Spread the weights so different formulas give clearly different outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def make_property_model(path: Path, *, classification: bool = False, seed: int = 0, scale: float = 0.3) -> Path:
    """A 2-layer hidden-32 property model (+ tokenizer + pipeline remote code) saved to ``path``."""
    from crossmat.inference import add_pipeline_to_model_dir

    if classification:
        cfg = CrossMatConfig(
            **TINY,
            num_labels=2,
            problem_type="single_label_classification",
            id2label={0: "not_metal", 1: "metal"},
            label2id={"not_metal": 0, "metal": 1},
        )
    else:
        cfg = CrossMatConfig(
            **TINY,
            num_labels=1,
            problem_type="regression",
            target_mean=[1.3],
            target_std=[1.6],
            target_names=["band_gap"],
            target_units=["eV"],
        )
    torch.manual_seed(seed)
    model = CrossMatForPropertyPrediction(cfg)
    _randomise(model, seed, scale)
    model.save_pretrained(path)
    CrossMatTokenizerFast().save_pretrained(path)
    add_pipeline_to_model_dir(path)
    return path


def make_pretrained_model(path: Path, *, imkt: bool = False, seed: int = 0) -> Path:
    """A tiny MLM (or imKT) checkpoint with tokenizer, saved as remote code."""
    cfg = CrossMatConfig(**TINY, structure_embedding_dim=16)
    torch.manual_seed(seed)
    model = (CrossMatForStructureAlignment if imkt else CrossMatForMaskedLM)(cfg)
    model.save_pretrained(path)
    CrossMatTokenizerFast().save_pretrained(path)
    return path


BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys
    _BLOCK = {PROJECT_PACKAGES!r}
    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in _BLOCK:
                raise ImportError(f"{{name}} is blocked: simulating a machine without the crossmat package")
            return None
    sys.meta_path.insert(0, _Blocker())
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and p.rstrip("/") != {str(REPO_ROOT)!r}]
    """
)


def run_without_package(code: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where the project packages cannot be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    script = BLOCKER + "\n" + code
    return subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def last_json(stdout: str):
    """The JSON document printed on the last line of ``stdout``."""
    return json.loads(stdout.strip().splitlines()[-1])


def test_blocker_really_blocks(tmp_path: Path) -> None:
    proc = run_without_package("import modeling", tmp_path)
    assert proc.returncode != 0 and "blocked" in proc.stderr
    proc = run_without_package("import transformers, torch; print('ok')", tmp_path)
    assert proc.returncode == 0, proc.stderr
