"""Structure-aware property predictor: an MLP head on frozen structure-encoder crystal features (CHGNet / matgl).

Saved the Hugging Face way (``config.json`` + ``model.safetensors`` + ``README.md`` card) and registered with
``AutoConfig`` / ``AutoModel`` / ``AutoModelForSequenceClassification`` on import of ``explicit_transfer``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from crossmat._extras import needs_extra

from .potentials import crystal_features

__all__ = ["StructurePredictorConfig", "StructurePropertyPredictor", "train_structure_predictor", "register"]


class StructurePredictorConfig(PretrainedConfig):
    """Config of :class:`StructurePropertyPredictor` (regression; targets standardised with mean/std)."""

    model_type = "crossmat_structure_predictor"

    def __init__(
        self,
        encoder: str = "chgnet",
        feature_dim: int = 64,
        hidden_dim: int = 128,
        num_hidden_layers: int = 2,
        dropout: float = 0.1,
        target_names: Sequence[str] = ("target",),
        target_units: Sequence[str] = ("",),
        target_mean: Sequence[float] = (0.0,),
        target_std: Sequence[float] = (1.0,),
        feature_mean: Sequence[float] | None = None,
        feature_std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("problem_type", "regression")
        kwargs.setdefault("num_labels", len(target_names))
        super().__init__(**kwargs)
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.hidden_dim = hidden_dim
        self.num_hidden_layers = num_hidden_layers
        self.dropout = dropout
        self.target_names = list(target_names)
        self.target_units = list(target_units)
        self.target_mean = [float(x) for x in target_mean]
        self.target_std = [float(x) for x in target_std]
        self.feature_mean = None if feature_mean is None else [float(x) for x in feature_mean]
        self.feature_std = None if feature_std is None else [float(x) for x in feature_std]


class StructurePropertyPredictor(PreTrainedModel):
    """MLP on frozen crystal features; ``logits`` are in physical units, the loss is MSE in standardised units."""

    config_class = StructurePredictorConfig
    main_input_name = "structure_features"

    def __init__(self, config: StructurePredictorConfig) -> None:
        super().__init__(config)
        d, layers = config.feature_dim, []
        for _ in range(config.num_hidden_layers):
            layers += [nn.Linear(d, config.hidden_dim), nn.SiLU(), nn.Dropout(config.dropout)]
            d = config.hidden_dim
        layers.append(nn.Linear(d, config.num_labels))
        self.head = nn.Sequential(*layers)
        fm = config.feature_mean or [0.0] * config.feature_dim
        fs = config.feature_std or [1.0] * config.feature_dim
        self.register_buffer("feature_mean", torch.tensor(fm, dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(fs, dtype=torch.float32))
        self.register_buffer("target_mean", torch.tensor(config.target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(config.target_std, dtype=torch.float32))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self, structure_features: torch.Tensor, labels: torch.Tensor | None = None, **_: Any
    ) -> SequenceClassifierOutput:
        x = (structure_features.float() - self.feature_mean) / self.feature_std
        z = self.head(x)
        loss = None
        if labels is not None:
            y = (labels.float().view_as(z) - self.target_mean) / self.target_std
            loss = nn.functional.mse_loss(z, y)
        return SequenceClassifierOutput(loss=loss, logits=z * self.target_std + self.target_mean)

    @torch.no_grad()
    def predict_features(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Predictions ``[n, num_labels]`` (physical units) from precomputed crystal features."""
        self.eval()
        outs = [self(torch.as_tensor(features[i : i + batch_size])).logits.numpy() for i in range(0, len(features), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.config.num_labels))

    def predict_structures(self, structures: Sequence[Structure], batch_size: int = 64) -> np.ndarray:
        """Featurise ``structures`` with the configured frozen encoder, then predict."""
        return self.predict_features(crystal_features(list(structures), self.config.encoder, batch_size=batch_size))


def register() -> None:
    """Register the config/model with the transformers Auto classes (idempotent)."""
    try:
        AutoConfig.register(StructurePredictorConfig.model_type, StructurePredictorConfig)
    except ValueError:
        pass
    for auto in (AutoModel, AutoModelForSequenceClassification):
        try:
            auto.register(StructurePredictorConfig, StructurePropertyPredictor)
        except ValueError:
            pass


def train_structure_predictor(
    features: np.ndarray,
    targets: np.ndarray,
    output_dir: str | Path,
    *,
    encoder: str = "chgnet",
    target_name: str = "target",
    target_unit: str = "",
    eval_features: np.ndarray | None = None,
    eval_targets: np.ndarray | None = None,
    epochs: int = 200,
    batch_size: int = 256,
    learning_rate: float = 2e-3,
    hidden_dim: int = 128,
    seed: int = 0,
    card_metrics: Sequence[dict[str, Any]] = (),
    datasets: Sequence[str] = (),
) -> StructurePropertyPredictor:
    """Train the head with ``transformers.Trainer`` on (features, targets); save model + card to ``output_dir``."""
    with needs_extra("train", "training a structure-aware predictor"):
        from datasets import Dataset
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(seed)
    features = np.asarray(features, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float32).reshape(len(features), -1)
    if not np.isfinite(features).all() or not np.isfinite(targets).all():
        raise ValueError("features/targets contain NaN or inf; drop or report those rows first")
    config = StructurePredictorConfig(
        encoder=encoder, feature_dim=features.shape[1], hidden_dim=hidden_dim, target_names=[target_name],
        target_units=[target_unit], target_mean=targets.mean(0).tolist(), target_std=(targets.std(0) + 1e-8).tolist(),
        feature_mean=features.mean(0).tolist(), feature_std=(features.std(0) + 1e-6).tolist(),
    )
    model = StructurePropertyPredictor(config)
    train_ds = Dataset.from_dict({"structure_features": features, "labels": targets})
    eval_ds = None
    if eval_features is not None and eval_targets is not None:
        eval_ds = Dataset.from_dict({"structure_features": np.asarray(eval_features, np.float32),
                                     "labels": np.asarray(eval_targets, np.float32).reshape(len(eval_features), -1)})
    out = Path(output_dir)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=4096, learning_rate=learning_rate, weight_decay=1e-4, lr_scheduler_type="cosine",
        warmup_steps=10, logging_steps=50, save_strategy="no", eval_strategy="no", report_to=[], seed=seed,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True, dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds).train()
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    model.eval()
    model.save_pretrained(out)
    _write_card(out, model, card_metrics, datasets)
    return model


def _write_card(out: Path, model: StructurePropertyPredictor, metrics: Sequence[dict[str, Any]], datasets: Sequence[str]) -> None:
    usage = (
        "import explicit_transfer  # registers the architecture with the Auto classes\n"
        "from transformers import AutoModel\n"
        "from pymatgen.core import Structure\n"
        f"model = AutoModel.from_pretrained('{out.name}')\n"
        "print(model.predict_structures([Structure.from_file('my.cif')]))"
    )
    from crossmat.model_cards import write_model_card

    write_model_card(out, kind="structure-predictor", datasets=list(datasets), metrics=list(metrics), usage=usage,
                     property_name=model.config.target_names[0], property_unit=model.config.target_units[0])
