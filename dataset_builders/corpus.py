"""Formula corpora for masked-language-model pretraining, deduplicated by canonical composition.

Sources (``--source``, repeatable):

* ``mp_transport`` — the Materials Project transport database bundled in the matminer wheel
  (47,737 compounds; Ricci et al. 2017), see :func:`transport_formulas`;
* ``matbench`` (all 13 tasks) or ``matbench=<task>`` — MatBench v0.1 formulas;
* ``llm4mat=<folder>`` — every split of an LLM4Mat-Bench dataset folder;
* ``file=<path>`` — any CSV/parquet with a ``formula`` column.

Leakage guard (``--exclude``, repeatable): formulas whose canonical composition occurs in a benchmark
test split are removed: ``matbench=<task>@<fold>`` (test fold k), ``matbench=<task>`` (all five test
folds, i.e. the whole task), ``llm4mat=<folder>`` (its ``test.csv``; ``@validation`` picks another split),
``file=<path>``. The card and ``corpus_metadata.json`` record every exclusion and its size, and
``excluded_formulas.txt`` lists the removed formulas.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .common import BadInputError, Rejects, canonicalize_formulas, write_card, write_json, write_parquet
from .tables import TableError, read_table

__all__ = ["transport_formulas", "source_formulas", "exclusion_formulas", "build_corpus"]


def transport_formulas() -> pd.DataFrame:
    """The MP transport database from the installed matminer wheel: ``mp_id, formula`` + transport columns."""
    import matminer

    path = Path(matminer.__file__).parent / "utils" / "data_files" / "mp_transport" / "transport_database.tar.xz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall matminer (it ships the MP transport database)")
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".csv"))
        raw = tar.extractfile(member)
        assert raw is not None
        frame = read_table(io.BytesIO(raw.read()), name=member.name).frame
    frame = frame.rename(columns={"pretty_formula": "formula"})
    frame.attrs["path"] = f"{path}:{member.name}"
    return frame


def _read_table(path: Path, text_columns: tuple[str, ...] = ("formula",)) -> pd.DataFrame:
    """A corpus / exclusion table through the one reader (bad rows raise, naming file, line and reason)."""
    try:
        return read_table(path, text_columns=text_columns).frame
    except TableError as err:
        raise BadInputError(str(err)) from None


def source_formulas(spec: str) -> tuple[pd.DataFrame, str]:
    """Raw ``formula``/``id`` rows of one source spec and the file they came from."""
    kind, _, value = spec.partition("=")
    if kind == "mp_transport":
        frame = transport_formulas()
        return pd.DataFrame({"id": frame["mp_id"].astype(str), "formula": frame["formula"]}), frame.attrs["path"]
    if kind == "matbench":
        from .matbench import TASKS, load_task_frame
        from .paths import matbench_dir

        tasks = [value] if value else list(TASKS)
        parts = [load_task_frame(t)[["id", "formula"]] for t in tasks]
        return pd.concat(parts, ignore_index=True), str(matbench_dir())
    if kind == "llm4mat":
        from .llm4mat import FORMULA_COLUMNS, SPLITS, pick_column

        folder = Path(value)
        parts = []
        for split in SPLITS:
            frame = _read_table(folder / f"{split}.csv", ())
            col = pick_column(list(frame.columns), FORMULA_COLUMNS)
            if col is None:
                raise BadInputError(f"{folder / f'{split}.csv'}: missing formula column")
            parts.append(pd.DataFrame({"id": [f"{split}-{i}" for i in range(len(frame))], "formula": frame[col]}))
        return pd.concat(parts, ignore_index=True), str(folder)
    if kind == "file":
        frame = _read_table(Path(value))
        if "formula" not in frame.columns:
            raise BadInputError(f"{value}: missing column 'formula' (has {list(frame.columns)})")
        ids = frame["id"].astype(str) if "id" in frame.columns else pd.Series(np.arange(len(frame)).astype(str))
        return pd.DataFrame({"id": ids, "formula": frame["formula"]}), value
    raise ValueError(f"unknown corpus source {spec!r}; use mp_transport, matbench[=task], llm4mat=<folder>, file=<path>")


def exclusion_formulas(spec: str) -> set[str]:
    """Canonical formulas of a benchmark test split named by ``spec`` (see module docstring)."""
    kind, _, value = spec.partition("=")
    target, _, part = value.partition("@")
    if kind == "matbench":
        from .matbench import load_task_frame

        frame = load_task_frame(target)
        if part:
            if not part.isdigit() or int(part) not in range(5):
                raise ValueError(f"{spec!r}: the fold after '@' must be 0-4")
            frame = frame[frame["test_fold"] == int(part)]
        formulas = frame["formula"]
    elif kind == "llm4mat":
        from .llm4mat import FORMULA_COLUMNS, pick_column

        path = Path(target) / f"{part or 'test'}.csv"
        frame = _read_table(path, ())
        col = pick_column(list(frame.columns), FORMULA_COLUMNS)
        if col is None:
            raise BadInputError(f"{path}: missing formula column")
        formulas = frame[col].dropna()
    elif kind == "file":
        formulas = _read_table(Path(target))["formula"].dropna()
    else:
        raise ValueError(f"unknown exclusion {spec!r}; use matbench=<task>[@fold], llm4mat=<folder>[@split], file=<path>")
    canon, _ = canonicalize_formulas(formulas)
    return {c for c in canon if c is not None}


def build_corpus(
    sources: list[str],
    out: str | Path,
    exclude: list[str] | None = None,
    validation_fraction: float = 0.0,
    seed: int = 0,
    on_bad: str = "error",
) -> dict[str, Any]:
    """Build a deduplicated formula corpus folder (``formula, source, n_entries``); returns its metadata."""
    start = time.perf_counter()
    out = Path(out)
    rejects = Rejects(on_bad)
    parts = []
    for spec in sources:
        raw, path = source_formulas(spec)
        canon, bad = canonicalize_formulas(raw["formula"])
        if bad:
            rows = sorted(bad)
            rejects.add(path, rows, raw["id"].iloc[rows].tolist(), [bad[r] for r in rows], stage=spec)
        ok = ~pd.isna(canon)
        parts.append(pd.DataFrame({"formula": canon[ok], "source": spec}))
    allrows = pd.concat(parts, ignore_index=True)
    grouped = allrows.groupby("formula", sort=False).agg(
        source=("source", lambda s: ",".join(sorted(set(s)))), n_entries=("source", "size")
    )
    corpus = grouped.reset_index()
    exclusions = []
    excluded_all: set[str] = set()
    for spec in exclude or []:
        banned = exclusion_formulas(spec)
        hit = corpus["formula"].isin(banned).to_numpy()
        exclusions.append({"spec": spec, "test_formulas": len(banned), "removed_from_corpus": int(hit.sum())})
        excluded_all.update(corpus["formula"][hit])
        corpus = corpus.loc[~hit].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(corpus))
    n_val = int(round(validation_fraction * len(corpus)))
    splits = {"train": corpus.iloc[np.sort(order[n_val:])]}
    if n_val:
        splits["validation"] = corpus.iloc[np.sort(order[:n_val])]
    files = {}
    for split, frame in splits.items():
        files[split] = f"data/{split}.parquet"
        write_parquet(frame.reset_index(drop=True), out / files[split])
    (out / "excluded_formulas.txt").write_text("".join(f"{f}\n" for f in sorted(excluded_all)))
    meta = {
        "sources": sources,
        "raw_rows": int(len(allrows) + len(rejects)),
        "unique_formulas_before_exclusion": int(len(grouped)),
        "exclusions": exclusions,
        "rows": {s: len(f) for s, f in splits.items()},
        "rejected_rows": len(rejects),
        "seed": seed,
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    rejects.write(out)
    write_json(meta, out / "corpus_metadata.json")
    write_card(out, {"default": files}, pretty_name="CrossMat formula corpus", body=_card_body(meta),
               task_categories=("fill-mask",), default_config="default")  # fmt: skip
    return meta


def _card_body(meta: dict[str, Any]) -> str:
    excl = "\n".join(
        f"- `{e['spec']}`: {e['test_formulas']} test formulas, {e['removed_from_corpus']} removed from the corpus"
        for e in meta["exclusions"]
    )
    return f"""
# CrossMat formula corpus (masked-language-model pretraining)

Built by `python -m crossmat.dataset_builders corpus` from: {", ".join(f"`{s}`" for s in meta["sources"])}.
Rows: {meta["rows"]}. Each row is one canonical composition (`tokenization.canonical_formula`: groups and
hydrates expanded, integer amounts reduced, elements ordered by electronegativity); `source` lists the
sources it came from and `n_entries` how many raw rows mapped to it ({meta["raw_rows"]} raw rows,
{meta["unique_formulas_before_exclusion"]} unique before exclusion, {meta["rejected_rows"]} rejected).

## Leakage guard
Formulas in these benchmark test splits were removed (list in `excluded_formulas.txt`):
{excl or "- none (no --exclude given): do not evaluate on a benchmark whose test formulas may be in here."}

## Provenance and licence
- `mp_transport`: Materials Project transport database bundled with matminer (Ricci et al., Sci. Data 4,
  170085, 2017; CC BY 4.0).
- `matbench`: MatBench v0.1 (Dunn et al., npj Comput. Mater. 6, 138, 2020).
- `llm4mat`: LLM4Mat-Bench (Rubungo et al., arXiv:2411.00177).
Compositions only; each source keeps its licence.
"""
