"""Prototype-substitution generator: template library + chemical-similarity element assignment + volume rescaling.

Templates are pymatgen's bundled AFLOW prototypes plus any user-supplied structures (e.g. the training
split's real structures). A target formula is matched to templates with the same anonymised formula
(stoichiometry); elements are assigned to the template's sites so that the summed descriptor distance
(electronegativity, radii, oxidation state, row, group) is minimal, and the cell volume is rescaled by
the ratio of summed atomic volumes. All template/assignment distances are computed in one array operation.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from pymatgen.core import Composition, Structure

from .base import Candidate, StructureGenerator
from .elements import element_features, element_radius

__all__ = ["PrototypeGenerator", "load_aflow_prototypes", "stoichiometry_key"]

MAX_PERMUTATIONS = 720  # bound on element-to-site assignments enumerated per template group


def stoichiometry_key(comp: Composition) -> tuple[int, ...]:
    """Sorted integer amounts of the reduced composition (the anonymised formula as a tuple)."""
    red = comp.reduced_composition
    return tuple(sorted(int(round(a)) for a in red.values()))


def _ordered_species(comp: Composition) -> list[str]:
    """Elements ordered by (reduced amount, electronegativity, symbol): the canonical site-slot order."""
    red = comp.reduced_composition
    feats = {el.symbol: (int(round(a)), el.X if el.X == el.X else 0.0, el.symbol) for el, a in red.items()}
    return sorted(feats, key=lambda s: feats[s])


def load_aflow_prototypes() -> list[tuple[str, Structure]]:
    """pymatgen's bundled AFLOW prototype library as ``(name, structure)`` pairs (ordered structures only)."""
    from pymatgen.analysis.prototypes._data import AFLOW_PROTOTYPE_LIBRARY

    out = []
    for entry in AFLOW_PROTOTYPE_LIBRARY:
        s = entry["snl"].structure
        if s.is_ordered:
            tags = entry["tags"]
            out.append((f"aflow:{tags['aflow']}" + (f" ({tags['mineral']})" if tags.get("mineral") else ""), s))
    return out


class _Group:
    """Templates sharing one stoichiometry: species slots and their descriptors stacked for vector math."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.structures: list[Structure] = []
        self.species: list[list[str]] = []
        self.formulas: list[str] = []  # reduced formulas, for exclude_same_formula without re-deriving them
        self._feats: np.ndarray | None = None

    def add(self, name: str, s: Structure) -> None:
        self.names.append(name)
        self.structures.append(s)
        self.species.append(_ordered_species(s.composition))
        self.formulas.append(s.composition.reduced_formula)
        self._feats = None

    @property
    def feats(self) -> np.ndarray:
        if self._feats is None:
            self._feats = np.stack([element_features(sp) for sp in self.species])  # [T, S, D]
        return self._feats


class PrototypeGenerator(StructureGenerator):
    """Generate candidates by substituting target elements into matching template structures.

    Args:
        templates: extra ``(name, Structure)`` pairs or bare structures (e.g. real training structures).
        use_aflow: include pymatgen's AFLOW prototype library.
        rescale_volume: rescale each substituted cell by the summed atomic-volume ratio.
        exclude_same_formula: skip templates whose reduced formula equals the target (leave-one-out eval).
    """

    name = "prototype"

    def __init__(
        self,
        templates: Iterable[Structure | tuple[str, Structure]] = (),
        use_aflow: bool = True,
        rescale_volume: bool = True,
        exclude_same_formula: bool = False,
    ) -> None:
        self.rescale_volume = rescale_volume
        self.exclude_same_formula = exclude_same_formula
        self.groups: dict[tuple[int, ...], _Group] = defaultdict(_Group)
        if use_aflow:
            for name, s in load_aflow_prototypes():
                self.add_template(s, name)
        for i, t in enumerate(templates):
            name, s = t if isinstance(t, tuple) else (f"user:{i}", t)
            self.add_template(s, name)

    @classmethod
    def from_perov5(cls, split: str = "train", **kwargs: object) -> PrototypeGenerator:
        """Generator whose user templates are a perov_5 generator-training split (``train``, the CSP protocol).

        Keyword arguments go to :func:`explicit_transfer.data.perov5_templates` (``limit``, ``seed``,
        ``exclude_ids``, ``frame``) or to the constructor (``use_aflow``, ``rescale_volume``, ...).
        """
        from .data import perov5_templates

        data_keys = {"limit", "seed", "exclude_ids", "frame"}
        data_kw = {k: v for k, v in kwargs.items() if k in data_keys}
        gen_kw = {k: v for k, v in kwargs.items() if k not in data_keys}
        return cls(templates=perov5_templates(split, **data_kw), **gen_kw)  # type: ignore[arg-type]

    def add_template(self, structure: Structure, name: str) -> None:
        """Add one ordered structure to the library."""
        if not structure.is_ordered:
            raise ValueError(f"template {name!r} is disordered; only ordered structures can be substituted")
        self.groups[stoichiometry_key(structure.composition)].add(name, structure)

    @property
    def n_templates(self) -> int:
        return sum(len(g.names) for g in self.groups.values())

    def _assignments(self, species: list[str], comp: Composition) -> list[tuple[str, ...]]:
        """All element orders that keep each element on a slot of equal amount (bounded)."""
        red = comp.reduced_composition
        amounts = [int(round(red[s])) for s in species]
        blocks: list[list[str]] = []
        for _, grp in itertools.groupby(range(len(species)), key=lambda i: amounts[i]):
            blocks.append([species[i] for i in grp])
        per_block = [list(itertools.permutations(b)) for b in blocks]
        total = int(np.prod([len(p) for p in per_block]))
        if total > MAX_PERMUTATIONS:  # keep the electronegativity order for very large equal-amount blocks
            per_block = [[tuple(b)] for b in blocks]
        return [tuple(itertools.chain.from_iterable(p)) for p in itertools.product(*per_block)]

    def _generate_one(self, composition: Composition, n_candidates: int) -> list[Candidate]:
        key = stoichiometry_key(composition)
        group = self.groups.get(key)
        if group is None or not group.names:
            anon = composition.reduced_composition.anonymized_formula
            raise LookupError(f"no template with stoichiometry {anon} in a library of {self.n_templates} structures")
        species = _ordered_species(composition)
        perms = self._assignments(species, composition)
        perm_feats = np.stack([element_features(p) for p in perms])  # [P, S, D]
        dist = np.sqrt(((group.feats[:, None] - perm_feats[None]) ** 2).sum(-1)).sum(-1)  # [T, P]
        target = composition.reduced_formula
        if self.exclude_same_formula:
            same = np.array([f == target for f in group.formulas])
            dist[same] = np.inf
        order = np.argsort(dist, axis=None, kind="stable")
        out: list[Candidate] = []
        seen: set[tuple[int, int]] = set()
        for flat in order:
            t, p = divmod(int(flat), dist.shape[1])
            if not np.isfinite(dist[t, p]) or (t, p) in seen:
                continue
            seen.add((t, p))
            out.append(self._substitute(group, t, perms[p], float(dist[t, p])))
            if len(out) >= n_candidates:
                break
        return out

    def _substitute(self, group: _Group, t: int, new_species: Sequence[str], distance: float) -> Candidate:
        template = group.structures[t]
        mapping = dict(zip(group.species[t], new_species, strict=True))
        s = template.copy()
        s.replace_species(mapping)
        if self.rescale_volume:
            counts = template.composition
            v_old = sum(counts[el] * element_radius(el) ** 3 for el in mapping)
            v_new = sum(counts[el] * element_radius(mapping[el]) ** 3 for el in mapping)
            s.scale_lattice(template.volume * v_new / v_old)
        meta = {"template": group.names[t], "template_formula": template.composition.reduced_formula,
                "distance": distance, "mapping": mapping}
        return Candidate(s, -distance, self.name, meta)
