"""Shared fixtures: where the read-only benchmark data lives (``CROSSMAT_DATA_DIR``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny test models: one thread is fastest, also in subprocesses

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder (``CROSSMAT_DATA_DIR``, default ``<repo>/../shared/data``)."""
    path = Path(os.environ.get("CROSSMAT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "matbench_v0.1").is_dir():
        pytest.fail(f"benchmark data not found at {path}; set CROSSMAT_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def matbench_formulas(data_dir: Path) -> dict[str, list[str]]:
    """All formula strings of the 13 MatBench v0.1 tasks, per task."""
    import pandas as pd

    out = {}
    for f in sorted((data_dir / "matbench_v0.1").glob("*.csv.gz")):
        out[f.name.removesuffix(".csv.gz")] = pd.read_csv(f, usecols=["formula"])["formula"].tolist()
    return out


@pytest.fixture(scope="session")
def expt_gap_csv(tmp_path_factory, data_dir: Path):
    """Factory: ``expt_gap_csv(n)`` is a CSV of the first ``n`` real matbench_expt_gap rows (id, formula, gap)."""
    import pandas as pd

    made: dict[int, Path] = {}

    def make(rows: int) -> Path:
        if rows not in made:
            df = pd.read_csv(data_dir / "matbench_v0.1" / "matbench_expt_gap.csv.gz").iloc[:rows]
            path = tmp_path_factory.mktemp(f"gap{rows}") / "gap.csv"
            df.rename(columns={df.columns[2]: "gap"}).to_csv(path, index=False)
            made[rows] = path
        return made[rows]

    return make


def free_port() -> int:
    """A free local TCP port (for torchrun rendezvous in multi-process tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
