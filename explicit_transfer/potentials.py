"""Universal interatomic potentials (CHGNet, matgl TensorNet): batched energies, crystal features, bounded relaxation."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

__all__ = ["POTENTIALS", "load_chgnet", "load_tensornet", "unsupported_elements", "predict_energies",
           "crystal_features", "relax"]

POTENTIALS = ("chgnet", "matgl-tensornet")
_MAX_Z = {"chgnet": 94, "matgl-tensornet": 89}


@lru_cache(maxsize=1)
def load_chgnet():
    """CHGNet (weights ship in the chgnet wheel), CPU, quiet."""
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNet.load(use_device="cpu", verbose=False)


def tensornet_path() -> Path:
    """Local TensorNet folder: ``$CROSSMAT_TENSORNET`` or ``<data>/../models/matgl/TensorNet-MatPES-PBE-v2025.1-PES``."""
    from .base import data_dir

    env = os.environ.get("CROSSMAT_TENSORNET")
    return Path(env) if env else data_dir().parent / "models" / "matgl" / "TensorNet-MatPES-PBE-v2025.1-PES"


@lru_cache(maxsize=1)
def load_tensornet():
    """matgl's TensorNet universal potential (local folder, else matgl's registry name; fails offline clearly)."""
    import matgl

    path = tensornet_path()
    try:
        return matgl.load_model(str(path) if path.exists() else "TensorNet-MatPES-PBE-v2025.1-PES")
    except Exception as err:
        raise RuntimeError(f"cannot load matgl TensorNet from {path} or the matgl registry (offline?): {err}") from err


def unsupported_elements(structure: Structure, potential: str = "chgnet") -> list[str]:
    """Elements of ``structure`` the potential was not trained on."""
    if potential not in _MAX_Z:
        raise ValueError(f"unknown potential {potential!r}; choose from {POTENTIALS}")
    return sorted({el.symbol for el in structure.composition.elements if el.Z > _MAX_Z[potential]})


def _chgnet_batch(structures: Sequence[Structure], batch_size: int, feas: bool) -> list[dict]:
    model = load_chgnet()
    with contextlib.redirect_stdout(io.StringIO()):
        out = model.predict_structure(list(structures), task="e", return_crystal_feas=feas, batch_size=batch_size)
    return [out] if isinstance(out, dict) else out


def predict_energies(structures: Sequence[Structure], potential: str = "chgnet", batch_size: int = 64) -> np.ndarray:
    """Energy per atom (eV/atom) for every structure, in batches."""
    if not structures:
        return np.zeros(0)
    if potential == "chgnet":
        return np.array([float(o["e"]) for o in _chgnet_batch(structures, batch_size, False)])
    if potential == "matgl-tensornet":
        try:  # the project's batched matgl encoder (PyG batches) when available
            from dataset_builders.embeddings import get_encoder

            return np.asarray(get_encoder("matgl-tensornet")(list(structures), batch_size=batch_size)[1], dtype=float)
        except ImportError:
            pass
        from matgl.ext.ase import PESCalculator
        from pymatgen.io.ase import AseAtomsAdaptor

        calc = PESCalculator(potential=load_tensornet())
        energies = []
        for s in structures:  # matgl's ASE calculator evaluates one cell at a time
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = calc
            energies.append(float(atoms.get_potential_energy()) / len(s))
        return np.array(energies)
    raise ValueError(f"unknown potential {potential!r}; choose from {POTENTIALS}")


def crystal_features(structures: Sequence[Structure], encoder: str = "chgnet", batch_size: int = 64) -> np.ndarray:
    """Frozen structure-encoder crystal features ``[n, d]`` (CHGNet: 64-d pooled crystal features)."""
    if encoder != "chgnet":
        try:  # the project's shared embedding function, when present
            from dataset_builders.embeddings import embed_structures

            return np.asarray(embed_structures(list(structures), encoder=encoder))
        except ImportError as err:
            raise ValueError(f"encoder {encoder!r} needs dataset_builders.embeddings; use 'chgnet'") from err
    if not structures:
        return np.zeros((0, 64), dtype=np.float32)
    return np.stack([np.asarray(o["crystal_fea"], dtype=np.float32) for o in _chgnet_batch(structures, batch_size, True)])


def relax(structure: Structure, potential: str = "chgnet", steps: int = 50, fmax: float = 0.1) -> tuple[Structure, float]:
    """Bounded ASE relaxation (FIRE, cell + positions); returns (relaxed structure, energy per atom)."""
    if potential == "chgnet":
        from chgnet.model import StructOptimizer

        opt = StructOptimizer(model=load_chgnet(), use_device="cpu")
        with contextlib.redirect_stdout(io.StringIO()):
            res = opt.relax(structure, steps=steps, fmax=fmax, verbose=False)
        final = res["final_structure"]
        return final, float(res["trajectory"].energies[-1]) / len(final)
    if potential == "matgl-tensornet":
        from matgl.ext.ase import Relaxer

        res = Relaxer(potential=load_tensornet(), relax_cell=True).relax(structure, fmax=fmax, steps=steps, verbose=False)
        final = res["final_structure"]
        return final, float(res["trajectory"].energies[-1]) / len(final)
    raise ValueError(f"unknown potential {potential!r}; choose from {POTENTIALS}")
