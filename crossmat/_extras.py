"""The optional parts of CrossMat and the one error that names the extra to install.

Prediction (``crossmat.load_model``, ``crossmat.predict``, ``FormulaPredictor``, the Hub pipeline, ``crossmat
predict`` on CSV) needs only the core dependencies; everything else comes with an extra of ``pyproject.toml``.
An entry point of an extra imports its heavy modules inside :func:`needs_extra`, so a missing one fails with
the command to run instead of a bare ``No module named ...``::

    with needs_extra("explain", "crossmat explain"):
        from captum.attr import IntegratedGradients

Standard library only: every layer of the package may import this module (tests/test_architecture.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EXTRAS", "MissingExtraError", "missing_extra", "needs_extra"]

# extra -> what it adds (keep in step with [project.optional-dependencies] in pyproject.toml)
EXTRAS: dict[str, str] = {
    "lora": "loading LoRA adapter folders (peft)",
    "parquet": "Parquet input and output for crossmat predict (pyarrow)",
    "train": "training, evaluation, dataset builders, model cards (datasets, accelerate, peft, evaluate, "
             "scikit-learn, matminer, elementembeddings, pyarrow, jinja2)",
    "structure": "structure encoders and exKT ranking (matgl, chgnet)",
    "explain": "attributions and Shapley interactions (captum, shapiq, matplotlib)",
    "app": "the Gradio web app (gradio)",
}


class MissingExtraError(ModuleNotFoundError):
    """A feature's optional dependency is not installed; the message names the extra that brings it.
    A ``ModuleNotFoundError`` (so an ``ImportError``): callers that fall back without the feature still work."""


def missing_extra(extra: str, feature: str, module: str | None) -> MissingExtraError:
    """The error for ``feature`` lacking ``module`` (from the ``extra`` extra)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {sorted(EXTRAS)}")
    top = (module or "?").partition(".")[0]
    return MissingExtraError(
        f"{feature} needs the [{extra}] extra: pip install 'crossmat[{extra}]' (missing module {top})", name=top
    )


@contextmanager
def needs_extra(extra: str, feature: str) -> Iterator[None]:
    """Turn a ``ModuleNotFoundError`` raised by the imports in the block into :class:`MissingExtraError`
    naming ``extra``; a missing ``crossmat`` module is a real bug and propagates unchanged."""
    try:
        yield
    except MissingExtraError:
        raise
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] == "crossmat":
            raise
        raise missing_extra(extra, feature, exc.name) from exc
