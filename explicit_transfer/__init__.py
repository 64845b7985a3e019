"""Explicit knowledge transfer (exKT): formula -> generated crystal structures -> structure-aware predictor.

Generators share one interface, ``generate(formulas, n_candidates) -> GenerationBatch`` (a
``list[list[Candidate]]`` with ``.failures``): :class:`PrototypeGenerator` (template substitution) and
:class:`CIFLanguageModelGenerator` (a GPT-2 CIF language model, CrystaLLM-style prompts).
Importing this package registers :class:`StructurePropertyPredictor` with the transformers Auto classes.
"""

from .base import Candidate, GenerationBatch, GenerationFailure, StructureGenerator, parse_target
from .predictor import StructurePredictorConfig, StructurePropertyPredictor, register, train_structure_predictor
from .prototypes import PrototypeGenerator, load_aflow_prototypes
from .ranking import rank_candidates

register()

__all__ = [
    "Candidate",
    "GenerationBatch",
    "GenerationFailure",
    "PrototypeGenerator",
    "StructureGenerator",
    "StructurePredictorConfig",
    "StructurePropertyPredictor",
    "load_aflow_prototypes",
    "parse_target",
    "rank_candidates",
    "register",
    "train_structure_predictor",
]
