"""Benchmark harness entry point: ``python evaluate.py --benchmark matbench --task ...``.

This file sits at the repository root, so any process started from the root (``python evaluate.py``,
``accelerate launch train.py``, ``python -m pytest``) has the root first on ``sys.path`` and an
``import evaluate`` anywhere (ours, transformers', a user's) would find this file instead of the
Hugging Face ``evaluate`` library. When imported under the name ``evaluate`` this module therefore
replaces itself with the real library; only ``python evaluate.py`` runs the harness.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_hf_evaluate():
    """Import the Hugging Face ``evaluate`` library from ``sys.path`` minus this repository root."""
    path = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("evaluate", path)
    if spec is None or spec.loader is None:
        raise ImportError("the Hugging Face `evaluate` library is not installed (pip install evaluate)")
    module = importlib.util.module_from_spec(spec)
    sys.modules["evaluate"] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "evaluate":  # imported as a library from the repo root: hand over to Hugging Face evaluate
    _load_hf_evaluate()
elif __name__ == "__main__":
    _load_hf_evaluate()
    from crossmat.evaluation.cli import main  # noqa: E402

    sys.exit(main())
