"""The ``crossmat`` command: ``--help`` lists every capability, each subcommand's ``--help`` works and
shows examples, and the examples themselves run (on small real data, tiny model)."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from crossmat.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
TINY = '{"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}'
# appended to the examples so they finish in seconds (the examples themselves are the documented commands)
FAST = {
    "train": ["train.max_steps=3"],  # the default recipe: the shipped backbone, 3 steps
    "evaluate": ["--set", "train.max_steps=3", "--rf-trees", "5"],
}
NOT_RUN = {"app"}  # starts a web server; its --help is tested


def test_help_lists_every_capability(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "predict", "explain", "build", "generate", "app"):
        assert f"  {name} " in out and f"crossmat {name} " in out
    assert "CROSSMAT_DATA_DIR" in out
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["crossmat"] == "crossmat.cli.main:main"


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0 and main(["-V"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"crossmat {version('crossmat')}"] * 2
    assert main(["--help"]) == 0 and "--version" in capsys.readouterr().out


def test_python_dash_m_crossmat_is_the_command(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "crossmat", "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "crossmat evaluate " in proc.stdout and "crossmat train " in proc.stdout


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(tmp_path):
    """`crossmat generate --help | head` once ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "crossmat", "generate", "--help"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes its first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err[-2000:]
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-2000:]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_help_has_examples(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"crossmat {name}: ") and "usage:" in out
    assert out.rstrip().split("examples:")[-1].strip().startswith(f"crossmat {name} ")


def test_examples_run(tmp_path, monkeypatch, data_dir):
    df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_expt_gap.csv.gz").sample(240, random_state=1)
    df = df.rename(columns={"gap expt": "band_gap"})[["id", "formula", "band_gap"]]
    df.iloc[:160].to_csv(tmp_path / "train.csv", index=False)
    df.iloc[160:200].to_csv(tmp_path / "val.csv", index=False)
    df.iloc[200:].to_csv(tmp_path / "test.csv", index=False)
    df.iloc[200:][["formula"]].to_csv(tmp_path / "candidates.csv", index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CROSSMAT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CROSSMAT_CACHE_DIR", str(tmp_path / "cache"))
    for name, cmd in COMMANDS.items():
        if name in NOT_RUN:
            continue
        for example in cmd.examples:
            argv = shlex.split(example)
            assert argv[:2] == ["crossmat", name]
            assert main([*argv[1:], *FAST.get(name, [])]) == 0, example
    assert {"formula", "predicted_band_gap"} <= set(pd.read_csv(tmp_path / "predictions.csv").columns)
    assert (tmp_path / "outputs" / "my_gap" / "test_predictions.csv").is_file()
    assert (tmp_path / "runs" / "my_gap" / "summary.csv").is_file()
    assert any((tmp_path / "explanations").iterdir())
    assert (tmp_path / "data" / "matbench_steels" / "README.md").is_file()
    assert len((tmp_path / "candidates.jsonl").read_text().splitlines()) == 2


def test_aliases_still_work(capsys):
    """``accelerate launch train.py`` and ``python evaluate.py`` stay: they run the same parsers."""
    from crossmat.evaluation.cli import build_parser as eval_parser
    from crossmat.training.cli import build_parser as train_parser

    assert "--train" in eval_parser().format_help() and "--config" in train_parser().format_help()
    assert "from crossmat.training.cli import main" in (REPO / "train.py").read_text()
    assert "from crossmat.evaluation.cli import main" in (REPO / "evaluate.py").read_text()


def test_every_environment_variable_is_documented():
    import re

    names = set()
    for path in [*REPO.glob("*.py"), *REPO.glob("*/*.py"), *REPO.glob("*/*/*.py"), *REPO.glob("scripts/*.sh"),
                 *REPO.glob("benchmarks/*/*.sh"), REPO / ".ci" / "run"]:
        if "_work" in path.parts:
            continue
        names |= set(re.findall(r"\bCROSSMAT_[A-Z_]+\b", path.read_text(errors="replace")))
    names.discard("CROSSMAT_AUTO_MAP")  # a Python constant (modeling), not an environment variable
    doc = (REPO / "docs" / "environment.md").read_text()
    assert sorted(n for n in names if f"`{n}`" not in doc) == []
    assert "docs/environment.md" in (REPO / "README.md").read_text()
