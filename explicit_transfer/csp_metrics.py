"""Crystal-structure-prediction metrics as in CDVAE/DiffCSP: match rate and normalised RMSE with StructureMatcher."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

__all__ = ["CSP_MATCHER_KWARGS", "csp_matcher", "match_rms", "rms_table", "metrics_from_rms", "csp_metrics"]

CSP_MATCHER_KWARGS = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}


def csp_matcher() -> StructureMatcher:
    """StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3), the CDVAE/DiffCSP evaluation settings."""
    return StructureMatcher(**CSP_MATCHER_KWARGS)


def match_rms(pred: Structure, true: Structure, matcher: StructureMatcher | None = None) -> float | None:
    """Normalised RMS displacement if ``pred`` matches ``true``, else ``None`` (errors count as no match)."""
    matcher = matcher or csp_matcher()
    try:
        res = matcher.get_rms_dist(pred, true)
    except Exception:  # noqa: BLE001 - a degenerate candidate is a non-match, never a crash
        return None
    return None if res is None else float(res[0])


def rms_table(candidates: Sequence[Sequence[Structure]], truths: Sequence[Structure], kmax: int = 20,
              progress: bool = False) -> np.ndarray:
    """``(targets, kmax)`` normalised RMS of each target's first ``kmax`` candidates (``inf``: no match / missing)."""
    matcher = csp_matcher()
    rms = np.full((len(truths), kmax), np.inf)
    for i, (cands, true) in enumerate(tqdm(list(zip(candidates, truths, strict=True)), desc="StructureMatcher",
                                           disable=not progress)):
        for j, s in enumerate(list(cands)[:kmax]):
            r = match_rms(s, true, matcher)
            if r is not None:
                rms[i, j] = r
    return rms


def metrics_from_rms(rms: np.ndarray, ks: Sequence[int] = (1, 20)) -> dict[str, float]:
    """Match rate@k and mean RMSE of matches@k from a :func:`rms_table` (best of the first k per target)."""
    out: dict[str, float] = {"n_targets": float(len(rms))}
    for k in ks:
        best = rms[:, :k].min(axis=1) if len(rms) else np.zeros(0)
        ok = np.isfinite(best)
        out[f"match_rate@{k}"] = float(ok.mean()) if len(rms) else 0.0
        out[f"rmse@{k}"] = float(best[ok].mean()) if ok.any() else float("nan")
    return out


def csp_metrics(
    candidates: Sequence[Sequence[Structure]], truths: Sequence[Structure], ks: Sequence[int] = (1, 20),
    progress: bool = False,
) -> dict[str, float]:
    """Match rate (fraction of targets with any matching candidate among the first k) and mean RMSE of matches.

    For each target the best (lowest) RMS among the first k candidates is used, as in DiffCSP's n=20 protocol.
    """
    return metrics_from_rms(rms_table(candidates, truths, max(ks), progress), ks)
