"""Feature anchoring for fine-tuning a pretrained backbone (``train.anchor_weight``): a frozen copy of the
initial encoder gives each batch's pooled embedding, and ``weight * mean(1 - cos(student, teacher))`` is added
to the task loss, so what the backbone learned before fine-tuning (for imKT: the structure knowledge its pooled
embedding carries, benchmarks/imkt/probes.py) is pulled along instead of being overwritten."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["EmbeddingAnchor"]


class EmbeddingAnchor:
    """The frozen teacher (the model's first encoder as it is now, i.e. before any fine-tuning step)."""

    def __init__(self, model: torch.nn.Module, weight: float) -> None:
        encoder = getattr(model, "crossmat", None)
        if encoder is None:
            raise TypeError(f"train.anchor_weight needs a CrossMat property model, got {type(model).__name__}")
        self.weight = float(weight)
        self.teacher = copy.deepcopy(encoder).eval().requires_grad_(False)

    def to(self, device: torch.device) -> EmbeddingAnchor:
        self.teacher.to(device)
        return self

    def loss(self, batch: Mapping[str, torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
        """``weight * mean(1 - cos)`` between the student's pooled embedding and the teacher's, same inputs."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            target = self.teacher(**inputs).pooler_output
        return self.weight * (1.0 - F.cosine_similarity(pooled.float(), target.float(), dim=-1)).mean()
