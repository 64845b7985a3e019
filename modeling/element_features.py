"""Per-element feature tables from the ``elementembeddings`` package (mat2vec, magpie, oliynyk, megnet16,
skipatom, ...) in the CrossMat vocabulary layout, for ``config.element_features``.

Not Hub remote code: the table is computed here once, at model build time, and then travels inside the
model weights (a persistent buffer), so a saved model needs neither this module nor ``elementembeddings``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from crossmat._extras import needs_extra
from crossmat.tokenization.vocabulary import ELEMENT_START, ELEMENTS, VOCAB

__all__ = ["element_feature_table", "install_element_features", "install_element_statistics"]


def element_feature_table(source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(table, covered)``: a ``vocab_size x d`` float32 table whose element rows hold the source's vectors,
    standardised per feature over the covered elements, and the boolean coverage mask (elements the source
    lacks and all non-element tokens are False, their rows zero)."""
    with needs_extra("train", "element features (model.element_features)"):
        from elementembeddings.core import Embedding

    try:
        emb = Embedding.load_data(source)
    except (ValueError, KeyError, FileNotFoundError, OSError) as exc:
        raise ValueError(f"element features {source!r} cannot be loaded by elementembeddings ({exc})") from exc
    vectors = {s: np.asarray(v, dtype=np.float64) for s, v in emb.embeddings.items() if s in ELEMENTS}
    vectors = {s: v for s, v in vectors.items() if np.isfinite(v).all() and np.abs(v).sum() > 0}
    if not vectors:
        raise ValueError(f"element features {source!r} cover no element of the CrossMat vocabulary")
    symbols = [s for s in ELEMENTS if s in vectors]
    x = np.stack([vectors[s] for s in symbols])
    std = x.std(0)
    x = (x - x.mean(0)) / np.where(std > 0, std, 1.0)
    table = torch.zeros(len(VOCAB), x.shape[1])
    covered = torch.zeros(len(VOCAB), dtype=torch.bool)
    ids = torch.tensor([ELEMENT_START + ELEMENTS.index(s) for s in symbols])
    table[ids] = torch.as_tensor(x, dtype=torch.float32)
    covered[ids] = True
    return table, covered


def install_element_features(model: nn.Module, source: str) -> int:
    """Fill the feature table of every CrossMat embedding module in ``model`` (all ensemble members);
    returns how many elements the source covers."""
    from .modeling_crossmat import CrossMatEmbeddings

    table, covered = element_feature_table(source)
    targets = [m for m in model.modules() if isinstance(m, CrossMatEmbeddings)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no CrossMat embeddings to install features into")
    for module in targets:
        module.set_element_features(table, covered)
    return int(covered.sum())


def install_element_statistics(model: nn.Module, source: str) -> int:
    """Fill a property model's ``element_statistics_table`` (``config.element_statistics``) with the source's
    standardised per-element properties; returns how many elements the source covers (the others read as the
    mean element, zero after standardisation)."""
    table, covered = element_feature_table(source)
    buffer = getattr(model, "element_statistics_table", None)
    if buffer is None or tuple(buffer.shape) != tuple(table.shape):
        raise ValueError(f"{type(model).__name__} has no element_statistics_table of shape {tuple(table.shape)}")
    with torch.no_grad():
        buffer.copy_(table.to(buffer))
    return int(covered.sum())
