"""CrossMat models. Importing this package registers them with the transformers Auto classes."""

from .configuration_crossmat import CrossMatConfig
from .modeling_crossmat import (
    CrossMatForMaskedLM,
    CrossMatForPropertyPrediction,
    CrossMatForStructureAlignment,
    CrossMatModel,
    CrossMatPreTrainedModel,
    decode_composition,
)
from .registration import AUTO_MAP, register

register()

__all__ = [
    "AUTO_MAP",
    "CrossMatConfig",
    "CrossMatForMaskedLM",
    "CrossMatForPropertyPrediction",
    "CrossMatForStructureAlignment",
    "CrossMatModel",
    "CrossMatPreTrainedModel",
    "decode_composition",
    "register",
]
