"""Rank generated candidates: by a universal potential's energy per atom (batched, optional bounded relaxation),
by a learned site-arrangement ranker, or both."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

from .base import Candidate, GenerationBatch, GenerationFailure
from .csp_metrics import csp_matcher
from .potentials import predict_energies, relax, unsupported_elements
from .site_ranker import SiteRanker, unscorable_species

__all__ = ["RANK_METHODS", "KnownIndex", "KnownStructures", "a_site_species", "distinct_first", "distinct_order",
           "known_index", "known_matches", "novel_first", "rank_candidates", "structure_classes",
           "written_order_first", "written_site_order"]

RANK_METHODS = ("similarity", "energy", "learned", "learned+energy")

# structures the user already has: a list (ids are positions), ``(id, structure)`` pairs or ``{id: structure}``
KnownStructures = Sequence[Structure] | Sequence[tuple[str, Structure]] | Mapping[str, Structure]


def rank_candidates(
    batch: GenerationBatch,
    potential: str = "chgnet",
    relax_steps: int = 0,
    fmax: float = 0.1,
    batch_size: int = 64,
    progress: bool = False,
    method: str = "energy",
    ranker: SiteRanker | str | Path | None = None,
    energy_weight: float | None = None,
) -> GenerationBatch:
    """Re-score every candidate and sort each formula's list (best first).

    ``method``: ``energy`` (score ``-energy_per_atom``; candidates with elements the potential does not support
    are dropped and a formula left with none gets a failure record; ``relax_steps > 0`` relaxes each candidate
    with FIRE for at most that many steps first), ``learned`` (a :class:`SiteRanker` or its folder),
    ``learned+energy`` (learned score ``- energy_weight * energy_per_atom``; the weight defaults to the ranker's
    tuned ``config.energy_weight``) or ``similarity`` (the generator's own order, unchanged).
    """
    if method not in RANK_METHODS:
        raise ValueError(f"unknown ranking method {method!r}; choose one of {list(RANK_METHODS)}")
    if method == "similarity":
        return batch
    if method in ("learned", "learned+energy"):
        return _rank_learned(batch, method, ranker, energy_weight, potential, relax_steps, fmax, batch_size, progress)
    return _rank_energy(batch, potential, relax_steps, fmax, batch_size, progress)


def structure_classes(structures: list[Structure], matcher: StructureMatcher | None = None) -> list[int]:
    """Class id per structure, in order: each structure joins the first earlier class whose representative (its
    first member) ``matcher`` fits, else starts a new one. Default matcher: the CSP evaluation settings, so two
    candidates of one class count as the same answer in match@k. A fit that raises counts as no fit."""
    matcher = matcher or csp_matcher()
    reps: list[Structure] = []
    out = []
    for s in structures:
        cls = next((k for k, r in enumerate(reps) if _fits(matcher, s, r)), None)
        if cls is None:
            cls = len(reps)
            reps.append(s)
        out.append(cls)
    return out


def _fits(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    try:
        return bool(matcher.fit(a, b))
    except Exception:  # noqa: BLE001 - a degenerate candidate is a distinct one, never a crash
        return False


def distinct_order(classes: list[int]) -> list[int]:
    """Positions of candidates given in rank order with their structure ``classes``: the first member of every
    class, in rank order, then the repeats, in rank order."""
    seen: set[int] = set()
    firsts, repeats = [], []
    for k, cls in enumerate(classes):
        (repeats if cls in seen else firsts).append(k)
        seen.add(cls)
    return firsts + repeats


def distinct_first(batch: GenerationBatch, matcher: StructureMatcher | None = None,
                   progress: bool = False) -> GenerationBatch:
    """Reorder each formula's (ranked) candidates by :func:`distinct_order` over their :func:`structure_classes`:
    the best-ranked member of every distinct structure first, the repeats after. Repeats are kept and flagged:
    ``metadata["duplicate_of"]`` is the position (in the new order) of the structure they repeat. A ranker that
    scores all copies of its favourite arrangement highest otherwise fills the top-k with one answer."""
    out = GenerationBatch([[] for _ in batch], batch.failures)
    for row, cands in enumerate(tqdm(batch, desc="distinct structures", disable=not progress)):
        classes = structure_classes([c.structure for c in cands], matcher)
        where: dict[int, int] = {}  # class -> position of its first member in the new order
        for position, k in enumerate(distinct_order(classes)):
            c = cands[k]
            c.metadata.pop("duplicate_of", None)
            if classes[k] in where:
                c.metadata["duplicate_of"] = where[classes[k]]
            else:
                where[classes[k]] = position
            out[row].append(c)
    return out


class KnownIndex(dict):
    """Known structures by reduced formula: ``{formula: [(id, structure), ...]}`` (see :func:`known_index`)."""


def known_index(known: KnownStructures) -> KnownIndex:
    """Known structures grouped by reduced formula, each with its id (its position in a plain list)."""
    items = known.items() if isinstance(known, Mapping) else (
        (str(k), x) if isinstance(x, Structure) else (str(x[0]), x[1]) for k, x in enumerate(known))
    index = KnownIndex()
    for key, s in items:
        if not isinstance(s, Structure):
            raise TypeError(f"known structure {key!r} is a {type(s).__name__}, not a pymatgen Structure")
        index.setdefault(s.composition.reduced_formula, []).append((key, s))
    return index


def known_matches(structures: list[Structure], known: KnownStructures | KnownIndex,
                  matcher: StructureMatcher | None = None) -> list[str | None]:
    """Per structure, the id of the first ``known`` structure of its own composition that ``matcher`` fits (the CSP
    evaluation settings by default, so a match would count as that known structure in match@k), else ``None``.
    ``known`` may be a :class:`KnownIndex` built once with :func:`known_index` (reused across calls)."""
    index = known if isinstance(known, KnownIndex) else known_index(known)
    matcher = matcher or csp_matcher()
    return [next((key for key, k in index.get(s.composition.reduced_formula, []) if _fits(matcher, s, k)), None)
            for s in structures]


def novel_first(batch: GenerationBatch, known: KnownStructures | KnownIndex,
                matcher: StructureMatcher | None = None, progress: bool = False) -> GenerationBatch:
    """Reorder each formula's (ranked) candidates: those that reproduce no ``known`` structure first, in their
    order, then those that do, flagged ``metadata["known_as"]`` = the id of the known structure they fit
    (:func:`known_matches`).

    This is the "what I do not have yet" question of structure prediction: when a composition already has
    entries in a database (one polymorph, one site order), the answer wanted is usually another one. Apply it
    before :func:`distinct_first`, which keeps the order of the first member of every distinct structure.
    """
    index = known if isinstance(known, KnownIndex) else known_index(known)
    matcher = matcher or csp_matcher()
    out = GenerationBatch([[] for _ in batch], batch.failures)
    for row, cands in enumerate(tqdm(batch, desc="known structures", disable=not progress)):
        hits = known_matches([c.structure for c in cands], index, matcher)
        for c, hit in zip(cands, hits, strict=True):
            c.metadata.pop("known_as", None)
            if hit is not None:
                c.metadata["known_as"] = hit
        out[row] = [c for c, h in zip(cands, hits, strict=True) if h is None] + \
                   [c for c, h in zip(cands, hits, strict=True) if h is not None]
    return out


_WRITTEN = re.compile(r"([A-Z][a-z]?)(\d*)")


def written_site_order(formula: object) -> tuple[str, str] | None:
    """``(A, B)`` for a formula written in the ABX3 perovskite convention, A-site cation first, then B, then three
    anions (``"SrTiO3"``, ``"AgAsON2"``: Ag on A, As on B); ``None`` for any other formula, or when A and B are
    the same element (then the order says nothing)."""
    text = str(formula).strip()
    tokens = _WRITTEN.findall(text)
    if not tokens or "".join(el + n for el, n in tokens) != text:  # brackets, fractions, spaces, ...
        return None
    counts = [int(n) if n else 1 for _, n in tokens]
    if len(tokens) < 3 or counts[0] != 1 or counts[1] != 1 or sum(counts[2:]) != 3 or tokens[0][0] == tokens[1][0]:
        return None
    return tokens[0][0], tokens[1][0]


def a_site_species(structure: Structure, a: str, b: str) -> str | None:
    """Which of the two cations ``a`` / ``b`` holds the A site of ``structure``: the one whose site has the larger
    nearest-neighbour distance (the 12-coordinated cavity of a perovskite, against the octahedral B site).
    ``None`` when the structure lacks one of them."""
    symbols = [site.specie.symbol for site in structure]
    cation_sites = [i for i, el in enumerate(symbols) if el in (a, b)]
    if not {a, b} <= {symbols[i] for i in cation_sites}:
        return None
    d = structure.distance_matrix
    np.fill_diagonal(d, np.inf)
    return symbols[max(cation_sites, key=lambda i: float(d[i].min()))]


def written_order_first(batch: GenerationBatch, formulas: Sequence[object]) -> GenerationBatch:
    """Reorder each formula's (ranked) candidates: those that put the formula's first written cation on the A
    site first, in their order, then the others, flagged ``metadata["written_order"] = False``.

    Chemists write perovskites A-site first (SrTiO3), and so do the perov_5 val and test formulas (every structure
    of theirs that matches an ideal cubic cell matches the written order, none the swapped one;
    benchmarks/explicit_transfer/perov5_written_order.py). A composition cannot say which cation sits where; the
    written formula can. Formulas not written A B X3 (:func:`written_site_order`) keep their order. Apply after
    ranking and before :func:`distinct_first`.
    """
    if len(formulas) != len(batch):
        raise ValueError(f"{len(formulas)} formulas for {len(batch)} rows of candidates")
    out = GenerationBatch([[] for _ in batch], batch.failures)
    for row, (cands, formula) in enumerate(zip(batch, formulas, strict=True)):
        order = written_site_order(formula)
        if order is None:
            out[row] = list(cands)
            continue
        agree = [a_site_species(c.structure, *order) == order[0] for c in cands]
        for c, ok in zip(cands, agree, strict=True):
            c.metadata["written_order"] = ok
        out[row] = [c for c, ok in zip(cands, agree, strict=True) if ok] + \
                   [c for c, ok in zip(cands, agree, strict=True) if not ok]
    return out


def _rescore(batch: GenerationBatch, unusable: Callable[[Candidate], list[str]], who: str, why: str,
             score: Callable[[list[Candidate]], np.ndarray]) -> GenerationBatch:
    """Drop the candidates ``unusable`` flags (a formula left with none gets a failure record naming the flagged
    species), give the rest ``score(kept)`` (higher is better; the old score kept as ``pre_rank_score``) and sort
    each formula's list best first."""
    out = GenerationBatch([[] for _ in batch], batch.failures)
    flat: list[tuple[int, Candidate]] = []
    for row, cands in enumerate(batch):
        bad = [unusable(c) for c in cands]
        flat += [(row, c) for c, b in zip(cands, bad, strict=True) if not b]
        if cands and all(bad):
            els = sorted({e for b in bad for e in b})
            out.failures.append(GenerationFailure(row, cands[0].structure.composition.reduced_formula, who,
                                                  why.format(els=els)))
    scores = score([c for _, c in flat])
    for (row, c), s in zip(flat, scores, strict=True):
        c.metadata["pre_rank_score"] = c.metadata.get("pre_rank_score", c.score)
        c.score = float(s)
        out[row].append(c)
    for row in range(len(out)):
        out[row].sort(key=lambda c: -c.score)
    out.failures.sort(key=lambda f: f.row)
    return out


def _rank_learned(batch: GenerationBatch, method: str, ranker: SiteRanker | str | Path | None,
                  energy_weight: float | None, potential: str, relax_steps: int, fmax: float, batch_size: int,
                  progress: bool) -> GenerationBatch:
    if ranker is None:
        raise ValueError(f"method={method!r} needs a site ranker (a SiteRanker or the folder it was saved to)")
    model = ranker if isinstance(ranker, SiteRanker) else SiteRanker.from_pretrained(ranker)
    weight = 0.0
    if method == "learned+energy":
        weight = model.config.energy_weight if energy_weight is None else energy_weight
        if weight is None:
            raise ValueError("learned+energy needs energy_weight (this ranker has no tuned config.energy_weight)")
        batch = _rank_energy(batch, potential, relax_steps, fmax, batch_size, progress)

    def score(kept: list[Candidate]) -> np.ndarray:
        learned = np.asarray(model.score_structures([c.structure for c in kept]), dtype=float)
        for c, s in zip(kept, learned, strict=True):
            c.metadata["learned_score"] = float(s)
        if not weight:
            return learned
        return learned - weight * np.array([c.metadata["energy_per_atom"] for c in kept])

    return _rescore(batch, lambda c: unscorable_species(c.structure), "rank:learned",
                    "species {els} have no site-ranker descriptors", score)


def _rank_energy(batch: GenerationBatch, potential: str, relax_steps: int, fmax: float, batch_size: int,
                 progress: bool) -> GenerationBatch:
    def score(kept: list[Candidate]) -> np.ndarray:
        if relax_steps > 0:
            for c in tqdm(kept, desc=f"relax ({potential}, <= {relax_steps} steps)", disable=not progress):
                c.structure, e = relax(c.structure, potential, steps=relax_steps, fmax=fmax)
                c.metadata["relaxed_steps_max"] = relax_steps
                c.metadata["energy_per_atom"] = e
            energies = np.array([c.metadata["energy_per_atom"] for c in kept])
        else:
            energies = np.asarray(predict_energies([c.structure for c in kept], potential, batch_size=batch_size))
        for c, e in zip(kept, energies, strict=True):
            c.metadata["energy_per_atom"] = float(e)
        return -energies

    return _rescore(batch, lambda c: unsupported_elements(c.structure, potential), f"rank:{potential}",
                    f"unsupported element(s) {{els}} for potential {potential}", score)
