"""Learned site-arrangement ranker: which assignment of a composition's elements to a structure's sites is real.

Each site is described by its element (electronegativity, radii, oxidation states, row, group, Mendeleev number),
its local environment (ECoN-style effective coordination number and mean bond length from one neighbour list),
the weighted mean of its neighbours' element descriptors and bond-chemistry terms (bond length over radius sums,
electronegativity difference, oxidation-state product). A small MLP scores every site; a structure's score is
the mean over its sites, so any cell size works. Training contrasts each real structure with its site-swapped
decoys (same geometry, species permuted between sites) under a softmax (listwise) loss.
Saved as ``config.json`` + ``model.safetensors`` (no pickles).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Element, Structure
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "ELEMENT_FEATURE_NAMES",
    "SITE_FEATURE_NAMES",
    "SiteRanker",
    "SiteRankerConfig",
    "decoy_accuracy",
    "decoy_species",
    "make_decoys",
    "site_element_table",
    "site_features",
    "train_site_ranker",
    "unscorable_species",
]

ELEMENT_FEATURE_NAMES = ("electronegativity", "atomic_radius", "ionic_radius", "oxidation_mean", "oxidation_min",
                         "oxidation_max", "row", "group", "mendeleev_number")
SITE_FEATURE_NAMES = (
    *ELEMENT_FEATURE_NAMES,
    "coordination_number", "bond_length_over_cell_scale",
    *(f"neighbour_{n}" for n in ELEMENT_FEATURE_NAMES),
    "bond_over_atomic_radii", "bond_over_ionic_radii", "neighbour_electronegativity_difference",
    "oxidation_product",
)
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
_NEIGHBOUR_CUTOFF = 1.5  # neighbours beyond 1.5 x a site's shortest bond carry weight < 1e-4 and are dropped
_CHUNK = 4096  # candidates featurised per vectorised block


@cache
def _element_row(z: int) -> np.ndarray:
    el = Element.from_Z(z)
    x = el.X
    r = el.atomic_radius or el.atomic_radius_calculated
    if x != x or r is None:
        what = "electronegativity" if x != x else "atomic radius"
        raise ValueError(f"element {el.symbol} has no {what} in pymatgen; the site ranker cannot score it")
    ri = float(el.average_ionic_radius) or float(r)
    ox = el.common_oxidation_states or el.oxidation_states or (0,)
    return np.array([x, r, ri, np.mean(ox), min(ox), max(ox), el.row, el.group, el.mendeleev_no or 0.0])


def site_element_table(zs: Sequence[int]) -> np.ndarray:
    """Raw element descriptors ``[len(zs), 9]`` (:data:`ELEMENT_FEATURE_NAMES`); ``ValueError`` names a missing one."""
    return np.stack([_element_row(int(z)) for z in zs]) if len(zs) else np.zeros((0, len(ELEMENT_FEATURE_NAMES)))


def unscorable_species(structure: Structure) -> list[str]:
    """Species of ``structure`` the ranker has no descriptors for (empty when it can be scored)."""
    bad = []
    for sp in structure.composition.elements:
        el = getattr(sp, "element", sp)
        try:
            _element_row(el.Z)
        except (ValueError, AttributeError):
            bad.append(str(sp))
    return bad


def _species_z(structure: Structure) -> np.ndarray:
    if not structure.is_ordered:
        raise ValueError("the site ranker needs ordered structures (one element per site)")
    zs = []
    for sp in structure.species:
        el = getattr(sp, "element", sp)
        if not isinstance(el, Element):
            raise ValueError(f"species {str(sp)!r} is not an element; the site ranker cannot score it")
        zs.append(el.Z)
    return np.array(zs, dtype=np.int64)


@dataclass
class _Geometry:
    """Weighted neighbour pairs of one structure (species-independent)."""

    n: int
    i: np.ndarray
    j: np.ndarray
    d: np.ndarray
    w: np.ndarray
    scale: float  # (volume per atom) ** (1/3)


def _geometry(structure: Structure) -> _Geometry:
    n = len(structure)
    scale = (structure.volume / n) ** (1 / 3)
    r = 2.0 * scale
    for _ in range(4):
        i, j, _, d = structure.get_neighbor_list(r)
        if len(i) and np.bincount(i, minlength=n).min() > 0:
            break
        r *= 1.5
    else:
        raise ValueError(f"no neighbours within {r:.1f} Å for some site of {structure.composition.reduced_formula}")
    dmin = np.full(n, np.inf)
    np.minimum.at(dmin, i, d)
    ratio = d / dmin[i]
    keep = ratio < _NEIGHBOUR_CUTOFF
    w = np.exp(1.0 - ratio[keep] ** 6)  # effective coordination weights (1 for the shortest bond)
    return _Geometry(n, i[keep].astype(np.int64), j[keep].astype(np.int64), d[keep], w, scale)


def _features(geoms: Sequence[_Geometry], which: np.ndarray, zs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Site features of candidates ``(geoms[which[c]], zs[c])``: ``[total_sites, F]`` and the candidate id per site."""
    sizes = np.array([geoms[g].n for g in which])
    site_off = np.concatenate([[0], np.cumsum(sizes)])
    z = np.concatenate(zs)
    uniq, inv = np.unique(z, return_inverse=True)
    e = site_element_table(uniq)[inv]  # [S, 9]
    pi = np.concatenate([geoms[g].i + site_off[c] for c, g in enumerate(which)])
    pj = np.concatenate([geoms[g].j + site_off[c] for c, g in enumerate(which)])
    pd = np.concatenate([geoms[g].d for g in which])
    pw = np.concatenate([geoms[g].w for g in which])
    scale = np.repeat([geoms[g].scale for g in which], sizes)
    n_sites = len(z)

    def wmean(values: np.ndarray) -> np.ndarray:
        v = values if values.ndim == 2 else values[:, None]
        out = np.stack([np.bincount(pi, pw * v[:, k], minlength=n_sites) for k in range(v.shape[1])], 1)
        return out / cn[:, None]

    cn = np.bincount(pi, pw, minlength=n_sites)
    bond = wmean(pd)[:, 0]
    neigh = wmean(e[pj])
    chem = wmean(np.stack([pd / (e[pi, 1] + e[pj, 1]), pd / (e[pi, 2] + e[pj, 2]), e[pj, 0] - e[pi, 0],
                           e[pi, 3] * e[pj, 3]], 1))
    x = np.concatenate([e, cn[:, None], (bond / scale)[:, None], neigh, chem], 1)
    return x.astype(np.float32), np.repeat(np.arange(len(which)), sizes)


def site_features(structures: Sequence[Structure]) -> tuple[np.ndarray, np.ndarray]:
    """Raw site features ``[total_sites, len(SITE_FEATURE_NAMES)]`` and the structure index of every site."""
    geoms = [_geometry(s) for s in structures]
    return _features(geoms, np.arange(len(structures)), [_species_z(s) for s in structures])


def _n_arrangements(z: np.ndarray) -> int:
    return math.factorial(len(z)) // math.prod(math.factorial(c) for c in np.unique(z, return_counts=True)[1])


def decoy_species(z: np.ndarray, max_decoys: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Distinct composition-preserving permutations of the site species ``z`` other than ``z`` itself.

    All of them when there are at most ``max_decoys`` (enumerated for cells up to 8 sites), else a random
    distinct sample of ``max_decoys``. Returns ``[n_decoys, len(z)]``.
    """
    z = np.asarray(z)
    rng = rng or np.random.default_rng(0)
    total = _n_arrangements(z) - 1
    if total <= 0:
        return np.zeros((0, len(z)), dtype=z.dtype)
    if len(z) <= 8 and total <= 20 * max_decoys:
        allp = np.array(sorted(set(itertools.permutations(z.tolist()))), dtype=z.dtype)
        allp = allp[(allp != z).any(1)]
        if len(allp) > max_decoys:
            allp = allp[np.sort(rng.choice(len(allp), max_decoys, replace=False))]
        return allp
    seen: set[tuple[int, ...]] = {tuple(z.tolist())}
    out = []
    for _ in range(50 * max_decoys):
        p = tuple(rng.permutation(z).tolist())
        if p not in seen:
            seen.add(p)
            out.append(p)
            if len(out) == min(max_decoys, total):
                break
    return np.array(out, dtype=z.dtype).reshape(-1, len(z))


def make_decoys(structure: Structure, max_decoys: int = 32, seed: int = 0) -> list[Structure]:
    """Copies of ``structure`` with species permuted between sites (same composition and geometry, not the real one)."""
    z = _species_z(structure)
    out = []
    for p in decoy_species(z, max_decoys, np.random.default_rng(seed)):
        s = structure.copy()
        for k, zk in enumerate(p):
            s.replace(k, Element.from_Z(int(zk)))
        out.append(s)
    return out


def _arrangement_hash(geom: _Geometry, zs: np.ndarray) -> np.ndarray:
    """Order-invariant hash per arrangement ``zs [P, n]`` of one geometry: sites by (element, coordination,
    strongly bonded neighbour elements). Symmetry-equivalent arrangements of one cell hash alike."""
    strong = geom.w > 0.5
    cn = np.round(np.bincount(geom.i, geom.w, minlength=geom.n)).astype(np.int64)
    mix = lambda a: (a * np.int64(0x9E3779B1) + np.int64(0x7F4A7C15)) ^ (a >> 7)  # noqa: E731
    zs = zs.astype(np.int64)
    neigh = np.zeros_like(zs)
    np.add.at(neigh, (slice(None), geom.i[strong]), mix(zs[:, geom.j[strong]] + 1000))
    site = mix(zs * 131 + cn[None] * 7919 + neigh)
    return mix(site).sum(1)


@dataclass
class SiteRankerConfig:
    """Hyper-parameters and feature standardisation of a :class:`SiteRanker`."""

    hidden: int = 64
    layers: int = 2
    feature_names: list[str] = field(default_factory=lambda: list(SITE_FEATURE_NAMES))
    energy_weight: float | None = None  # weight of -energy_per_atom (eV/atom) for "learned+energy", set by tuning
    training: dict = field(default_factory=dict)


class _Scorer(nn.Module):
    def __init__(self, n_in: int, hidden: int, layers: int) -> None:
        super().__init__()
        dims = [n_in] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*mods, nn.Linear(dims[-1], 1))
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))

    def forward(self, x: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
        s = self.net((x - self.mean) / self.std)[:, 0]
        tot = torch.zeros(n, dtype=s.dtype).index_add_(0, owner, s)
        cnt = torch.zeros(n, dtype=s.dtype).index_add_(0, owner, torch.ones_like(s))
        return tot / cnt


class SiteRanker:
    """Scores structures (higher = more likely the real site arrangement); see the module docstring."""

    def __init__(self, config: SiteRankerConfig | None = None) -> None:
        self.config = config or SiteRankerConfig()
        self.model = _Scorer(len(self.config.feature_names), self.config.hidden, self.config.layers)
        self.model.eval()

    def score_features(self, x: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x), torch.from_numpy(owner), n).numpy().astype(np.float64)

    def score_structures(self, structures: Sequence[Structure], chunk: int = _CHUNK) -> np.ndarray:
        """One score per structure (a batch of site features per ``chunk`` structures)."""
        out = [self.score_features(*site_features(structures[a:a + chunk]), len(structures[a:a + chunk]))
               for a in range(0, len(structures), chunk)]
        return np.concatenate(out) if out else np.zeros(0)

    def save_pretrained(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(p / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SiteRanker:
        p = Path(path)
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (p / n).is_file()]
        if missing:
            raise FileNotFoundError(f"site ranker folder {p} lacks {', '.join(missing)} "
                                    "(train one with train_site_ranker or benchmarks/explicit_transfer/run_ranker.py)")
        cfg = SiteRankerConfig(**json.loads((p / CONFIG_NAME).read_text()))
        if list(cfg.feature_names) != list(SITE_FEATURE_NAMES):
            raise ValueError(f"site ranker in {p} was trained on other features than this version computes")
        ranker = cls(cfg)
        ranker.model.load_state_dict(load_file(str(p / WEIGHTS_NAME)))
        return ranker


def _training_groups(structures: Sequence[Structure], geoms: list[_Geometry], max_decoys: int, seed: int,
                     forbid: dict[str, set[int]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Site features of every real structure and its distinct decoys; real is candidate 0 of each group.

    Decoys equivalent to the real arrangement (same arrangement hash) or to another real structure of the same
    composition (``forbid``: reduced formula -> hashes) are dropped. Returns features, site owner, candidate group.
    """
    rng = np.random.default_rng(seed)
    which, zs, group = [], [], []
    for g, (s, geom) in enumerate(zip(structures, geoms, strict=True)):
        z = _species_z(s)
        dec = decoy_species(z, max_decoys, rng)
        arr = np.concatenate([z[None], dec])
        h = _arrangement_hash(geom, arr)
        bad = set(forbid.get(s.composition.reduced_formula, ())) if forbid else set()
        bad.add(int(h[0]))
        _, first = np.unique(h, return_index=True)
        keep = [0] + [k for k in sorted(first) if k > 0 and int(h[k]) not in bad]
        for k in keep:
            which.append(g)
            zs.append(arr[k])
            group.append(g)
    x, owner = _features(geoms, np.array(which), zs)
    return x, owner, np.array(group)


def decoy_accuracy(ranker: SiteRanker, structures: Sequence[Structure], max_decoys: int = 32, seed: int = 0) -> dict:
    """How often each real structure outscores all its distinct decoys (top-1) and its mean rank (1 = best)."""
    geoms = [_geometry(s) for s in structures]
    x, owner, group = _training_groups(structures, geoms, max_decoys, seed)
    scores = ranker.score_features(x, owner, len(group))
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    rank = np.array([(seg[1:] >= seg[0]).sum() + 1 for seg in np.split(scores, starts[1:])])
    return {"n": len(structures), "top1": float((rank == 1).mean()), "mean_rank": float(rank.mean()),
            "mean_candidates": float(len(group) / len(structures))}


def train_site_ranker(
    structures: Sequence[Structure], output_dir: str | Path | None = None, max_decoys: int = 32, epochs: int = 20,
    batch_groups: int = 256, lr: float = 2e-3, hidden: int = 64, layers: int = 2, seed: int = 0,
    progress: bool = False,
) -> SiteRanker:
    """Fit a :class:`SiteRanker` on real structures vs their site-swapped decoys (softmax over each group)."""
    if len(structures) < 2:
        raise ValueError("train_site_ranker needs at least 2 structures")
    torch.manual_seed(seed)
    geoms = [_geometry(s) for s in structures]
    forbid: dict[str, set[int]] = {}
    for s, geom in zip(structures, geoms, strict=True):
        forbid.setdefault(s.composition.reduced_formula, set()).add(int(_arrangement_hash(geom, _species_z(s)[None])[0]))
    forbid = {k: v for k, v in forbid.items() if len(v) > 1}
    x, owner, group = _training_groups(structures, geoms, max_decoys, seed, forbid)
    n_cand = int(owner.max()) + 1
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    sizes = np.diff(np.r_[starts, len(group)])
    ranker = SiteRanker(SiteRankerConfig(hidden=hidden, layers=layers, training={
        "n_structures": len(structures), "n_candidates": n_cand, "max_decoys": max_decoys, "epochs": epochs,
        "batch_groups": batch_groups, "lr": lr, "seed": seed, "loss": "softmax over real + decoys"}))
    model = ranker.model
    xt = torch.from_numpy(x)
    model.mean.copy_(xt.mean(0))
    model.std.copy_(xt.std(0).clamp_min(1e-6))
    site_start = np.r_[0, np.cumsum(np.bincount(owner, minlength=n_cand))]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * math.ceil(len(starts) / batch_groups))
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(starts))
        total = 0.0
        for b in range(0, len(order), batch_groups):
            gsel = order[b:b + batch_groups]
            cands = np.concatenate([np.arange(starts[g], starts[g] + sizes[g]) for g in gsel])
            sites = np.concatenate([np.arange(site_start[c], site_start[c + 1]) for c in cands])
            local = np.repeat(np.arange(len(cands)), site_start[cands + 1] - site_start[cands])
            scores = model(xt[sites], torch.from_numpy(local), len(cands))
            mat = torch.full((len(gsel), int(sizes[gsel].max())), -torch.inf)
            row = np.repeat(np.arange(len(gsel)), sizes[gsel])
            col = np.concatenate([np.arange(sizes[g]) for g in gsel])
            mat[torch.from_numpy(row), torch.from_numpy(col)] = scores
            loss = -torch.log_softmax(mat, 1)[:, 0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(gsel)
        if progress:
            print(f"site ranker epoch {epoch + 1}/{epochs}: loss {total / len(starts):.4f}", flush=True)
    model.eval()
    ranker.config.training["final_loss"] = total / len(starts)
    if output_dir is not None:
        ranker.save_pretrained(output_dir)
    return ranker
