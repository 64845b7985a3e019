"""Batch generation job: JSON-lines output, one record per input row, resumable (finished rows are never redone)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .base import GenerationBatch, StructureGenerator, formula_rows
from .potentials import POTENTIALS
from .ranking import KnownStructures, distinct_first, known_index, novel_first, rank_candidates, written_order_first
from .site_ranker import SiteRanker

__all__ = ["generate_to_jsonl", "read_jsonl"]


def read_jsonl(path: str | Path, bad: list[tuple[int, str]] | None = None) -> list[dict[str, Any]]:
    """Records of a job file. A line that is not a JSON object (a truncated last line from an interrupted
    run, a corrupt line) is skipped and, when ``bad`` is given, appended to it as ``(line number, reason)``;
    the lines after it still load."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for number, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if bad is not None:
                bad.append((number, f"line {number} is not valid JSON ({err.msg})"))
            continue
        if not isinstance(rec, dict) or "row" not in rec:
            if bad is not None:
                bad.append((number, f"line {number} is not a generate record (no 'row')"))
            continue
        out.append(rec)
    return out


def generate_to_jsonl(
    generator: StructureGenerator, formulas: Sequence[object] | str, output: str | Path, n_candidates: int = 5,
    chunk_size: int = 64, rank: str | None = None, relax_steps: int = 0, ids: Sequence[object] | None = None,
    progress: bool = True, shard: tuple[int, int] | None = None, potential: str = "chgnet",
    ranker: SiteRanker | str | Path | None = None, distinct: bool = False, known: KnownStructures | None = None,
    site_order: str = "composition",
) -> dict[str, int]:
    """Generate (and optionally rank) in chunks, appending records

    ``{"row", "id", "formula", "candidates": [{"cif", "score", "source", "metadata"}], "failure": reason|null}``.
    ``rank``: ``None`` (the generator's order), ``energy`` (``potential``'s energy per atom; ``chgnet`` /
    ``matgl-tensornet`` as a value mean energy with that potential), ``learned`` or ``learned+energy``
    (``ranker``: a :class:`SiteRanker` or its folder); see :func:`rank_candidates`. ``distinct``: then put one
    candidate per distinct structure first, repeats after (:func:`distinct_first`). ``known``: structures the user
    already has; candidates that reproduce one of them go after the others, flagged ``metadata.known_as``
    (:func:`novel_first`, applied before ``distinct``); the returned counts then include ``only_known_candidates``,
    the formulas for which every candidate reproduces a known structure. ``site_order="written"``: for formulas
    written A B X3 (the perovskite convention), candidates with the first written cation on the A site go first
    (:func:`written_order_first`, after ``known`` and before ``distinct``); ``"composition"`` ignores the written
    order.
    Rows already in ``output`` are skipped, so an interrupted job resumes where it stopped.
    ``shard=(index, count)``: this process handles rows ``index::count`` (one output file per process).
    """
    if site_order not in ("composition", "written"):
        raise ValueError(f"site_order must be 'composition' or 'written', not {site_order!r}")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done_records = read_jsonl(out)
    if done_records and out.read_text() and not out.read_text().endswith("\n"):  # drop a torn last line
        out.write_text("".join(json.dumps(r) + "\n" for r in done_records))
    done = {r["row"] for r in done_records}
    formulas = formula_rows(formulas)
    mine = range(len(formulas)) if shard is None else range(shard[0], len(formulas), shard[1])
    todo = [i for i in mine if i not in done]
    stats = {"skipped_done": len(done), "generated": 0, "failed": 0}
    index = known_index(known) if known is not None else None
    if index is not None:
        stats["only_known_candidates"] = 0  # formulas whose every candidate reproduces a known structure
    bar = tqdm(total=len(todo), desc=f"generate ({generator.name})", disable=not progress)
    for start in range(0, len(todo), chunk_size):
        rows = todo[start : start + chunk_size]
        batch: GenerationBatch = generator.generate([formulas[i] for i in rows], n_candidates)
        if rank:
            method, pot = ("energy", rank) if rank in POTENTIALS else (rank, potential)
            batch = rank_candidates(batch, potential=pot, relax_steps=relax_steps, method=method, ranker=ranker)
        if index is not None:
            batch = novel_first(batch, index)
            stats["only_known_candidates"] += sum(bool(c) and "known_as" in c[0].metadata for c in batch)
        if site_order == "written":
            batch = written_order_first(batch, [formulas[i] for i in rows])
        if distinct:
            batch = distinct_first(batch)
        with out.open("a") as f:
            for j, row in enumerate(rows):
                fail = [x.reason for x in batch.failures if x.row == j]
                rec = {"row": row, "id": None if ids is None else str(ids[row]), "formula": str(formulas[row]),
                       "candidates": [c.to_dict() for c in batch[j]], "failure": "; ".join(fail) if fail else None}
                stats["generated" if batch[j] else "failed"] += 1
                f.write(json.dumps(rec) + "\n")
        bar.update(len(rows))
    bar.close()
    return stats
