"""Pretrained structure encoders / universal potentials (CHGNet, matgl TensorNet): loaded once per
process, then batched embeddings, energies per atom and bounded relaxation.

The one home of these wrappers: the imKT embedding builder (:mod:`dataset_builders.embeddings`) and
exKT ranking and predictors (:mod:`explicit_transfer`) both use it.

* ``chgnet`` — CHGNet (weights in the ``chgnet`` wheel): 64-d crystal features, energy per atom; Z <= 94.
* ``matgl-tensornet`` — matgl's TensorNet universal potential: mean over atoms of the per-atom
  ``readout`` features, energy per atom. Loaded from a folder (``model``, default
  :func:`dataset_builders.paths.tensornet_dir`) or by matgl registry name (downloads; fails clearly offline).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from crossmat._extras import needs_extra

from .paths import DEFAULT_MATGL_MODEL, tensornet_dir

__all__ = [
    "DEFAULT_MATGL_MODEL",
    "ENCODERS",
    "POTENTIALS",
    "ChgnetEncoder",
    "MatglEncoder",
    "crystal_features",
    "embed_structures",
    "get_encoder",
    "predict_energies",
    "relax",
    "unsupported_elements",
]

ENCODERS = ("chgnet", "matgl-tensornet")
POTENTIALS = ENCODERS


class ChgnetEncoder:
    """CHGNet crystal features (64-d), energy per atom and relaxation."""

    name = "chgnet"
    max_z = 94

    def __init__(self, device: str = "cpu") -> None:
        with needs_extra("structure", "the CHGNet structure encoder"):
            from chgnet.model import CHGNet

        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints a banner even with verbose=False
            self.model = CHGNet.load(use_device=device, verbose=False)
        self.model.eval()
        self.dim = 64
        self._optimizer = None  # chgnet StructOptimizer, made on the first relax()

    @staticmethod
    def unsupported_elements(structure: Structure) -> list[str]:
        """Elements of ``structure`` CHGNet was not trained on (beyond Pu)."""
        return sorted({el.symbol for el in structure.composition.elements if el.Z > ChgnetEncoder.max_z})

    def unsupported(self, structure: Structure) -> str | None:
        """Why CHGNet cannot embed ``structure``, or ``None``."""
        bad = self.unsupported_elements(structure)
        return f"element(s) {bad} beyond CHGNet's range (Z <= 94)" if bad else None

    def __call__(self, structures: Sequence[Structure], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(n, 64)`` float32 and energies per atom ``(n,)`` float32."""
        import torch

        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            out = self.model.predict_structure(
                list(structures), task="e", return_crystal_feas=True, batch_size=batch_size
            )
        if isinstance(out, dict):
            out = [out]
        emb = np.stack([o["crystal_fea"] for o in out]).astype(np.float32)
        return emb, np.asarray([o["e"] for o in out], dtype=np.float32).reshape(-1)

    def relax(self, structure: Structure, steps: int = 50, fmax: float = 0.1) -> tuple[Structure, float]:
        """Bounded FIRE relaxation (cell + positions): (relaxed structure, energy per atom)."""
        with needs_extra("structure", "CHGNet relaxation"):
            from chgnet.model import StructOptimizer

        with contextlib.redirect_stdout(io.StringIO()):  # StructOptimizer prints "CHGNet will run on cpu"
            if self._optimizer is None:
                self._optimizer = StructOptimizer(model=self.model, use_device="cpu")
            res = self._optimizer.relax(structure, steps=steps, fmax=fmax, verbose=False)
        final = res["final_structure"]
        return final, float(res["trajectory"].energies[-1]) / len(final)


class MatglEncoder:
    """matgl TensorNet: atom-mean of the per-atom readout features, energy per atom and relaxation."""

    name = "matgl-tensornet"

    def __init__(self, model: str | Path | None = None) -> None:
        with needs_extra("structure", "the matgl TensorNet structure encoder"):
            import matgl
            from matgl.ext.pymatgen import Structure2Graph

        ref = str(model) if model else str(tensornet_dir())
        if not model and not Path(ref).is_dir():
            ref = DEFAULT_MATGL_MODEL  # registry name: matgl downloads it
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.potential = matgl.load_model(ref)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise RuntimeError(
                f"cannot load matgl model {ref!r} ({type(exc).__name__}: {exc}). Pass a local model folder "
                "(one holding model.json/model.pt; --matgl-model or CROSSMAT_TENSORNET) or go online so matgl "
                "can fetch it by name."
            ) from exc
        self.ref = ref
        self._embedding_mode()
        net = self.potential.model
        self.converter = Structure2Graph(element_types=net.element_types, cutoff=net.cutoff)
        self.dim = int(net.linear.out_features) if hasattr(net, "linear") else None
        self.elements = frozenset(net.element_types)

    def _embedding_mode(self) -> None:
        self.potential.calc_forces = False
        self.potential.calc_stresses = False
        self.potential.calc_hessian = False
        self.potential.eval()

    def unsupported_elements(self, structure: Structure) -> list[str]:
        """Elements of ``structure`` the matgl model was not trained on."""
        return sorted({el.symbol for el in structure.composition.elements} - self.elements)

    def unsupported(self, structure: Structure) -> str | None:
        """Why the matgl model cannot embed ``structure``, or ``None``."""
        bad = self.unsupported_elements(structure)
        return f"element(s) {bad} not in the matgl model's element types" if bad else None

    def __call__(self, structures: Sequence[Structure], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(n, d)`` float32 and energies per atom ``(n,)`` float32."""
        import torch
        with needs_extra("structure", "the matgl TensorNet structure encoder"):
            from torch_geometric.data import Batch

        embs, energies = [], []
        for start in range(0, len(structures), batch_size):
            chunk = structures[start : start + batch_size]
            graphs, lats, states = [], [], []
            for s in chunk:
                g, lat, state = self.converter.get_graph(s)
                graphs.append(g)
                lats.append(lat[0])
                states.append(torch.as_tensor(np.asarray(state), dtype=lat.dtype).reshape(-1))
            batch = Batch.from_data_list(graphs)
            with torch.no_grad():
                total = self.potential(g=batch, lat=torch.stack(lats), state_attr=torch.stack(states))[0]
                feats = self.potential.model.feature_dict["readout"]
                n_atoms = torch.bincount(batch.batch, minlength=len(chunk)).to(feats.dtype)
                pooled = torch.zeros(len(chunk), feats.shape[1], dtype=feats.dtype).index_add_(0, batch.batch, feats)
                embs.append((pooled / n_atoms[:, None]).numpy().astype(np.float32))
                energies.append((total.reshape(-1) / n_atoms).numpy().astype(np.float32))
        return np.concatenate(embs), np.concatenate(energies)

    def relax(self, structure: Structure, steps: int = 50, fmax: float = 0.1) -> tuple[Structure, float]:
        """Bounded FIRE relaxation (cell + positions) with forces and stresses switched on for the run."""
        with needs_extra("structure", "matgl relaxation"):
            from matgl.ext.ase import Relaxer

        self.potential.calc_forces = True
        self.potential.calc_stresses = True
        try:
            res = Relaxer(potential=self.potential, relax_cell=True).relax(structure, fmax=fmax, steps=steps, verbose=False)
        finally:
            self._embedding_mode()
        final = res["final_structure"]
        return final, float(res["trajectory"].energies[-1]) / len(final)


@lru_cache(maxsize=4)
def get_encoder(name: str, model: str | None = None) -> ChgnetEncoder | MatglEncoder:
    """A (cached: loaded once per process) encoder by name: ``chgnet`` or ``matgl-tensornet``
    (``model``: folder or registry name)."""
    if name == "chgnet":
        return ChgnetEncoder()
    if name in ("matgl-tensornet", "matgl"):
        return MatglEncoder(model)
    raise ValueError(f"unknown encoder {name!r}; choose one of {ENCODERS}")


def embed_structures(
    structures: list[Structure], encoder: str = "chgnet", batch_size: int = 32, model: str | None = None
) -> np.ndarray:
    """Embeddings ``(n, d)`` float32 of pymatgen structures with a pretrained structure encoder."""
    if not structures:
        raise ValueError("embed_structures got an empty list")
    emb, _ = get_encoder(encoder, model)(structures, batch_size=batch_size)
    return emb


def crystal_features(structures: Sequence[Structure], encoder: str = "chgnet", batch_size: int = 64) -> np.ndarray:
    """Frozen structure-encoder crystal features ``[n, d]`` (an empty list gives ``[0, d]``)."""
    enc = get_encoder(encoder)
    if not structures:
        return np.zeros((0, enc.dim or 0), dtype=np.float32)
    return enc(list(structures), batch_size=batch_size)[0]


def predict_energies(structures: Sequence[Structure], potential: str = "chgnet", batch_size: int = 64) -> np.ndarray:
    """Energy per atom (eV/atom) for every structure, in batches."""
    if not structures:
        return np.zeros(0)
    return get_encoder(potential)(list(structures), batch_size=batch_size)[1].astype(np.float64)


def relax(structure: Structure, potential: str = "chgnet", steps: int = 50, fmax: float = 0.1) -> tuple[Structure, float]:
    """Bounded ASE relaxation (FIRE, cell + positions); returns (relaxed structure, energy per atom)."""
    return get_encoder(potential).relax(structure, steps=steps, fmax=fmax)


def unsupported_elements(structure: Structure, potential: str = "chgnet") -> list[str]:
    """Elements of ``structure`` the potential was not trained on (CHGNet: checked without loading it)."""
    if potential == "chgnet":
        return ChgnetEncoder.unsupported_elements(structure)
    return get_encoder(potential).unsupported_elements(structure)
