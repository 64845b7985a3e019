"""Result records, BENCHMARKS.md generation and model-index writing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from crossmat.evaluation.records import RECORD_KEYS, update_model_index, write_record

REPO = Path(__file__).resolve().parents[1]


def _md_module():
    spec = importlib.util.spec_from_file_location("make_benchmarks_md", REPO / "benchmarks" / "make_benchmarks_md.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(variant: str, folds: list[float]) -> dict:
    import numpy as np

    return {"task": "matbench_steels", "variant": variant, "metric": "mae", "folds": folds,
            "mean": float(np.mean(folds)), "std": float(np.std(folds)),
            "baseline_same_run": {}, "command": f"python evaluate.py ... {variant}", "hardware": "test cpu",
            "wall_seconds": 1.0}


def test_records_and_generated_tables(tmp_path):
    with pytest.raises(ValueError, match="lacks keys"):
        write_record(tmp_path, "matbench", {"task": "t", "variant": "v"})
    for name, folds in {"crossmat_imkt": [90.0, 100.0, 95.0, 80.0, 99.0],
                        "crossmat_mlm": [95.0, 99.0, 97.0, 85.0, 98.0],
                        "dummy": [229.0, 230.0, 231.0, 228.0, 230.0]}.items():
        path = write_record(tmp_path, "matbench", _rec(name, folds))
        assert path == tmp_path / "matbench" / "matbench_steels" / f"{name}.json"
    md = _md_module().render(tmp_path, REPO / "benchmarks" / "published.json")
    assert "### matbench_steels" in md
    assert "| crossmat_imkt | CrossMat, this machine | 92.8 ± " in md
    assert "| dummy | baseline, this machine | 229.6 ± " in md
    assert "| TPOT-Mat | published, composition input (cited) | 79.95 | | | | |" in md
    # paired gains (MLM - imKT MAE) = [5, -1, 2, 5, -1]: mean 2, sd 3, SE 3/sqrt(5) = 1.342 -> 2 < 2 SE
    assert "| matbench_steels | mae | 92.8 | 94.8 | 2 ± 1.342 | 3/5 | no clear difference |" in md
    assert md.index("crossmat_imkt") < md.index("| dummy |")  # CrossMat rows first, then baselines
    assert set(RECORD_KEYS) == {"task", "variant", "metric", "folds", "mean", "std", "baseline_same_run", "command",
                                "hardware", "wall_seconds"}


def test_summary_table_commands_once_and_balanced_accuracy_headline(tmp_path):
    """The summary row compares the default route with the forest of the same folds (no route record: no
    comparison); a run's command is listed
    once for all its variants; old classification records (probability ROC-AUC folds) are headlined by their
    balanced accuracy, the quantity the MatBench leaderboard reports."""
    cmd = "python evaluate.py --task matbench_steels --config crossmat_default.yaml --baselines rf_magpie"
    rf = {**_rec("rf_magpie", [100.0, 110.0, 105.0, 95.0, 90.0]), "command": cmd}
    default = {**_rec("crossmat_default", [90.0, 100.0, 95.0, 85.0, 80.0]), "command": cmd,
               "baseline_same_run": {"rf_magpie": {"mean": rf["mean"], "std": rf["std"], "folds": rf["folds"]}}}
    for rec in (rf, default):
        write_record(tmp_path, "matbench", rec)
    old_clf = {**_rec("crossmat_scratch", [0.95, 0.96, 0.94, 0.95, 0.95]), "task": "matbench_glass", "metric": "rocauc",
               "all_metrics": {"rocauc": 0.95, "balanced_accuracy": 0.83}}
    write_record(tmp_path, "matbench", old_clf)
    md = _md_module().render(tmp_path, REPO / "benchmarks" / "published.json")
    assert "| matbench_steels | mae | not run yet | 90 ± 7.071 | 100 ± 7.071 | — |" in md
    close = {**default, "folds": [99.0, 109.0, 104.0, 94.0, 89.0], "mean": 99.0}
    write_record(tmp_path, "matbench", close)
    assert md.count(f"`{cmd}`") == 1 and "**run 1** (crossmat_default, rf_magpie)" in md
    assert "| crossmat_scratch | CrossMat, this machine | 0.83 | not recorded |" in md
    assert "| matbench_glass | balanced_accuracy | not run yet | not run yet |" in md
    route = {**_rec(_md_module().ROUTE, [95.0, 105.0, 100.0, 90.0, 85.0]), "command": "python evaluate.py --task matbench_steels",
             "all_metrics": {"mae": 95.0, "coverage_1sigma": 0.7, "coverage_2sigma": 0.9}}
    write_record(tmp_path, "matbench", route)
    md_route = _md_module().render(tmp_path, REPO / "benchmarks" / "published.json")
    # the default route (95) against the forest (100): -5%, inside the larger fold std (7.071)
    assert "| matbench_steels | mae | 95 ± 7.071 (0.70 / 0.90) | 99 ± 7.071 | 100 ± 7.071 | -5.0% (within spread) |" in md_route
    far = {**route, "folds": [75.0, 85.0, 80.0, 70.0, 65.0], "mean": 75.0}
    write_record(tmp_path, "matbench", far)
    md_far = _md_module().render(tmp_path, REPO / "benchmarks" / "published.json")
    assert "| 75 ± 7.071 (0.70 / 0.90) | 99 ± 7.071 | 100 ± 7.071 | -25.0% (better) |" in md_far


def test_a_task_run_only_on_subsampled_training_rows_stays_out_of_the_summary(tmp_path):
    """The summary compares official-protocol records; a task whose every record subsampled its training rows
    (--max-train-rows) is named below it instead, and its own table states the subsample per variant."""
    for name in ("rf_magpie", "crossmat_ens2_e100_n8000_tempered"):
        write_record(tmp_path, "matbench", {**_rec(name, [0.8, 0.82, 0.81, 0.79, 0.8]), "task": "matbench_mp_is_metal",
                                            "metric": "balanced_accuracy",
                                            "protocol": {"max_train_rows": 8000}})
    write_record(tmp_path, "matbench", _rec("crossmat_default", [90.0, 100.0, 95.0, 85.0, 80.0]))
    md = _md_module().render(tmp_path, REPO / "benchmarks" / "published.json")
    assert "| matbench_steels | mae |" in md and "| matbench_mp_is_metal |" not in md
    assert "(every run of them subsampled the training rows" in md and "): matbench_mp_is_metal." in md
    assert "crossmat_ens2_e100_n8000_tempered 8,000, rf_magpie 8,000." in md
    assert "### matbench_mp_is_metal" in md and "Training rows subsampled" not in md.split("### matbench_steels")[1]


def test_model_index_written_and_replaced(tmp_path):
    from huggingface_hub import ModelCard

    entry = {"task_type": "tabular-regression", "dataset_type": "matbench/matbench_steels",
             "dataset_name": "MatBench v0.1 matbench_steels", "dataset_split": "test", "metric_type": "mae",
             "metric_name": "mae", "metric_value": 120.0}
    update_model_index(tmp_path, "tiny", [entry])
    update_model_index(tmp_path, "tiny", [{**entry, "metric_value": 110.0}])
    card = ModelCard.load(tmp_path / "README.md")
    results = card.data.eval_results
    assert len(results) == 1 and results[0].metric_value == 110.0
    assert "model-index" in (tmp_path / "README.md").read_text()


def test_transfer_table_pairs_arms_with_the_scratch_default(tmp_path):
    """Backbone arms against the default recipe from scratch: paired relative change, verdict at 2 SE."""
    scratch = _rec("crossmat_default", [100.0, 100.0, 100.0, 100.0, 100.0])
    arms = {"crossmat_default_from_mlm": [99.0, 101.0, 100.0, 98.0, 102.0],  # +0.0% ± 0.7: no clear difference
            "crossmat_default_from_imkt": [90.0, 91.0, 89.0, 90.0, 90.0]}  # -10%: better
    for rec in (scratch, *(_rec(n, f) for n, f in arms.items())):
        write_record(tmp_path, "matbench", rec)
    md = _md_module().render(tmp_path, REPO / "benchmarks" / "published.json")
    section = md[md.index("### Pretrained backbones"):]
    row = next(line for line in section.splitlines() if line.startswith("| matbench_steels | mae | 100 "))
    assert "-10.0% ± 0.3 (better)" in row and "+0.0% ± 0.7 (no clear difference)" in row
    assert row.rstrip(" |").endswith("-10.0% ± 0.6 (better)")  # imkt vs mlm: paired against the MLM arm
    assert "- matbench_steels, imkt: 90, 91, 89, 90, 90" in md
    # a scratch rerun with the arms' code replaces the older crossmat_default record as the baseline
    write_record(tmp_path, "matbench", _rec("crossmat_default_from_scratch", [90.0, 91.0, 89.0, 90.0, 90.0]))
    md = _md_module().render(tmp_path, REPO / "benchmarks" / "published.json")
    section = md[md.index("### Pretrained backbones"):]
    row = next(line for line in section.splitlines() if line.startswith("| matbench_steels | mae | 90 "))
    assert "+0.0% ± 0.0 (no clear difference)" in row and "scratch vs scratch" not in section
    assert "- matbench_steels, scratch (crossmat_default_from_scratch): 90, 91, 89, 90, 90" in section


def test_hardware_names_the_cpu_kernels_a_record_ran_on(monkeypatch):
    """A seeded fine-tuning is reproducible only on the same CPU kind and kernels, so the record's hardware line
    names them: the CPU family / model numbers and the kernels torch dispatches to (AVX2, AVX512, ...)."""
    import torch

    from crossmat.evaluation.records import hardware

    line = hardware()
    assert "cores visible" in line and f"torch {torch.__version__}" in line
    assert f"{torch.backends.cpu.get_cpu_capability()} kernels" in line
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "cpu family" in cpuinfo.read_text():
        assert "(family " in line and " model " in line
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert "AVX2 kernels" in hardware()
