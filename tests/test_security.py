"""Nothing from a user file or string is executed or unpickled: recipe filters are declarative, checkpoints
resume from JSON + safetensors/weights-only state, CrystaLLM pickles are refused without --trust-pickle; and a
source grep keeps it that way. Resuming with a changed recipe is refused, naming the changed keys."""

from __future__ import annotations

import json
import pickle
import re
import tokenize
from pathlib import Path

import pandas as pd
import pytest
import torch

from crossmat.training import RecipeError, apply_overrides, run_recipe
from crossmat.training.data import DataError, apply_filter, load_source

REPO = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


class _Payload:
    """Unpickling this touches ``marker``: the canary for code execution from a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ---------------------------------------------------------------- recipe filters
def test_filter_is_declarative_and_query_is_refused(tmp_path):
    df = pd.DataFrame({"formula": ["Fe2O3", "NaCl", "SiO2", "MgO"], "test_fold": [0, 1, 2, 0],
                       "split": ["a", "b", "c", "a"], "y": [1.0, 2.0, None, 4.0]})
    csv = tmp_path / "d.csv"
    df.to_csv(csv, index=False)
    kept, desc = load_source({"path": str(csv), "filter": "test_fold != 0"})
    assert kept["formula"].tolist() == ["NaCl", "SiO2"] and desc.endswith("where test_fold != 0")
    kept, _ = load_source({"path": str(csv), "filter": [{"column": "split", "op": "in", "value": ["a", "c"]},
                                                         {"column": "y", "op": ">=", "value": 2}]})
    assert kept["formula"].tolist() == ["MgO"]
    assert apply_filter(df, "split == 'b'")[0]["formula"].tolist() == ["NaCl"]
    assert apply_filter(df, {"column": "test_fold", "op": "not in", "value": [0, 2]})[0]["formula"].tolist() == ["NaCl"]
    marker = tmp_path / "pwned"
    attack = f"test_fold >= @__import__('os').system('touch {marker}')"
    with pytest.raises(DataError, match="not '<column> <op> <value>'"):
        load_source({"path": str(csv), "filter": attack})
    with pytest.raises(DataError, match="'query' .* is not supported; use a declarative filter"):
        load_source({"path": str(csv), "query": attack})
    with pytest.raises(DataError, match=r"filter op '__class__' is not allowed"):
        apply_filter(df, {"column": "y", "op": "__class__", "value": 1})
    with pytest.raises(DataError, match="filter column 'nope' not found"):
        apply_filter(df, "nope == 1")
    with pytest.raises(DataError, match="cannot compare column 'split'"):
        apply_filter(df, "split < 3")
    assert not marker.exists()


# ---------------------------------------------------------------- CrystaLLM vocabulary pickles
def test_crystallm_meta_pkl_needs_trust_and_never_runs_code(tmp_path):
    from crossmat.explicit_transfer.__main__ import main
    from crossmat.explicit_transfer.convert_crystallm import load_crystallm_vocabulary

    marker = tmp_path / "pwned"
    evil = tmp_path / "meta.pkl"
    evil.write_bytes(pickle.dumps({"itos": {0: "a"}, "x": _Payload(marker)}))
    with pytest.raises(ValueError, match="is a pickle, which can run code"):
        load_crystallm_vocabulary(evil)
    with pytest.raises(SystemExit, match="convert-crystallm: error: .*--trust-pickle"):
        main(["convert-crystallm", str(tmp_path / "ckpt.pt"), "--vocab", str(evil), "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="not a CrystaLLM meta.pkl holding plain data"):
        load_crystallm_vocabulary(evil, trust_pickle=True)  # even trusted: only plain data is read
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"vocab_size": 3, "itos": {0: "data_", 1: "\n", 2: "<unk>"}, "stoi": {}}))
    assert load_crystallm_vocabulary(plain, trust_pickle=True) == ["data_", "\n", "<unk>"]


# ---------------------------------------------------------------- resume: JSON loop state, same recipe
@pytest.fixture(scope="module")
def gap_csv(expt_gap_csv) -> Path:
    return expt_gap_csv(80)


def _recipe(gap_csv: Path) -> dict:
    return {"stage": "finetune", "seed": 7, "model": {"config": TINY},
            "data": {"train": str(gap_csv), "target_column": "gap", "validation_fraction": 0.0},
            "train": {"max_steps": 2, "batch_size": 16, "checkpoint_every": 1, "progress_bar": False,
                      "trackers": "none", "learning_rate": 3e-3}}


def test_resume_reads_json_state_and_refuses_changed_recipe(tmp_path, gap_csv, capsys):
    out = run_recipe(_recipe(gap_csv), tmp_path / "run")
    ckpt = out / "checkpoints" / "step_000000002"
    assert json.loads((ckpt / "loop_state.json").read_text())["global_step"] == 2
    assert not list(ckpt.glob("custom_checkpoint_*")), "the loop state must not be pickled"
    # a checkpoint folder received from someone else: a pickle next to it is never loaded
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), ckpt / "custom_checkpoint_0.pkl")
    resumed = apply_overrides(_recipe(gap_csv), ["train.resume=true", "train.progress_bar=true", "train.log_every=1"])
    with pytest.raises(RecipeError, match=r"holds pickled objects \['custom_checkpoint_0.pkl'\].* it is not loaded"):
        run_recipe(resumed, out)
    assert not marker.exists()
    (ckpt / "custom_checkpoint_0.pkl").unlink()
    run_recipe(resumed, out)  # cosmetic keys may change
    assert "resumed from" in capsys.readouterr().out and not marker.exists()
    with pytest.raises(RecipeError, match=r"recipe differs .*: seed 7 -> 99, train.learning_rate 0.003 -> 0.05;"):
        run_recipe(apply_overrides(_recipe(gap_csv), ["train.resume=true", "train.learning_rate=0.05", "seed=99"]), out)
    with pytest.raises(RecipeError, match=r"model.config.hidden_size 16 -> 32"):
        run_recipe(apply_overrides(_recipe(gap_csv), ["train.resume=true", "model.config.hidden_size=32"]), out)
    with pytest.raises(RecipeError, match="recipe differs"):  # an explicit checkpoint path is checked the same way
        run_recipe(apply_overrides(_recipe(gap_csv), [f"train.resume={ckpt}", "seed=1"]), tmp_path / "elsewhere")
    (ckpt / "loop_state.json").unlink()  # an old-style checkpoint (loop state pickled): refused, not unpickled
    with pytest.raises(RecipeError, match="has no loop_state.json"):
        run_recipe(apply_overrides(_recipe(gap_csv), ["train.resume=true"]), out)
    assert not marker.exists()


# ---------------------------------------------------------------- no pickle / eval / query on user input
# (file, pattern) pairs that are allowed, each with the reason
ALLOWED = {
    ("explicit_transfer/convert_crystallm.py", "weights_only = not trust_pickle"):
        "torch.load of a CrystaLLM ckpt.pt is weights-only unless the user passes --trust-pickle",
}
PATTERNS = [r"pickle \. loads? \(", r"weights_only = (False|not)", r"(?<!\. )\beval \(", r"\. query \(",
            r"(?<!\. )\bexec \(", r"\bdill \.", r"\bcloudpickle \.", r"\. eval \( [^)]", r"register_for_checkpointing \(",
            r"yaml \. load \(", r"yaml \. unsafe_load", r"trust_remote_code = True"]


def _code_lines(path: Path) -> dict[int, str]:
    """Each line's code tokens joined by spaces (strings and docstrings as ``STR``, comments dropped)."""
    lines: dict[int, list[str]] = {}
    with path.open("rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type in (tokenize.COMMENT, tokenize.ENCODING, tokenize.NL, tokenize.NEWLINE):
                continue
            lines.setdefault(tok.start[0], []).append("STR" if tok.type == tokenize.STRING else tok.string)
    return {n: " ".join(parts) for n, parts in lines.items()}


def _source_files() -> list[Path]:
    """The repository's Python files: what git tracks or would track (build/, dist/ and other ignored output
    copies are not sources), or every ``*.py`` when this is not a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return sorted(REPO.rglob("*.py"))
    return sorted(REPO / line for line in out.splitlines() if line and (REPO / line).is_file())


def test_sources_have_no_unsafe_loads():
    found, scanned = [], 0
    for path in _source_files():
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(("tests/", ".", "benchmarks/_work/")) or "/." in rel:
            continue
        scanned += 1
        for n, code in _code_lines(path).items():
            for pat in PATTERNS:
                if re.search(pat, code) and not any(rel == f and p in code for f, p in ALLOWED):
                    found.append(f"{rel}:{n}: {code}")
    assert scanned > 50
    assert not found, "unsafe load/eval on possibly user-supplied input:\n" + "\n".join(found)


def test_model_weights_are_read_from_safetensors_only(tmp_path):
    """A model folder whose weights are a pickle (``pytorch_model.bin``) is refused, not unpickled."""
    from crossmat.inference import FormulaPredictor
    from crossmat.modeling.model_folder import load_property_model

    from .test_inference_support import make_property_model

    folder = make_property_model(tmp_path / "m")
    marker = tmp_path / "pwned"
    (folder / "model.safetensors").unlink()
    torch.save({"x": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        FormulaPredictor(folder)
    with pytest.raises(OSError, match="model.safetensors"):
        load_property_model(folder, "cpu")
    pd.DataFrame({"formula": ["Fe2O3", "NaCl"], "y": [1.0, 2.0]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(RecipeError, match="has no model.safetensors"):
        run_recipe({"stage": "finetune", "model": {"init_from": str(folder)},
                    "data": {"train": str(tmp_path / "x.csv"), "target_column": "y"}}, tmp_path / "out")
    assert not marker.exists()
