"""Register CrossMat with the transformers Auto classes and for remote-code (``trust_remote_code``) saving."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from crossmat.tokenization import CrossMatTokenizerFast

from .configuration_crossmat import CrossMatConfig
from .modeling_crossmat import (
    CROSSMAT_AUTO_MAP,
    CrossMatForMaskedLM,
    CrossMatForPropertyPrediction,
    CrossMatForStructureAlignment,
    CrossMatModel,
)

AUTO_MAP = CROSSMAT_AUTO_MAP
_AUTO_CLASSES = {
    CrossMatModel: AutoModel,
    CrossMatForMaskedLM: AutoModelForMaskedLM,
    CrossMatForStructureAlignment: AutoModelForPreTraining,
    CrossMatForPropertyPrediction: AutoModelForSequenceClassification,
}


def register() -> None:
    """Idempotently register config, models and tokenizer (import of ``modeling`` calls this)."""
    AutoConfig.register(CrossMatConfig.model_type, CrossMatConfig, exist_ok=True)
    AutoTokenizer.register(CrossMatConfig, fast_tokenizer_class=CrossMatTokenizerFast, exist_ok=True)
    CrossMatConfig.register_for_auto_class()
    for model_cls, auto_cls in _AUTO_CLASSES.items():
        auto_cls.register(CrossMatConfig, model_cls, exist_ok=True)
        model_cls.register_for_auto_class(auto_cls.__name__)
