"""Pretrained structure encoders / universal potentials (CHGNet, matgl TensorNet): loaded once per
process, then batched embeddings, energies per atom and bounded relaxation.

The one home of these wrappers: the imKT embedding builder (:mod:`dataset_builders.embeddings`) and
exKT ranking and predictors (:mod:`explicit_transfer`) both use it.

* ``chgnet`` — CHGNet (weights in the ``chgnet`` wheel): 64-d crystal features, energy per atom; Z <= 94.
* ``matgl-tensornet`` — matgl's TensorNet universal potential: mean over atoms of the per-atom
  ``readout`` features, energy per atom. Loaded from a folder (``model``, default
  :func:`dataset_builders.paths.tensornet_dir`) or by matgl registry name (downloads; fails clearly offline).
* ``descriptors`` — no model: 29 physically meaningful structure descriptors (volume, packing, neighbour
  distances, coordination, bonds, symmetry, cell shape; see :class:`DescriptorEncoder`); energies NaN.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from crossmat._extras import needs_extra

from .paths import DEFAULT_MATGL_MODEL, tensornet_dir

__all__ = [
    "DEFAULT_MATGL_MODEL",
    "ENCODERS",
    "POTENTIALS",
    "CRYSTAL_SYSTEMS",
    "DESCRIPTOR_NAMES",
    "ChgnetEncoder",
    "DescriptorEncoder",
    "MatglEncoder",
    "crystal_features",
    "embed_structures",
    "get_encoder",
    "predict_energies",
    "relax",
    "unsupported_elements",
]

ENCODERS = ("chgnet", "matgl-tensornet", "descriptors")
POTENTIALS = ("chgnet", "matgl-tensornet")
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")


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


DESCRIPTOR_NAMES = (
    "log_volume_per_atom",
    "log_density",
    "packing_fraction",
    "nn_distance_min",
    "nn_distance_mean",
    "nn_distance_std",
    "nn_distance_over_radii_mean",
    "coordination_mean",
    "coordination_std",
    "bond_length_mean",
    "bond_length_distortion",
    "unlike_bond_fraction",
    *(f"crystal_system_{c}" for c in CRYSTAL_SYSTEMS),
    "space_group_scaled",
    "log_point_group_order",
    "lattice_length_min",
    "lattice_length_mid",
    "lattice_length_max",
    "lattice_angle_deviation_0",
    "lattice_angle_deviation_1",
    "lattice_angle_deviation_2",
    "log_primitive_sites",
    "distinct_site_fraction",
)


@lru_cache(maxsize=1)
def _radius_table() -> np.ndarray:
    """Atomic radius (Å) by Z: pymatgen's empirical ``atomic_radius``, else ``atomic_radius_calculated``, else 1.5."""
    from pymatgen.core.periodic_table import Element

    table = np.full(120, 1.5)
    with warnings.catch_warnings():  # pymatgen warns for every element without a calculated radius
        warnings.simplefilter("ignore")
        radii = {el.Z: (el.atomic_radius, el.atomic_radius_calculated) for el in Element}
    for z, pair in radii.items():
        if z >= len(table):
            continue
        for value in pair:
            if value is not None and float(value) > 0:
                table[z] = float(value)
                break
    return table


def _crystal_system(number: int) -> int:
    """Index in :data:`CRYSTAL_SYSTEMS` of a space-group number (1-230)."""
    return int(np.searchsorted(np.array([2, 15, 74, 142, 167, 194, 230]), number))


class DescriptorEncoder:
    """Physically meaningful structure descriptors (pure pymatgen + spglib; no model, no network).

    A fixed-length float32 vector per structure (:data:`DESCRIPTOR_NAMES`, 29 values):

    * ``log_volume_per_atom``: ln(V / N), V the cell volume in Å^3, N the number of sites;
    * ``log_density``: ln of the mass density (g/cm^3);
    * ``packing_fraction``: sum over sites of 4/3 pi r^3 over V, r the element's empirical atomic radius
      (pymatgen ``atomic_radius``; ``atomic_radius_calculated`` or 1.5 Å where missing);
    * ``nn_distance_min/mean/std``: the nearest-neighbour distance of each site (Å; periodic neighbour list,
      ``Structure.get_neighbor_list``), min, mean and std over sites;
    * ``nn_distance_over_radii_mean``: mean over sites of d_nn / (r_i + r_j), the nearest bond against the
      sum of the two atomic radii (how compressed or ionic the nearest contact is);
    * ``coordination_mean/std``: effective coordination number of each site, the number of neighbours within
      ``shell`` (1.15) times the site's own nearest-neighbour distance (6 in rock salt, 8 in bcc, 12 in fcc;
      distorted shells up to 15 % longer still count), mean and std over sites;
    * ``bond_length_mean``: mean length (Å) of those coordination-shell bonds;
    * ``bond_length_distortion``: mean over sites of std/mean of the site's shell bond lengths (0: regular);
    * ``unlike_bond_fraction``: fraction of shell bonds joining two different elements (1 in rock salt, 0 in
      an elemental solid);
    * ``crystal_system_*``: one-hot of the 7 crystal systems (spglib via ``SpacegroupAnalyzer`` with
      ``symprec`` 0.1 Å and 5 degrees; when spglib fails the structure counts as triclinic, space group 1,
      no symmetry, and ``symmetry_failures`` counts it);
    * ``space_group_scaled``: space-group number / 230;
    * ``log_point_group_order``: ln of the number of symmetry operations without pure translations;
    * ``lattice_length_min/mid/max``: sorted lengths of the Niggli-reduced cell over the cube root of its volume
      (1, 1, 1 for a cube; a long axis flags layered or chain structures);
    * ``lattice_angle_deviation_*``: |angle - 90| / 90 of the Niggli cell's angles alpha, beta, gamma;
    * ``log_primitive_sites``: ln of the number of sites in the primitive cell (N over the pure translations);
    * ``distinct_site_fraction``: symmetry-distinct sites (spglib equivalent atoms) over N.

    Energies are NaN (no model): a per-formula choice of polymorph by energy falls back to source order,
    so use ``--polymorphs mean`` in the alignment builder. Structures with two sites closer than
    ``min_distance`` (0.5 Å) or a site with no neighbour within 30 Å raise (the embeddings builder reports
    them one by one).
    """

    name = "descriptors"
    dim = len(DESCRIPTOR_NAMES)
    names = DESCRIPTOR_NAMES

    def __init__(self, symprec: float = 0.1, angle_tolerance: float = 5.0, shell: float = 1.15,
                 min_distance: float = 0.5) -> None:  # fmt: skip
        self.symprec, self.angle_tolerance = symprec, angle_tolerance
        self.shell, self.min_distance = shell, min_distance
        self.symmetry_failures = 0
        self.structures_seen = 0

    def unsupported(self, structure: Structure) -> str | None:
        """Why descriptors cannot be computed for ``structure`` (disordered or no sites), or ``None``."""
        if len(structure) == 0:
            return "structure has no sites"
        if not structure.is_ordered:
            return "disordered structure (partial occupancies)"
        return None

    def metadata(self) -> dict[str, Any]:
        """Settings and counters for the builder's metadata."""
        return {"descriptor_names": list(self.names), "symprec": self.symprec, "angle_tolerance": self.angle_tolerance,
                "coordination_shell": self.shell, "symmetry_failures": self.symmetry_failures,
                "structures_seen": self.structures_seen}  # fmt: skip

    def _neighbours(self, structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(centres, neighbours, distances, nearest distance per site), the cutoff grown until every site's
        coordination shell fits."""
        n = len(structure)
        cutoff = max(4.0, 1.6 * (structure.volume / n) ** (1 / 3))
        while True:
            centre, nbr, _, dist = structure.get_neighbor_list(cutoff)
            dmin = np.full(n, np.inf)
            np.minimum.at(dmin, centre, dist)
            need = self.shell * dmin.max()
            if np.isfinite(need) and need <= cutoff:
                return centre, nbr, dist, dmin
            if cutoff >= 30.0:
                raise ValueError(f"a site has no neighbour within {cutoff:.0f} Å (isolated atom)")
            cutoff = min(30.0, max(2 * cutoff, need + 0.1) if np.isfinite(need) else 2 * cutoff)

    def describe(self, structure: Structure) -> np.ndarray:
        """The descriptor vector ``(dim,)`` float32 of one structure."""
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        self.structures_seen += 1
        n = len(structure)
        volume = structure.volume
        z = np.array([site.specie.Z for site in structure])
        radius = _radius_table()[z]
        centre, nbr, dist, dmin = self._neighbours(structure)
        if dmin.min() < self.min_distance:
            raise ValueError(f"two sites {dmin.min():.2f} Å apart (< {self.min_distance} Å): overlapping atoms")
        nearest = np.flatnonzero(dist <= dmin[centre] + 1e-8)
        first = nearest[np.unique(centre[nearest], return_index=True)[1]]  # one nearest neighbour per site
        shell = dist <= self.shell * dmin[centre]
        c, d = centre[shell], dist[shell]
        cn = np.bincount(c, minlength=n).astype(float)
        s1 = np.bincount(c, weights=d, minlength=n)
        s2 = np.bincount(c, weights=d * d, minlength=n)
        site_mean = s1 / cn
        site_std = np.sqrt(np.maximum(s2 / cn - site_mean**2, 0.0))
        out = [
            np.log(volume / n),
            np.log(structure.density),
            float(np.sum(4 / 3 * np.pi * radius**3) / volume),
            dmin.min(),
            dmin.mean(),
            dmin.std(),
            float(np.mean(dist[first] / (radius[centre[first]] + radius[nbr[first]]))),
            cn.mean(),
            cn.std(),
            float(d.mean()),
            float(np.mean(site_std / site_mean)),
            float(np.mean(z[c] != z[nbr[shell]])),
        ]
        try:
            with warnings.catch_warnings():  # spglib's deprecation notice about its error handling
                warnings.simplefilter("ignore", DeprecationWarning)
                sga = SpacegroupAnalyzer(structure, symprec=self.symprec, angle_tolerance=self.angle_tolerance)
            data = sga.get_symmetry_dataset()
            number, rotations = int(data.number), np.asarray(data.rotations)
            translations = int(np.all(rotations == np.eye(3, dtype=rotations.dtype), axis=(1, 2)).sum())
            distinct = len(np.unique(np.asarray(data.equivalent_atoms)))
        except Exception:  # spglib gives up (None dataset or an error): count as triclinic P1
            self.symmetry_failures += 1
            number, rotations, translations, distinct = 1, np.eye(3)[None], 1, n
        onehot = np.zeros(len(CRYSTAL_SYSTEMS))
        onehot[_crystal_system(number)] = 1.0
        lattice = structure.lattice.get_niggli_reduced_lattice()
        lengths, angles = np.asarray(lattice.abc), np.asarray(lattice.angles)
        order = np.argsort(lengths, kind="stable")
        out += [
            *onehot,
            number / 230.0,
            np.log(len(rotations) / translations),
            *(lengths[order] / lattice.volume ** (1 / 3)),
            *(np.abs(angles - 90.0) / 90.0),
            np.log(n / translations),
            distinct / n,
        ]
        vec = np.asarray(out, dtype=np.float32)
        if not np.all(np.isfinite(vec)):
            bad = [k for k, v in zip(self.names, vec, strict=True) if not np.isfinite(v)]
            raise ValueError(f"non-finite descriptor(s): {bad}")
        return vec

    def __call__(self, structures: Sequence[Structure], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Descriptors ``(n, dim)`` float32 and energies per atom ``(n,)``, all NaN (no model)."""
        emb = np.stack([self.describe(s) for s in structures]) if structures else np.zeros((0, self.dim), np.float32)
        return emb, np.full(len(emb), np.nan, dtype=np.float32)


@lru_cache(maxsize=4)
def get_encoder(name: str, model: str | None = None) -> ChgnetEncoder | MatglEncoder | DescriptorEncoder:
    """A (cached: loaded once per process) encoder by name: ``chgnet``, ``matgl-tensornet``
    (``model``: folder or registry name) or ``descriptors``."""
    if name == "descriptors":
        return DescriptorEncoder()
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
