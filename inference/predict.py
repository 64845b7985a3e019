"""``crossmat-predict``: stream a CSV/Parquet file of formulas through a CrossMat property model.

The input is read in chunks (bounded memory for any file size), every chunk is predicted in batches and
appended to the output straight away, so a crash loses at most one chunk and ``--resume`` (CSV output)
continues after the rows already written. Output = the input rows, unchanged and in order, plus the
prediction columns and an ``error`` column that names the reason for every row that was not predicted
(unknown element, empty cell, too long, bytes that are not UTF-8, ...).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from crossmat._extras import MissingExtraError, needs_extra
from crossmat.dataset_builders.tables import Chunk, TableError, count_rows, iter_table, read_header, table_format

from .engine import DEFAULT_MAX_CHARS, PRECISIONS, FormulaPredictor

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = ["InputError", "PredictionSummary", "main", "predict_file"]

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst", ".tsv")
_PARQUET_SUFFIXES = (".parquet", ".pq")


class InputError(ValueError):
    """A problem with the input file or the arguments (reported without a traceback by the CLI)."""


@dataclass
class PredictionSummary:
    """What a run did: rows read, predicted, rejected (first examples kept), where the output is."""

    output: Path
    rows: int = 0
    predicted: int = 0
    invalid: int = 0
    resumed_from: int = 0
    examples: list[tuple[int, str, str]] = field(default_factory=list)
    non_utf8_rows: int = 0

    def report(self) -> str:
        lines = [
            f"crossmat-predict: {self.rows} rows -> {self.output}: {self.predicted} predicted, {self.invalid} invalid"
            + (f" (resumed after {self.resumed_from} rows already written)" if self.resumed_from else "")
        ]
        if self.non_utf8_rows:
            lines.append(
                f"  {self.non_utf8_rows} row(s) held bytes that are not UTF-8 (replaced by U+FFFD in the output)"
            )
        for row, formula, reason in self.examples:
            lines.append(f"  row {row}: {formula[:60]!r}: {reason}")
        if self.invalid > len(self.examples):
            lines.append(f"  ... {self.invalid - len(self.examples)} more (see the 'error' column)")
        return "\n".join(lines)


def _arrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, imported on the first Parquet file (the [parquet] extra)."""
    with needs_extra("parquet", "crossmat predict on Parquet files"):
        import pyarrow
        import pyarrow.parquet
    return pyarrow, pyarrow.parquet


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    raise InputError(f"{path}: unknown file type; use .csv (optionally compressed), .tsv or .parquet")


def _csv_sep(path: Path) -> str:
    return "\t" if path.name.lower().endswith(".tsv") else ","


def _read_chunks(path: Path, column: str, chunk_size: int, skip: int) -> Iterator[Chunk]:
    """Chunks of the input through the one table reader (``dataset_builders.tables.iter_table``): every cell
    kept as written (no NA / number guessing), bad rows (ragged, not UTF-8) kept and reported per chunk."""
    try:
        yield from iter_table(path, chunk_size=chunk_size, skip=skip, text_columns="all", required=[column],
                              on_bad="keep", hint="; pass --formula-column", formula_column=column)
    except TableError as err:
        raise InputError(str(err)) from None


def _count_csv_rows(path: Path) -> int:
    """Data rows already in a CSV output (repairs a torn last line left by a crash)."""
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) != b"\n":  # cut the incomplete row written when the run died
            fh.seek(0)
            data = fh.read()
            fh.truncate(data.rfind(b"\n") + 1)
    try:
        return count_rows(path)
    except TableError:  # an output with no header row yet
        return 0


class _Writer:
    """Append chunks to CSV (flushed per chunk) or Parquet (written to ``.partial``, renamed at the end)."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        self.kind = _kind(path)
        self.append = append
        self._pq: pq.ParquetWriter | None = None  # type: ignore[name-defined]
        self._schema: pa.Schema | None = None  # type: ignore[name-defined]
        self._tmp = path.with_name(path.name + ".partial")
        self._wrote_header = append

    def write(self, df: pd.DataFrame) -> None:
        if self.kind == "csv":
            buf = io.StringIO()
            df.to_csv(buf, index=False, header=not self._wrote_header, sep=_csv_sep(self.path))
            mode = "a" if (self.append or self._wrote_header) else "w"
            if self.path.suffix in (".gz", ".bz2", ".xz", ".zst"):  # appends one compressed member per chunk
                df.to_csv(self.path, mode=mode, index=False, header=not self._wrote_header, compression="infer")
            else:
                with open(self.path, mode, encoding="utf-8", newline="") as fh:
                    fh.write(buf.getvalue())
                    fh.flush()
                    os.fsync(fh.fileno())
            self._wrote_header = True
            return
        pa, pq = _arrow()
        table = pa.Table.from_pandas(df, preserve_index=False)
        if self._pq is None:
            self._schema = table.schema
            self._pq = pq.ParquetWriter(self._tmp, self._schema)
        self._pq.write_table(table.cast(self._schema))

    def close(self, empty_columns: list[str]) -> None:
        if self.kind == "csv":
            if not self._wrote_header:  # no rows at all: still write the header
                with open(self.path, "w", encoding="utf-8", newline="") as fh:
                    csv.writer(fh, delimiter=_csv_sep(self.path)).writerow(empty_columns)
            return
        if self._pq is None:
            pa, pq = _arrow()
            pq.write_table(pa.table({c: pa.array([], pa.string()) for c in empty_columns}), self._tmp)
        else:
            self._pq.close()
        os.replace(self._tmp, self.path)


def predict_file(
    model: str | Path | FormulaPredictor,
    input_path: str | Path,
    output_path: str | Path,
    *,
    formula_column: str = "formula",
    chunk_size: int = 50_000,
    batch_size: int = 2048,
    resume: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
    progress: bool = True,
    device: str | None = None,
    precision: str = "float32",
    max_examples: int = 10,
) -> PredictionSummary:
    """Predict every row of ``input_path`` into ``output_path`` (see module docstring)."""
    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.resolve() == output_path.resolve():
        raise InputError("--output must differ from --input")
    try:
        in_kind = table_format(input_path)
    except TableError as err:
        raise InputError(str(err)) from None
    out_kind = _kind(output_path)
    if chunk_size < 1 or batch_size < 1:
        raise InputError("chunk size and batch size must be positive")
    skip = 0
    if resume and output_path.exists():
        if out_kind != "csv" or output_path.suffix in (".gz", ".bz2", ".xz", ".zst"):
            raise InputError("--resume needs an uncompressed CSV output; Parquet output is written atomically")
        skip = _count_csv_rows(output_path)
    chunks = _read_chunks(input_path, formula_column, chunk_size, skip)
    first = next(chunks, None)  # validates the file and the column before the model is loaded
    predictor = (
        model
        if isinstance(model, FormulaPredictor)
        else FormulaPredictor(model, device=device, batch_size=batch_size, max_chars=max_chars, precision=precision)
    )
    std_cols = predictor.uncertainty_columns() if predictor.calibrated else []
    interval_cols = predictor.interval_column_names()
    new_cols = [*predictor.output_columns(), *std_cols, *interval_cols,
                *(["predicted_label"] if predictor.problem_type != "regression" else [])]
    new_cols.append("error")
    summary = PredictionSummary(output=output_path, resumed_from=skip)
    writer = _Writer(output_path, append=skip > 0)
    total = None
    if in_kind == "parquet":
        total = max(_arrow()[1].ParquetFile(input_path).metadata.num_rows - skip, 0)
    bar = tqdm(total=total, unit="formula", disable=not progress, desc="crossmat-predict", file=sys.stderr)
    columns: list[str] = []
    row0 = skip

    def chunk_iter() -> Iterator[Chunk]:
        if first is not None:
            yield first
        yield from chunks

    try:
        for chunk in chunk_iter():
            df = chunk.frame.reset_index(drop=True)
            clash = [c for c in new_cols if c in df.columns]
            if clash:
                raise InputError(f"the input already has column(s) {clash}; rename them or write to another file")
            formulas = df[formula_column].tolist()
            pred = predictor.predict(formulas)
            errors = pred.errors
            for bad in chunk.rejected:  # kept rows: ragged (padded / cut) or with bytes that are not UTF-8
                i = bad.row - chunk.rows[0]
                if bad.kind == "encoding":
                    summary.non_utf8_rows += 1
                    if "\ufffd" not in str(df.at[i, formula_column]):
                        continue  # only another cell was affected: the formula is predicted
                    reason = "formula contains bytes that are not valid UTF-8"
                else:
                    reason = f"the row {bad.reason}"
                errors[i] = reason
                pred.values[i] = np.nan
            for j, col in enumerate(predictor.output_columns()):
                df[col] = pred.values[:, j]
            for j, col in enumerate(std_cols):  # calibrated standard deviation (NaN where no prediction)
                df[col] = np.nan if pred.uncertainty is None else pred.uncertainty[:, j]
            intervals = predictor.interval_columns(pred)
            for col in interval_cols:  # 68.27% / 95.45% prediction intervals (NaN where no prediction)
                df[col] = intervals.get(col, np.nan)
            if predictor.problem_type != "regression":
                best = predictor.labels_of(pred.values)
                labels = np.array(predictor.labels, dtype=object)[np.maximum(best, 0)]
                labels[[e is not None for e in errors]] = ""
                df["predicted_label"] = labels
            df["error"] = [e or "" for e in errors]
            writer.write(df)
            columns = list(df.columns)
            bad_rows = [i for i, e in enumerate(errors) if e is not None]
            n_bad = len(bad_rows)
            for i in bad_rows[: max(max_examples - len(summary.examples), 0)]:
                summary.examples.append((row0 + i, str(formulas[i]), errors[i]))
            summary.rows += len(df)
            summary.invalid += n_bad
            summary.predicted += len(df) - n_bad
            row0 += len(df)
            bar.update(len(df))
    finally:
        bar.close()
    if not columns and first is None and skip == 0:
        columns = read_header(input_path) + new_cols
    writer.close(columns)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crossmat-predict",
        description="Predict a property for every formula in a CSV/Parquet file with a CrossMat model. "
        "Output: the input rows plus prediction columns and an 'error' column (reason for rows not predicted).",
    )
    p.add_argument("--model", required=True, help="model folder, shipped name or Hub id (a CrossMat property model)")
    p.add_argument("--input", type=Path,
                   help=".csv[.gz/.bz2/.xz/.zst], .tsv, .jsonl or .parquet with a formula column")
    p.add_argument("--output", type=Path, help=".csv or .parquet (the format follows the suffix); needed with --input")
    p.add_argument("--formula", action="append", metavar="FORMULA",
                   help="a formula to predict instead of --input (repeatable); the table goes to stdout unless "
                   "--output names a file")
    p.add_argument("--formula-column", default="formula", help="name of the formula column (default: formula)")
    p.add_argument("--chunk-size", type=int, default=50_000, help="rows read and written at a time (bounds memory)")
    p.add_argument("--batch-size", type=int, default=2048, help="formulas per model call")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="longer formula strings are rejected")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument(
        "--precision",
        default="float32",
        choices=list(PRECISIONS),
        help="float32 (exact), bfloat16 (CPUs with AVX512-BF16/AMX, GPUs) or int8 (dynamic quantisation, CPU); "
        "see benchmarks/inference for speed and error",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (CSV output)")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when any row is invalid")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns 0 on success, 2 on bad input/arguments, 3 with --strict and invalid rows.

    ``--formula`` (repeatable) goes through :func:`predict_file` as a one-column table (the same columns, checks and
    errors as a file) and the table is printed as CSV unless ``--output`` names a file."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.input is None) == (args.formula is None):
        parser.error("give either --input FILE (with --output) or one or more --formula FORMULA")
    if args.input is not None and args.output is None:
        parser.error("--output is required with --input")
    with tempfile.TemporaryDirectory(prefix="crossmat-predict-") as tmp:
        source, target, column = args.input, args.output, args.formula_column
        if args.formula is not None:
            source, column = Path(tmp) / "formulas.csv", "formula"
            pd.DataFrame({"formula": args.formula}).to_csv(source, index=False)
            target = args.output or Path(tmp) / "predictions.csv"
        try:
            summary = predict_file(
                args.model,
                source,
                target,
                formula_column=column,
                chunk_size=args.chunk_size,
                batch_size=args.batch_size,
                resume=args.resume,
                max_chars=args.max_chars,
                progress=not args.no_progress and args.formula is None,
                device=args.device,
                precision=args.precision,
            )
        except (InputError, OSError, ValueError) as err:  # bad file, arguments or model: one line, no traceback
            print(f"crossmat-predict: error: {err}", file=sys.stderr)
            return 2
        except MissingExtraError as err:  # a Parquet file without pyarrow, a LoRA folder without peft
            print(f"crossmat-predict: error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            kept = (f"; the rows already written to {args.output} are kept: rerun the same command with --resume to "
                    "continue (an uncompressed CSV output)") if args.input is not None else ""
            print(f"\ncrossmat-predict: interrupted{kept}", file=sys.stderr)
            return 130
        if args.formula is not None and args.output is None:
            sys.stdout.write(target.read_text())
        else:
            print(summary.report(), file=sys.stderr)
    return 3 if (args.strict and summary.invalid) else 0


if __name__ == "__main__":
    raise SystemExit(main())
