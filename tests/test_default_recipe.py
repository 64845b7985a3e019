"""One default: `crossmat evaluate` on your own files and `--benchmark matbench|llm4mat` without --config train the
same recipe (the shipped backbone + configs/default.yaml); shipped fine-tuning recipes extend it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crossmat.dataset_builders.paths import resolve_recipe
from crossmat.evaluation.cli import QUICK, SCRATCH, build_parser, crossmat_predictor
from crossmat.training.recipe import RecipeError, apply_overrides, load_recipe, resolve_stage

REPO = Path(__file__).resolve().parents[1]


def _predictor(argv: list[str]):
    """The CrossMat row exactly as `main` builds it (same defaulting of --config)."""
    from crossmat.evaluation import cli

    args = build_parser().parse_args(argv)
    if not (args.model or args.config or args.baselines_only):
        args.config = cli.DEFAULT_RECIPE
    args.config = resolve_recipe(args.config) if args.config else None
    return crossmat_predictor(args)


def test_own_data_and_benchmark_defaults_are_the_same_recipe(tmp_path):
    own = _predictor(["--train", "a.csv", "--test", "b.csv", "--target", "y", "--output-dir", str(tmp_path)])
    bench = _predictor(["--benchmark", "matbench", "--task", "matbench_steels", "--output-dir", str(tmp_path)])
    llm = _predictor(["--benchmark", "llm4mat", "--task", "mp/band_gap", "--output-dir", str(tmp_path)])
    assert own.recipe == bench.recipe == llm.recipe and own.overrides == bench.overrides == llm.overrides == []
    assert own.name == bench.name == "crossmat"  # named by what it is, not by a recipe file
    stage = resolve_stage(apply_overrides(own.recipe, ["data.train=a.csv", "data.target_column=y"]))
    assert stage.model.init_from == "crossmat-imkt-mp-small"  # the shipped backbone
    # two members of 100 epochs (the cost of one 200-epoch model; benchmarks/calibration/seed2_rule.txt)
    assert stage.model.config["ensemble_size"] == 2
    assert stage.train.epochs == 100 and stage.train.swa_epochs == 10 and stage.train.calibrate
    assert stage.train.same_composition  # benchmarks/matbench/same_composition_rule.txt
    assert stage.data.validation_fraction == 0.1  # held out only when no validation file is given


def test_quick_and_scratch_are_documented_overrides_of_the_same_recipe(tmp_path):
    base = ["--train", "a.csv", "--test", "b.csv", "--target", "y", "--output-dir", str(tmp_path)]
    quick = _predictor([*base, "--quick"])
    scratch = _predictor([*base, "--from-scratch", "--set", "train.epochs=5"])
    default = _predictor(base)
    assert quick.recipe == scratch.recipe == default.recipe
    assert quick.overrides == QUICK and quick.name == "crossmat_quick"
    assert scratch.overrides == [*SCRATCH, "train.epochs=5"] and scratch.name == "crossmat_scratch"
    assert apply_overrides(scratch.recipe, scratch.overrides)["model"]["init_from"] is None


def test_shipped_finetune_recipes_extend_the_default():
    default = load_recipe(resolve_recipe("default"))
    for name in ("matbench_finetune", "matbench_classification"):
        recipe = load_recipe(resolve_recipe(name))
        assert recipe["model"] == default["model"] and recipe["train"] == default["train"], name
    # the scratch reference of the recorded MatBench runs (one 200-epoch model): the same encoder and optimisation;
    # the default splits the same compute over two members (the recorded crossmat_ens2_e100 overrides)
    scratch = yaml.safe_load((REPO / "benchmarks/matbench/recipes/crossmat_default.yaml").read_text())
    members = default["model"]["config"]["ensemble_size"]
    assert scratch["model"]["config"] == {k: v for k, v in default["model"]["config"].items() if k != "ensemble_size"}
    keep = ("batch_size", "learning_rate", "lr_scheduler", "warmup_ratio")
    assert {k: scratch["train"][k] for k in keep} == {k: default["train"][k] for k in keep}
    assert members * default["train"]["epochs"] == scratch["train"]["epochs"]
    assert members * default["train"]["swa_epochs"] == scratch["train"]["swa_epochs"]


def test_extends_merges_mappings_and_rejects_loops(tmp_path):
    (tmp_path / "base.yaml").write_text("stage: finetune\ntrain: {epochs: 3, learning_rate: 0.1}\nmodel: {init_from: x}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain: {epochs: 7}\nmodel: {init_from: null}\n")
    child = load_recipe(tmp_path / "child.yaml")
    assert child == {"stage": "finetune", "train": {"epochs": 7, "learning_rate": 0.1}, "model": {"init_from": None}}
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="loop"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(RecipeError, match="neither a shipped recipe nor a file"):
        load_recipe(tmp_path / "c.yaml")


def test_the_table_says_what_the_default_trains(tmp_path):
    from crossmat.evaluation.cli import DEFAULT_RECIPE, describe_predictors

    argv = ["--train", "a.csv", "--test", "b.csv", "--target", "y", "--output-dir", str(tmp_path)]
    args = build_parser().parse_args(argv)
    args.config = resolve_recipe(DEFAULT_RECIPE)  # what the CLI resolves when no recipe option is given
    (line,) = describe_predictors([_predictor(argv)], args)
    assert "pretrained backbone crossmat-imkt-mp-small" in line and "the default recipe (2 members x 100 epochs)" in line
