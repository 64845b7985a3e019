"""Universal interatomic potentials for exKT ranking and predictors (CHGNet, matgl TensorNet).

The implementation lives in :mod:`dataset_builders.structure_encoders` (one home for structure
encoders, shared with the imKT embedding builder); this module names the functions exKT uses.
"""

from crossmat.dataset_builders.structure_encoders import (
    POTENTIALS,
    crystal_features,
    get_encoder,
    predict_energies,
    relax,
    unsupported_elements,
)

__all__ = ["POTENTIALS", "crystal_features", "get_encoder", "predict_energies", "relax", "unsupported_elements"]
