"""Result records (``benchmarks/results/<benchmark>/<task>/<variant>.json``), hardware description and
eval results written into a model card's ``model-index``."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crossmat.dataset_builders.paths import repo_root

DEFAULT_RESULTS_DIR = repo_root() / "benchmarks" / "results"
RECORD_KEYS = ("task", "variant", "metric", "folds", "mean", "std", "baseline_same_run", "command", "hardware",
               "wall_seconds")


def hardware() -> str:
    """One line: CPU model (with its family / model numbers) and cores visible, RAM, accelerator, torch build and the
    CPU kernels torch uses. A seeded fine-tuning is digit-for-digit reproducible only on the same kind of CPU and
    kernels (docs/evaluation.md), so a record says which ones it ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()[:40] if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        if "model name" in info:
            cpu = info["model name"]
            if "cpu family" in info and "model" in info:  # tells CPU generations of one brand name apart
                cpu += f" (family {info['cpu family']} model {info['model']})"
    except OSError:
        pass
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    acc = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            acc = f"GPU {torch.cuda.get_device_name(0)}"
        threads = torch.get_num_threads()
        kernels = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
        acc += f", torch {torch.__version__}{f' {kernels} kernels' if kernels else ''} ({threads} threads)"
    except ImportError:
        pass
    return f"{cpu}, {n} cores visible{mem}, {acc}"


def write_record(results_dir: Path, benchmark: str, record: Mapping[str, Any]) -> Path:
    """Write one record; all of :data:`RECORD_KEYS` are required."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"result record lacks keys {missing}")
    path = Path(results_dir) / benchmark / str(record["task"]).replace("/", "__") / f"{record['variant']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(record), indent=1, default=float) + "\n")
    return path


def update_model_index(model_dir: Path, model_name: str, entries: list[Mapping[str, Any]]) -> Path:
    """Add/replace eval results in ``model_dir/README.md``'s ``model-index`` (huggingface_hub ``ModelCard``).

    Each entry: ``task_type, dataset_type, dataset_name, dataset_split, metric_type, metric_name, metric_value``
    (+ optional ``source_name``)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    readme = Path(model_dir) / "README.md"
    card = ModelCard.load(readme) if readme.is_file() else ModelCard.from_template(ModelCardData())
    data = card.data
    data.model_name = data.model_name or model_name
    new = [EvalResult(**dict(e)) for e in entries]
    keys = {(e.dataset_type, e.metric_type) for e in new}
    kept = [e for e in (data.eval_results or []) if (e.dataset_type, e.metric_type) not in keys]
    data.eval_results = kept + new
    card.save(readme)
    return readme
