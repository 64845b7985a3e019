"""Explicit knowledge transfer (exKT): formula -> generated crystal structures -> structure-aware predictor.

Generators share one interface, ``generate(formulas, n_candidates) -> GenerationBatch`` (a
``list[list[Candidate]]`` with ``.failures``): :class:`PrototypeGenerator` (template substitution) and
:class:`CIFLanguageModelGenerator` (a GPT-2 CIF language model, CrystaLLM-style prompts). Candidates are ranked
by :func:`rank_candidates` (generator similarity, potential energy, or the learned :class:`SiteRanker`);
:func:`distinct_first`, :func:`novel_first` and :func:`written_order_first` reorder them (one per distinct structure,
structures not yet known, the A-site cation a perovskite formula names first).
Importing this package registers :class:`StructurePropertyPredictor` with the transformers Auto classes.
"""

from .base import Candidate, GenerationBatch, GenerationFailure, StructureGenerator, parse_target
from .predictor import StructurePredictorConfig, StructurePropertyPredictor, register, train_structure_predictor
from .prototypes import PrototypeGenerator, load_aflow_prototypes
from .ranking import (
    RANK_METHODS,
    KnownIndex,
    a_site_species,
    distinct_first,
    distinct_order,
    known_index,
    known_matches,
    novel_first,
    rank_candidates,
    structure_classes,
    written_order_first,
    written_site_order,
)
from .site_ranker import SiteRanker, SiteRankerConfig, make_decoys, train_site_ranker

register()

__all__ = [
    "Candidate",
    "a_site_species",
    "GenerationBatch",
    "GenerationFailure",
    "KnownIndex",
    "PrototypeGenerator",
    "RANK_METHODS",
    "SiteRanker",
    "SiteRankerConfig",
    "StructureGenerator",
    "StructurePredictorConfig",
    "StructurePropertyPredictor",
    "distinct_first",
    "distinct_order",
    "known_index",
    "known_matches",
    "load_aflow_prototypes",
    "make_decoys",
    "novel_first",
    "parse_target",
    "rank_candidates",
    "register",
    "structure_classes",
    "train_site_ranker",
    "train_structure_predictor",
    "written_order_first",
    "written_site_order",
]
