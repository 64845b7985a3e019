"""Pretrained backbones by name: the shipped folder, a Hub id (real HTTP against a local Hub stand-in), offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossmat.modeling.pretrained import PretrainedNotFoundError, resolve_model_path
from tests.conftest import free_port
from tests.local_hub import serve_model_repo

REPO = Path(__file__).resolve().parents[1]


def _resolve_in_subprocess(name: str, env_extra: dict[str, str], home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(home), **env_extra)
    env.pop("HF_HUB_OFFLINE", None)
    code = ("from modeling.pretrained import resolve_model_path\n"
            f"p = resolve_model_path({name!r})\nprint(p)\nprint(sorted(x.name for x in p.iterdir()))")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=False)


def test_local_folder_is_itself_and_nonsense_is_refused(tmp_path):
    assert resolve_model_path(tmp_path) == tmp_path
    with pytest.raises(PretrainedNotFoundError, match="shipped backbone"):
        resolve_model_path(str(tmp_path / "missing-folder"))


def test_hub_id_downloads_model_files_only(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text('{"model_type": "crossmat"}')
    (repo / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (repo / "README.md").write_text("card")
    (repo / "evil.py").write_text("raise SystemExit('executed')")  # never fetched
    (repo / "optimizer.pt").write_bytes(b"pickle")  # never fetched
    server, requested = serve_model_repo(repo, "someone/backbone")
    try:
        proc = _resolve_in_subprocess("someone/backbone", {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}"},
                                      tmp_path / "home")  # fmt: skip
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "['README.md', 'config.json', 'model.safetensors']"
    assert not any("evil.py" in r or "optimizer.pt" in r for r in requested if "/resolve/" in r)


def test_hub_id_offline_fails_with_a_clear_message(tmp_path):
    proc = _resolve_in_subprocess("someone/backbone", {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}, tmp_path)
    assert proc.returncode == 1
    assert "cannot download 'someone/backbone' from the Hugging Face Hub: offline or unreachable" in proc.stderr


def test_recipe_init_from_names_what_it_accepts(tmp_path):
    import pandas as pd

    from crossmat.training import run_recipe
    from crossmat.training.recipe import RecipeError

    frame = pd.DataFrame({"formula": ["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS"] * 3, "y": range(24)})
    recipe = {"stage": "finetune", "model": {"init_from": "crossmat-no-such-backbone"},
              "data": {"train": frame, "target_column": "y"}, "train": {"epochs": 1}}  # fmt: skip
    with pytest.raises(RecipeError, match="model.init_from: 'crossmat-no-such-backbone' is not a model folder, a shipped"):
        run_recipe(recipe, tmp_path / "out")


def test_shipped_backbone_loads_offline_by_name_and_fine_tunes_through_accelerate(tmp_path, data_dir):
    import torch
    from transformers import AutoModel

    import crossmat.modeling  # noqa: F401  (Auto registration)
    from crossmat.modeling.pretrained import shipped_path
    from crossmat.tokenization import CrossMatTokenizerFast

    folder = resolve_model_path("crossmat-imkt-mp-small")
    assert folder == shipped_path("crossmat-imkt-mp-small") and (folder / "README.md").is_file()
    card = (folder / "README.md").read_text()
    assert "Measured downstream effect" in card and "30053 formulas (plus 1531 for validation)" in card
    encoder = AutoModel.from_pretrained(folder).eval()
    batch = CrossMatTokenizerFast()(["Fe2O3", "LiCoO2"], padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = encoder(**batch).pooler_output
    assert pooled.shape == (2, 128) and torch.isfinite(pooled).all() and not torch.allclose(pooled[0], pooled[1])
    env = dict(os.environ, CROSSMAT_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = ["accelerate", "launch", "--config_file", "configs/accelerate/single_process.yaml", "train.py",
           "--config", "configs/matbench_finetune.yaml", "--output-dir", str(tmp_path / "ft"),
           "model.init_from=crossmat-imkt-mp-small", "train.max_steps=3", "train.progress_bar=false"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = (tmp_path / "ft" / "training_info.json").read_text()
    assert "pretrained_models/crossmat-imkt-mp-small" in info and '"mae"' in info


def test_a_property_model_by_hub_id_predicts_from_model_files_only(tmp_path):
    """``crossmat.predict("owner/name", ...)`` downloads the model files (weights, configs, tokenizer, card: no code,
    no pickles) through the same resolver as the backbones, real HTTP against a local Hub stand-in, and predicts as the
    local folder does; offline it fails at once with the resolver's message."""
    from crossmat.inference import FormulaPredictor
    from tests.test_inference_support import make_property_model

    folder = make_property_model(tmp_path / "gap-model")
    (folder / "evil.py").write_text("raise SystemExit('executed')")
    expected = float(FormulaPredictor(folder).predict(["Fe2O3"]).values[0, 0])
    code = "import crossmat\nprint(float(crossmat.predict('someone/gap-model', ['Fe2O3']).values[0, 0]))"
    env = dict(os.environ, HF_HOME=str(tmp_path / "home"))
    env.pop("HF_HUB_OFFLINE", None)
    server, requested = serve_model_repo(folder, "someone/gap-model")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False,
                              env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}"})
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert abs(float(proc.stdout.splitlines()[-1]) - expected) < 1e-5
    assert not any(r.endswith(".py") or ".py?" in r for r in requested if "/resolve/" in r)
    offline = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False,
                             env={**env, "HF_HOME": str(tmp_path / "empty"), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert offline.returncode == 1 and "cannot download 'someone/gap-model' from the Hugging Face Hub" in offline.stderr
