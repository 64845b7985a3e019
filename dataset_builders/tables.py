"""The one table reader: every user or benchmark table (``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``, ``.json``,
text formats optionally ``.gz`` / ``.bz2`` / ``.xz`` / ``.zst``) is read here, whole (:func:`read_table`) or in
chunks (:func:`iter_table`).

Rules, the same for every format and caller:

* **compression** follows the suffix (``x.csv.gz``, ``x.jsonl.xz``, ...);
* **missing values**: in every column except ``text_columns``, a cell holding one of :data:`NA_VALUES`
  (pandas' list: empty, ``NA``, ``NaN``, ``null``, ``None``, ...) or a JSON / parquet null is missing. The
  ``text_columns`` (e.g. the formula column; ``"all"`` for every column) are kept exactly as written: ``NA``,
  ``None`` and empty cells stay text, a NUL byte stays in the cell, no number guessing;
* **bad rows** (a CSV row with more or fewer fields than the header, a line holding bytes that are not UTF-8, a
  JSON line that is not an object) are never dropped silently. ``on_bad="error"`` raises :class:`TableError`
  naming the file, line, data row and reason; ``"report"`` leaves them out and returns them in
  :attr:`Table.rejected`; ``"keep"`` keeps them (a ragged row padded / cut to the header, undecodable bytes
  replaced by U+FFFD) and reports them too.

Rows are numbered from 0 in data order (blank lines and the header do not count); ``line`` is the
1-based physical line where the row starts.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gc
import gzip
import io
import json
import lzma
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

__all__ = ["NA_VALUES", "ON_BAD", "BadRow", "Chunk", "Table", "TableError", "count_rows", "iter_table", "formula_column_hint", "missing_column_hint", "read_header", "read_table", "similar_column", "table_format"]

NA_VALUES: frozenset[str] = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
     "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
)  # pandas' default missing-value strings
OnBad = Literal["error", "report", "keep"]
ON_BAD: tuple[str, ...] = ("error", "report", "keep")
TextColumns = Iterable[str] | Literal["all"]
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
            ".json": "json"}
_SURROGATE = re.compile("[\udc80-\udcff]")
_UNDECODABLE = [0]  # bumped by the error handler below: rows need no UTF-8 check until it moves


def _flag_undecodable(err: UnicodeError) -> tuple[str, int]:
    _UNDECODABLE[0] += 1
    return codecs.lookup_error("surrogateescape")(err)


codecs.register_error("crossmat_tables", _flag_undecodable)


class TableError(ValueError):
    """A table that cannot be read as asked; the message names the file and, for a bad row, its line, row
    and the reason."""


@dataclass(frozen=True)
class BadRow:
    """A row that is not well formed: ``row`` (0-based data row), ``line`` (1-based), ``kind`` (``ragged``,
    ``encoding``, ``json``) and the reason."""

    row: int
    line: int
    kind: str
    reason: str

    def describe(self) -> str:
        return f"line {self.line} (data row {self.row}) {self.reason}"


@dataclass
class Table:
    """A table read by :func:`read_table`: the frame and the rows left out (or kept) as bad."""

    frame: pd.DataFrame
    path: str
    rejected: list[BadRow] = field(default_factory=list)

    def report(self, limit: int = 10) -> str:
        """One line per bad row (the first ``limit``), or "" when there is none."""
        lines = [f"{self.path}: {b.describe()}" for b in self.rejected[:limit]]
        if len(self.rejected) > limit:
            lines.append(f"{self.path}: ... {len(self.rejected) - limit} more bad row(s)")
        return "\n".join(lines)

    def rejected_frame(self) -> pd.DataFrame:
        """The bad rows as a frame (``file, row, line, kind, reason``), e.g. for a ``rejected_rows.csv``."""
        return pd.DataFrame([{"file": self.path, "row": b.row, "line": b.line, "kind": b.kind, "reason": b.reason}
                             for b in self.rejected], columns=["file", "row", "line", "kind", "reason"])


def table_format(path: str | Path) -> str:
    """``csv``, ``tsv``, ``parquet``, ``jsonl`` or ``json`` from the file name (a compression suffix is skipped)."""
    name = Path(path).name.lower()
    for comp in _COMPRESSION:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    fmt = _FORMATS.get(Path(name).suffix)
    if fmt is None or (fmt == "parquet" and name != Path(path).name.lower()):
        sheet = Path(name).suffix in (".xlsx", ".xls", ".xlsm", ".ods", ".numbers")
        raise TableError(f"{path}: unknown file type; use .csv, .tsv, .jsonl or .json (optionally .gz/.bz2/.xz/.zst) "
                         "or .parquet" + ("; a spreadsheet is not read directly: save the sheet as CSV (UTF-8) "
                                          "from your spreadsheet program" if sheet else ""))
    return fmt


def _open_text(path: Path, fileobj: IO[bytes] | None = None) -> IO[str]:
    """The file (or ``fileobj``, named ``path``) as text, decompressed by suffix; undecodable bytes become lone
    surrogates (checked per row)."""
    opts: dict[str, Any] = dict(encoding="utf-8", errors="crossmat_tables", newline="")
    name = path.name.lower()
    src: Any = fileobj if fileobj is not None else path
    if name.endswith(".gz"):
        return gzip.open(src, "rt", **opts)
    if name.endswith(".bz2"):
        return bz2.open(src, "rt", **opts)
    if name.endswith(".xz"):
        return lzma.open(src, "rt", **opts)
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise TableError(f"{path}: reading .zst needs the 'zstandard' package") from None
        raw = fileobj if fileobj is not None else open(path, "rb")
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), **opts)
    return io.TextIOWrapper(fileobj, **opts) if fileobj is not None else open(path, **opts)


def _unique_names(names: Sequence[str]) -> list[str]:
    """Column names made unique the way pandas does (``x``, ``x.1``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


def _bad_bytes(cells: Iterable[Any]) -> str | None:
    for cell in cells:
        m = _SURROGATE.search(cell) if isinstance(cell, str) else None
        if m:
            return repr(m.group().encode("utf-8", "surrogateescape"))
    return None


def _replace_bad_bytes(cell: Any) -> Any:
    """Undecodable bytes (read as lone surrogates) -> U+FFFD, for a bad row that ``on_bad='keep'`` keeps."""
    if isinstance(cell, str) and _SURROGATE.search(cell):
        return cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return cell


class _Rows:
    """Data rows of a text table as ``(row number, row)``, bad ones handled by ``on_bad``; the one parser of the
    whole and the chunked read."""

    def __init__(self, path: Path, fmt: str, on_bad: str) -> None:
        if on_bad not in ON_BAD:
            raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
        self.path, self.fmt, self.on_bad = path, fmt, on_bad
        self.rejected: list[BadRow] = []
        self.names: list[str] = []

    def bad(self, row: int, line: int, kind: str, reason: str) -> bool:
        """Record a bad row; raise for ``on_bad='error'``; return whether the row is kept."""
        bad = BadRow(row, line, kind, reason)
        if self.on_bad == "error":
            raise TableError(f"{self.path} {bad.describe()}")
        self.rejected.append(bad)
        return self.on_bad == "keep"

    def csv_rows(self, fh: IO[str]) -> Iterator[tuple[int, list[str]]]:
        reader = csv.reader(fh, delimiter="\t" if self.fmt == "tsv" else ",", strict=True)
        seen = _UNDECODABLE[0]
        try:
            header = next(reader, None)
            while header == []:
                header = next(reader, None)
            if header is None:
                raise TableError(f"{self.path} is empty (no header row)")
            if _bad_bytes(header):
                raise TableError(f"{self.path} line 1 (the header) is not UTF-8 text; save the file as UTF-8")
            if self.fmt == "csv" and len(header) == 1 and ";" in header[0]:
                raise TableError(f"{self.path} line 1 (the header) {header[0][:60]!r} is separated by semicolons, as "
                                 "some spreadsheet programs write CSV; save it with commas as separators (and '.' as "
                                 "the decimal point)")
            self.names = _unique_names(header)
            width = len(header)
            line, n = reader.line_num + 1, 0
            for row in reader:
                start, line = line, reader.line_num + 1
                if not row:
                    continue
                keep = True
                if len(row) != width:
                    keep = self.bad(n, start, "ragged", f"has {len(row)} fields, the header {width} (a ragged row; "
                                                        "quote cells that hold the separator)")
                    row = (row + [""] * width)[:width]
                if keep and _UNDECODABLE[0] != seen:  # a byte was not UTF-8 somewhere from here on: check rows
                    byte = _bad_bytes(row)
                    if byte:
                        keep = self.bad(n, start, "encoding", f"is not UTF-8 text (byte {byte}); save it as UTF-8")
                        row = [_replace_bad_bytes(c) for c in row]
                if keep:
                    yield n, row
                n += 1
        except csv.Error as err:
            raise TableError(f"{self.path} is not a readable CSV file: line {reader.line_num}: {err}") from None

    def json_records(self, fh: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.fmt == "json":
            try:
                data = json.load(fh)
            except json.JSONDecodeError as err:
                raise TableError(f"{self.path} is not valid JSON (line {err.lineno}: {err.msg})") from None
            if not isinstance(data, list):
                raise TableError(f"{self.path}: expected a JSON list of objects (one per row)")
            items: Iterable[tuple[int, Any]] = ((0, rec) for rec in data)
        else:
            items = ((line, text) for line, text in enumerate(fh, start=1) if text.strip())
        for n, (line, item) in enumerate(items):
            if self.fmt == "jsonl":
                try:
                    item = json.loads(item)
                except json.JSONDecodeError as err:
                    if self.bad(n, line, "json", f"is not valid JSON ({err.msg})"):
                        yield n, {}
                    continue
            if not isinstance(item, dict):
                keep, item = self.bad(n, line, "json", f"is not a JSON object ({type(item).__name__})"), {}
            else:
                byte = _bad_bytes(item.values())
                if byte:
                    keep = self.bad(n, line, "encoding", f"is not UTF-8 text (byte {byte}); save it as UTF-8")
                    item = {k: _replace_bad_bytes(v) for k, v in item.items()}
                else:
                    keep = True
            if keep:
                yield n, item

    def rows(self, fh: IO[str]) -> Iterator[tuple[int, Any]]:
        return self.csv_rows(fh) if self.fmt in ("csv", "tsv") else self.json_records(fh)

    def frame(self, items: list[Any], text_columns: TextColumns) -> pd.DataFrame:
        """Rows -> frame with the shared missing-value and type rules."""
        if self.fmt in ("csv", "tsv"):
            nul = any("\x00" in c for r in items for c in r)
            return _frame_from_rows(items, self.names, _text_set(text_columns, self.names), nul)
        frame = pd.DataFrame.from_records(items)
        return _apply_na(frame, _text_set(text_columns, list(frame.columns)))


def _text_set(text_columns: TextColumns, names: Sequence[str]) -> set[str]:
    return set(names) if text_columns == "all" else set(text_columns) & set(names)


def _frame_from_rows(rows: list[list[str]], names: list[str], text: set[str], nul: bool) -> pd.DataFrame:
    """CSV rows -> frame: ``text`` columns as written, the others with :data:`NA_VALUES` missing and pandas'
    number inference (the rows go through ``pandas.read_csv``, so it is the same for every caller)."""
    if set(names) <= text:
        return pd.DataFrame(rows, columns=names, dtype=object) if rows else pd.DataFrame(columns=names, dtype=object)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    writer.writerows(rows)
    buf.seek(0)
    na = {c: sorted(NA_VALUES) for c in names if c not in text}
    opts: dict[str, Any] = {"engine": "python"} if nul else {"engine": "c", "low_memory": False}
    return pd.read_csv(buf, dtype={c: str for c in text} or None, keep_default_na=False, na_values=na, **opts)


def _apply_na(frame: pd.DataFrame, text: set[str]) -> pd.DataFrame:
    """Typed formats (JSON, parquet): :data:`NA_VALUES` strings in non-text columns become missing."""
    for col in frame.columns:
        if col in text or frame[col].dtype != object:
            continue
        try:
            hit = frame[col].isin(NA_VALUES)
        except TypeError:  # unhashable cells (arrays, nested records): no NA strings to look for
            continue
        if hit.any():
            frame[col] = frame[col].mask(hit, np.nan)
    return frame


def similar_column(wanted: str, names: Sequence[str]) -> str:
    """`` (did you mean 'X'?)`` for a column that differs from ``wanted`` only in case, spaces or underscores, or is
    a close spelling (``difflib``); else ``""``."""
    import difflib

    def norm(name: object) -> str:
        return "".join(ch for ch in str(name).casefold() if ch not in " _-")

    same = [n for n in names if norm(n) == norm(wanted)]
    close = same or difflib.get_close_matches(str(wanted), [str(n) for n in names], n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def formula_column_hint(frame: pd.DataFrame, wrong: str, option: str = "--formula-column {}") -> str:
    """`` (column 'X' holds formulas: --formula-column X)`` for the first other text column whose first 20 values
    mostly read as formulas (tables that name theirs ``formula_pretty`` or ``composition``); else ``""``.
    ``option`` is how the caller's user names the column (a recipe: ``data.formula_column={}``)."""
    from crossmat.tokenization.formula_grammar import check_formula

    for col in frame.columns:
        values = frame[col].dropna().head(20).tolist()
        if col == wrong or not values or not all(isinstance(v, str) for v in values):
            continue
        if sum(check_formula(v) == "" for v in values) >= 0.8 * len(values):
            return f" (column {col!r} holds formulas: {option.format(col)})"
    return ""


def missing_column_hint(wanted: str, names: Sequence[str], formula_column: str | None = None,
                        sample: pd.DataFrame | Callable[[], pd.DataFrame] | None = None,
                        option: str = "--formula-column {}") -> str:
    """What to say about a missing column ``wanted``: the near miss among ``names`` (:func:`similar_column`), else,
    when it is the ``formula_column``, the column of ``sample`` (the first rows, or a function giving them, called
    only then) that holds formulas (:func:`formula_column_hint`); else ``""``."""
    near = similar_column(wanted, names)
    if near or wanted != formula_column or sample is None:
        return near
    return formula_column_hint(sample() if callable(sample) else sample, wanted, option)


def _sample_rows(path: str | Path, n: int = 20) -> pd.DataFrame:
    """The first ``n`` rows of a table as text (streamed: a large file is not read), or an empty frame."""
    try:
        return next((chunk.frame for chunk in iter_table(path, chunk_size=n, text_columns="all", on_bad="keep")),
                    pd.DataFrame())
    except TableError:
        return pd.DataFrame()


def _check_columns(path: Path, names: Sequence[str], required: Sequence[str], hint: str,
                   formula_column: str | None = None, sample: Callable[[], pd.DataFrame] | None = None) -> None:
    """Raise naming the missing columns, the near miss, or (a missing ``formula_column``) the column of ``sample()``
    (the first rows) that holds formulas."""
    missing = [c for c in required if c not in names]
    if missing:
        noun = "column" if len(missing) == 1 else "columns"
        shown = missing[0] if len(missing) == 1 else missing
        near = missing_column_hint(missing[0], names, formula_column, sample)
        raise TableError(f"{noun} {shown!r} not found in {path}{near}; columns are {list(names)}{hint}")


def _checked_path(path: str | Path) -> tuple[Path, str]:
    p = Path(path).expanduser()
    fmt = table_format(p)
    if not p.is_file():
        raise TableError(f"input file {p} does not exist" if not p.exists() else f"{p} is not a file")
    return p, fmt


def _gc_paused() -> Any:
    """Pause the cyclic GC while row lists pile up (they hold no cycles; GC passes over a large heap made
    reading several times slower)."""

    class _Pause:
        def __enter__(self) -> None:
            self.enabled = gc.isenabled()
            gc.disable()

        def __exit__(self, *exc: object) -> None:
            if self.enabled:
                gc.enable()

    return _Pause()


def read_table(
    path: str | Path | IO[bytes],
    *,
    name: str | None = None,
    text_columns: TextColumns = (),
    columns: Sequence[str] | None = None,
    required: Sequence[str] = (),
    on_bad: OnBad = "error",
    formula_column: str | None = None,
) -> Table:
    """Read a whole table (see the module docstring for the rules). ``columns``: keep only these (all must
    exist); ``required``: columns that must exist (a missing ``formula_column`` among them names the column that
    holds formulas); ``path`` may be a binary file object, ``name`` (its file name) then gives the format. Raises
    :class:`TableError` (file, line, row, reason)."""
    fileobj: IO[bytes] | None = None
    if hasattr(path, "read"):
        fileobj = path  # type: ignore[assignment]
        p = Path(name or str(getattr(path, "name", "table")))
        fmt = table_format(p)
    else:
        p, fmt = _checked_path(path)  # type: ignore[arg-type]
    rows = _Rows(p, fmt, on_bad)
    if fmt == "parquet":
        frame = _read_parquet(fileobj if fileobj is not None else p, columns, p)
        frame = _apply_na(frame, _text_set(text_columns, list(frame.columns)))
        names = list(frame.columns)
    else:
        try:
            with _open_text(p, fileobj) as fh, _gc_paused():
                items = [item for _, item in rows.rows(fh)]
                frame = rows.frame(items, text_columns)
        except EOFError as err:  # a truncated .gz / .bz2 / .xz
            raise TableError(f"{p} is truncated or corrupt ({err})") from None
        except (OSError, lzma.LZMAError) as err:
            raise TableError(f"cannot read {p} ({type(err).__name__}: {err})") from None
        names = rows.names if fmt in ("csv", "tsv") else list(frame.columns)
    _check_columns(p, names, [*(columns or ()), *required], "", formula_column, lambda: frame.head(20))
    if columns is not None:
        frame = frame[list(columns)]
    return Table(frame if fmt == "parquet" else frame.reset_index(drop=True), str(p), rows.rejected)


def _read_parquet(src: Path | IO[bytes], columns: Sequence[str] | None, path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pd.read_parquet(src, columns=list(columns) if columns is not None else None)
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError(f"{path} is not a readable Parquet file: {err}") from None


def read_header(path: str | Path) -> list[str]:
    """The column names of a table (parquet: its schema; text formats: the header / first record's keys)."""
    p, fmt = _checked_path(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(p).schema_arrow.names)
    with _open_text(p) as fh:
        rows = _Rows(p, fmt, "keep")
        first = next(rows.rows(fh), None)
    return rows.names if fmt in ("csv", "tsv") else list(first[1]) if first else []


def count_rows(path: str | Path) -> int:
    """Data rows of a text table (blank lines and the header not counted, bad rows counted)."""
    p, fmt = _checked_path(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(p).metadata.num_rows)
    with _open_text(p) as fh:
        rows = _Rows(p, fmt, "keep")
        return sum(1 for _ in rows.rows(fh))


@dataclass
class Chunk:
    """One chunk of :func:`iter_table`: its rows, their data row numbers and the bad rows met meanwhile
    (with ``on_bad='keep'`` those are also in ``frame``, at ``rows.index(bad.row)``)."""

    frame: pd.DataFrame
    rows: list[int]
    rejected: list[BadRow] = field(default_factory=list)


def iter_table(
    path: str | Path,
    *,
    chunk_size: int = 50_000,
    skip: int = 0,
    text_columns: TextColumns = (),
    required: Sequence[str] = (),
    on_bad: OnBad = "error",
    hint: str = "",
    formula_column: str | None = None,
) -> Iterator[Chunk]:
    """Stream a table in chunks of ``chunk_size`` rows (bounded memory), after ``skip`` data rows; the same
    parser and rules as :func:`read_table`. A chunk's dtypes are inferred per chunk (use ``text_columns='all'``
    for stable ones). ``required`` columns are checked before the first chunk (``hint`` is appended to that
    error; a missing ``formula_column`` names the column that holds formulas, from the first 20 rows)."""
    p, fmt = _checked_path(path)
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if fmt == "parquet":
        yield from _parquet_chunks(p, chunk_size, skip, required, hint, text_columns, formula_column)
        return
    rows = _Rows(p, fmt, on_bad)
    with _open_text(p) as fh:
        source = rows.rows(fh)
        first = next(source, None)
        _check_columns(p, rows.names if fmt in ("csv", "tsv") else list(first[1] if first else ()), required, hint,
                       formula_column, lambda: _sample_rows(p))
        wanted = (pair for pair in chain([] if first is None else [first], source) if pair[0] >= skip)
        while True:
            with _gc_paused():
                keep = list(islice(wanted, chunk_size))
            bad = [b for b in rows.rejected if b.row >= skip]
            rows.rejected = []
            if keep or bad:
                yield Chunk(rows.frame([item for _, item in keep], text_columns), [n for n, _ in keep], bad)
            if len(keep) < chunk_size:
                return


def _parquet_chunks(path: Path, chunk_size: int, skip: int, required: Sequence[str], hint: str,
                    text_columns: TextColumns, formula_column: str | None = None) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError(f"{path} is not a readable Parquet file: {err}") from None
    names = pf.schema_arrow.names
    _check_columns(path, names, required, hint, formula_column, lambda: pf.read_row_group(0).slice(0, 20).to_pandas()
                   if pf.num_row_groups else pd.DataFrame())
    seen = 0
    for batch in pf.iter_batches(batch_size=chunk_size):
        if seen + batch.num_rows <= skip:
            seen += batch.num_rows
            continue
        df = batch.to_pandas()
        start = max(seen, skip)
        if seen < skip:
            df = df.iloc[skip - seen :].reset_index(drop=True)
        seen += batch.num_rows
        yield Chunk(_apply_na(df, _text_set(text_columns, names)), list(range(start, seen)))
