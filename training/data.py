"""Data for the training stages: load a source, validate columns/targets, split, tokenize into tensors.

A *source* is a dataset folder written by ``dataset_builders`` (``{path, name, split}``), a CSV /
CSV.gz / parquet / JSON-lines file, an in-memory ``datasets.Dataset`` or ``pandas.DataFrame``, or a
builtin pip-shipped source (``builtin: mp_transport`` or ``builtin: aflow_prototypes_chgnet``).
Mappings may add ``filter``: row conditions ``{column, op, value}`` (or the strict string form
``"test_fold != 0"``), all of which must hold; never a free expression (see :func:`apply_filter`). Every formula is validated by
the tokenizer; invalid rows fail the stage (``on_invalid: error``) or are skipped and reported
(``on_invalid: skip`` -> ``rejected_rows.csv``), never dropped silently.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from crossmat.dataset_builders.paths import cache_dir
from crossmat.dataset_builders.tables import NA_VALUES, TableError, missing_column_hint, read_table
from crossmat.dataset_builders.targets import TaskTypeError, apply_labels, class_labels
from crossmat.tokenization import CrossMatTokenizerFast, FormulaError, canonical_formula

from .recipe import DataSection, RecipeError, StageRecipe, resolve_stage

__all__ = ["DataError", "Rejects", "StageData", "TensorSplit", "apply_filter", "load_source", "prepare_stage_data",
           "split_buckets"]

_SOURCE_KEYS = {"path", "name", "split", "filter", "builtin", "data_files"}
BUILTINS = ("mp_transport", "aflow_prototypes_chgnet")


class DataError(RecipeError):
    """Data that cannot be used for training; names the source, column or row and the reason."""


@dataclass
class TensorSplit:
    """One split as padded tensors (``input_ids``, ``attention_mask``, ``row_id`` and the stage targets)."""

    tensors: dict[str, torch.Tensor]
    formulas: list[str]
    weights: torch.Tensor | None = None
    targets: np.ndarray | None = None  # float64 targets (after target_transform), for full-precision outputs
    source_formulas: list[str] | None = None  # the formulas as written in the source
    ids: list[str] | None = None  # row ids from data.id_column, when set

    def __len__(self) -> int:
        return int(self.tensors["input_ids"].shape[0])


@dataclass
class StageData:
    """Train / validation / (optional) test splits plus what was learned about the data."""

    train: TensorSplit
    validation: TensorSplit | None
    test: TensorSplit | None
    info: dict[str, Any] = field(default_factory=dict)
    rejected: pd.DataFrame | None = None


def _mp_transport() -> pd.DataFrame:
    """matminer's bundled MP transport database (Ricci et al. 2017, 47,737 compounds, no structures)."""
    from crossmat.dataset_builders.corpus import transport_formulas

    try:
        df = transport_formulas()
    except FileNotFoundError as err:
        raise DataError(f"builtin 'mp_transport': {err}") from None
    return df.rename(columns={"mp_id": "id"})


def _aflow_prototypes_chgnet() -> pd.DataFrame:
    """CHGNet crystal features (64-d) of pymatgen's bundled AFLOW prototype structures (one row per formula,
    lowest-energy polymorph), built once by ``dataset_builders.embeddings`` into the crossmat cache."""
    from accelerate import PartialState

    from crossmat.dataset_builders.embeddings import build_embeddings

    folder = cache_dir() / "aflow_prototypes_chgnet"
    table = folder / "per_formula" / "chgnet.parquet"
    with PartialState().main_process_first():
        if not table.is_file():
            build_embeddings("aflow_prototypes", "chgnet", folder, on_bad="report", process_index=0, num_processes=1)
    rejected = folder / "rejected_rows_chgnet.csv"
    if rejected.is_file():
        n = len(read_table(rejected).frame)
        print(f"[crossmat] builtin:aflow_prototypes_chgnet: {n} structure(s) CHGNet cannot embed were left out; see {rejected}")
    return read_table(table).frame


def load_source(source: Any, what: str = "data.train", formula_column: str | None = None) -> tuple[pd.DataFrame, str]:
    """Load a data source into a DataFrame; return it with a short description for cards and logs."""
    if source is None:
        raise DataError(f"{what}: no data source given")
    if type(source).__name__ == "DataFrame":  # a caller may name its frame: DataFrame.attrs["source"]
        return source.reset_index(drop=True), str(source.attrs.get("source") or "in-memory DataFrame")
    if type(source).__name__ == "Dataset" and hasattr(source, "to_pandas"):
        return source.to_pandas(), f"in-memory datasets.Dataset ({getattr(source.info, 'dataset_name', None) or 'unnamed'})"
    if isinstance(source, str):
        source = {"builtin": source[len("builtin:") :]} if source.startswith("builtin:") else {"path": source}
    if not isinstance(source, Mapping):
        raise DataError(f"{what}: expected a path, a mapping or a datasets.Dataset, got {type(source).__name__}")
    unknown = sorted(set(source) - _SOURCE_KEYS)
    if "query" in unknown:
        raise DataError(f"{what}: 'query' (a pandas expression, which can run code) is not supported; use a "
                        "declarative filter, e.g. filter: \"test_fold != 0\" or filter: [{column: test_fold, op: '!=', value: 0}]")
    if unknown:
        raise DataError(f"{what}: unknown source key(s) {unknown}; allowed: {sorted(_SOURCE_KEYS)}")
    if source.get("builtin"):
        name = source["builtin"]
        if name not in BUILTINS:
            raise DataError(f"{what}: unknown builtin source {name!r}; choose one of {list(BUILTINS)}")
        df = _mp_transport() if name == "mp_transport" else _aflow_prototypes_chgnet()
        desc = f"builtin:{name}"
    else:
        if not source.get("path"):
            raise DataError(f"{what}: a source mapping needs 'path' or 'builtin'")
        path = Path(str(source["path"])).expanduser()
        if not path.exists():
            raise DataError(f"{what}: {str(path)!r} does not exist")
        desc = str(path)
        if path.is_dir():
            import datasets

            try:
                ds = datasets.load_dataset(str(path), name=source.get("name"), split=source.get("split") or "train")
            except Exception as exc:  # datasets raises several types for a bad folder / config / split
                raise DataError(f"{what}: cannot load dataset folder {str(path)!r} ({exc})") from exc  # cause kept
            df = ds.to_pandas()
            desc = f"{path} (config={source.get('name')}, split={source.get('split') or 'train'})"
        else:
            df = _read_file(path, what, formula_column)
    if source.get("filter"):
        df, text = apply_filter(df, source["filter"], what)
        desc += f" where {text}"
    return df.reset_index(drop=True), desc


_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FILTER_OPS = (*_COMPARE, "in", "not in")
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*(==|!=|<=|>=|<|>)\s*(-?\d+(?:\.\d+)?|'[^']*'|\"[^\"]*\"|true|false)\s*$")


def _parse_condition(cond: Any, what: str) -> tuple[str, str, Any]:
    """One filter condition as ``(column, op, value)``: a mapping ``{column, op, value}`` or the strict string
    ``"<column> <op> <number | 'text' | true | false>"`` (matched by a regex, never evaluated)."""
    if isinstance(cond, str):
        m = _CONDITION.match(cond)
        if not m:
            raise DataError(f"{what}: filter {cond!r} is not '<column> <op> <value>' with op one of "
                            f"{list(_COMPARE)} and a number, quoted text, true or false (use the mapping form "
                            "{column, op, value} for 'in' / 'not in')")
        col, op, raw = m.groups()
        value: Any = raw[1:-1] if raw[0] in "'\"" else {"true": True, "false": False}.get(raw)
        if value is None:
            value = float(raw) if "." in raw else int(raw)
        return col, op, value
    if not isinstance(cond, Mapping) or set(cond) != {"column", "op", "value"}:
        raise DataError(f"{what}: filter condition {cond!r} must be a string or a mapping with exactly the keys "
                        "column, op, value")
    col, op, value = cond["column"], cond["op"], cond["value"]
    if op not in _FILTER_OPS:
        raise DataError(f"{what}: filter op {op!r} is not allowed; choose one of {list(_FILTER_OPS)}")
    scalar = (str, int, float, bool)
    ok = isinstance(value, list) and all(isinstance(v, scalar) for v in value) if op in ("in", "not in") else isinstance(value, scalar)
    if not ok:
        raise DataError(f"{what}: filter value {value!r} for op {op!r} must be "
                        + ("a list of numbers/strings" if op in ("in", "not in") else "a number, string or boolean"))
    return str(col), op, value


def apply_filter(df: pd.DataFrame, spec: Any, what: str = "data.train") -> tuple[pd.DataFrame, str]:
    """Keep the rows of ``df`` meeting every condition of ``spec`` (one condition or a list; see
    :func:`_parse_condition`). Operators are an allow-list; nothing is evaluated as code."""
    conditions = [_parse_condition(c, what) for c in (spec if isinstance(spec, list) else [spec])]
    keep = np.ones(len(df), dtype=bool)
    for col, op, value in conditions:
        if col not in df.columns:
            raise DataError(f"{what}: filter column {col!r} not found; available columns: {list(df.columns)}")
        series = df[col]
        try:
            if op in ("in", "not in"):
                hit = series.isin(value).to_numpy()
                keep &= hit if op == "in" else ~hit
            else:
                keep &= np.asarray(_COMPARE[op](series, value).fillna(False), dtype=bool)
        except TypeError as exc:
            raise DataError(f"{what}: filter {col} {op} {value!r} cannot compare column {col!r} ({series.dtype}) "
                            f"with {type(value).__name__} ({exc})") from None
    text = " and ".join(f"{c} {o} {v!r}" for c, o, v in conditions)
    return df[keep], text


def _read_file(path: Path, what: str, formula_column: str | None = None) -> pd.DataFrame:
    """A table file through the one reader (:func:`dataset_builders.tables.read_table`): the formula column kept
    as written (``NA``, ``None``, empty cells and NUL bytes stay, so rejected_rows.csv shows them); an unreadable
    file or a bad row (ragged, not UTF-8) raises :class:`DataError` naming the file, line, row and reason."""
    try:
        return read_table(path, text_columns=[formula_column] if formula_column else ()).frame
    except TableError as err:
        raise DataError(f"{what}: {err}") from None


def _unit_hash(keys: list[str], salt: str) -> np.ndarray:
    """A deterministic uniform [0, 1) number per key (md5, independent of row order and machine)."""
    out = np.empty(len(keys), dtype=np.float64)
    for i, key in enumerate(keys):
        out[i] = int.from_bytes(hashlib.md5(f"{salt}|{key}".encode()).digest()[:8], "little") / 2.0**64
    return out


def split_buckets(groups: list[str], fraction: float, salt: str) -> np.ndarray:
    """Boolean mask of rows whose group hashes below ``fraction`` (a whole group lands on one side)."""
    uniq, inverse = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
    return (_unit_hash([str(u) for u in uniq], salt) < fraction)[inverse]


class Rejects:
    """Rows left out of a split, each with its reason (written to ``rejected_rows.csv``)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, split: str, rows: np.ndarray, formulas: Any, reasons: Any) -> None:
        for r, f, why in zip(rows, formulas, reasons, strict=True):
            self.rows.append({"split": split, "row": int(r), "formula": f, "reason": why})


def _canonicalise(formulas: pd.Series, split: str, on_invalid: str, rejects: Rejects) -> tuple[np.ndarray, np.ndarray]:
    """Validated tokenizer-ready formulas (per unique string) and a keep-mask."""
    values = formulas.to_numpy(dtype=object)
    keys = np.array([v if isinstance(v, str) else repr(v) for v in values], dtype=object)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    prepared = np.empty(len(uniq), dtype=object)
    bad: dict[int, str] = {}
    for j, i in enumerate(first):
        try:
            prepared[j] = CrossMatTokenizerFast.prepare_formula(values[i])
        except FormulaError as err:
            bad[j] = str(err)
    out = prepared[inverse]
    keep = np.ones(len(values), dtype=bool)
    if bad:
        bad_rows = np.flatnonzero(np.isin(inverse, list(bad)))
        if on_invalid == "error":
            r = int(bad_rows[0])
            raise DataError(
                f"{split} row {r}: {bad[int(inverse[r])]} ({len(bad_rows)} invalid formula row(s) in total; "
                "set data.on_invalid=skip to skip and report them)"
            )
        keep[bad_rows] = False
        rejects.add(split, bad_rows, values[bad_rows], [bad[int(inverse[r])] for r in bad_rows])
    return out, keep


def _tokenize(tokenizer: CrossMatTokenizerFast, formulas: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    uniq, inverse = np.unique(formulas.astype(str), return_inverse=True)
    enc = tokenizer(list(uniq), padding="longest", return_tensors="pt")
    idx = torch.as_tensor(inverse.reshape(-1), dtype=torch.long)
    return enc["input_ids"][idx], enc["attention_mask"][idx]


def _require_columns(df: pd.DataFrame, columns: list[str], what: str, formula_column: str | None = None) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        hint = missing_column_hint(missing[0], list(df.columns), formula_column, df, "data.formula_column={}")
        raise DataError(f"{what}: column(s) {missing} not found{hint}; available columns: {list(df.columns)}")


def _frame_to_split(
    df: pd.DataFrame,
    split: str,
    kind: Any,
    data: DataSection,
    tokenizer: CrossMatTokenizerFast,
    rejects: Rejects,
    task: str,
    target_columns: list[str],
) -> tuple[TensorSplit, str]:
    fcol = data.formula_column
    formulas, keep = _canonicalise(df[fcol], split, data.on_invalid, rejects)
    ids, mask = _tokenize(tokenizer, np.where(keep, formulas, "H"))
    part = kind.split_tensors(df, split, data, rejects, task, target_columns, keep)  # may clear rows in keep
    tensors = dict(part.tensors)
    tensors["input_ids"], tensors["attention_mask"] = ids, mask
    tensors["row_id"] = torch.arange(len(df), dtype=torch.long)
    k = torch.as_tensor(keep)
    tensors = {name: t[k] for name, t in tensors.items()}
    weights = part.weights
    if weights is not None:
        weights = weights[k]
        if float(weights.sum()) <= 0:
            raise DataError(f"{split}: every stability weight is 0; raise data.stability_temperature")
    targets = part.targets[keep] if part.targets is not None else None
    source = [str(f) for f in df[fcol].to_numpy(dtype=object)[keep]]
    ids = [str(i) for i in df[data.id_column].to_numpy(dtype=object)[keep]] if data.id_column else None
    return TensorSplit(tensors, list(formulas[keep]), weights, targets, source, ids), part.task


def _text_class_labels(frames: dict[str, pd.DataFrame], target_columns: list[str], target_key: str | None,
                       data: DataSection, named: Any = None) -> list[str] | None:
    """A property target of text labels (``metal`` / ``insulator``, or three classes or more, read over every split),
    or of whole numbers other than 0/1 with ``data.task=classification``, becomes class indices in place
    (:func:`dataset_builders.targets.class_labels`: of two labels ``data.positive_label`` is class 1, default the
    label that sorts last). ``named``: the recipe's ``card.class_labels``; three names or more fix the classes and
    their order (a class may then have no row). Returns the class names in class order (the model's
    ``id2label``), or ``None`` when the column is read as it is."""
    if target_key != "target_column" or len(target_columns) != 1:
        return None
    col = target_columns[0]
    try:
        if named and len(named) > 2:
            labels: tuple[str, ...] | None = tuple(str(n) for n in named)
        else:
            labels = class_labels([f[col] for f in frames.values()], col, data.positive_label, "data.positive_label",
                                  data.task)
    except TaskTypeError as err:
        raise DataError(str(err)) from None
    if labels is None:
        return None
    for name, frame in frames.items():
        frames[name] = frame.assign(**{col: apply_labels(frame[col], labels)})
        if named and len(named) > 2:  # every label must be one of the named classes
            cells = frames[name][col]
            unknown = cells[cells.map(lambda v: isinstance(v, str) and v.strip() not in NA_VALUES)]
            if len(unknown):
                raise DataError(f"{name} row {unknown.index[0]}: target {unknown.iloc[0]!r} is not one of the classes "
                                f"card.class_labels names ({', '.join(map(repr, labels))})")
    if len(labels) == 2:
        print(f"[crossmat] data: target {col!r} holds two labels: {labels[0]!r} is class 0, {labels[1]!r} is class 1, "
              "the class whose probability is predicted (data.positive_label chooses it)")
    else:
        print(f"[crossmat] data: target {col!r} holds {len(labels)} classes: "
              + ", ".join(f"{i} = {label!r}" for i, label in enumerate(labels)))
    return list(labels)


def prepare_stage_data(recipe: StageRecipe | Mapping[str, Any], tokenizer: CrossMatTokenizerFast) -> StageData:
    """Load, validate, split and tokenize the data of one stage (fails before training on bad input); what
    the stage adds (targets, structure embeddings) comes from its stage object (``recipe.kind``)."""
    recipe = recipe if isinstance(recipe, StageRecipe) else resolve_stage(recipe)
    data, kind = recipe.data, recipe.kind
    train_df, train_desc = load_source(data.train, "data.train", data.formula_column)
    named = getattr(data, kind.target_key) if kind.target_key else None
    target_columns = [named] if isinstance(named, str) else list(named or [])
    needed = [data.formula_column, *target_columns, *(getattr(data, key) for key in kind.required_keys)]
    needed += [data.id_column] if data.id_column else []
    if data.stability_bias != "none":
        needed.append(data.stability_column)
    _require_columns(train_df, needed, f"data.train ({train_desc})", data.formula_column)
    frames: dict[str, pd.DataFrame] = {}
    descs = {"train": train_desc}
    groups = (
        train_df[data.formula_column].astype(str).tolist()
        if data.group_by_formula
        else [str(i) for i in range(len(train_df))]
    )
    if data.group_by_formula:  # group polymorphs / spellings of one composition together
        uniq, inverse = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
        groups = list(np.array([_safe_canonical(g) for g in uniq], dtype=object)[inverse])
    salt = str(data.split_seed)
    in_test = np.zeros(len(train_df), dtype=bool)
    if data.test is not None:
        frames["test"], descs["test"] = load_source(data.test, "data.test", data.formula_column)
        _require_columns(frames["test"], needed, f"data.test ({descs['test']})", data.formula_column)
    elif data.test_fraction > 0:
        in_test = split_buckets(groups, float(data.test_fraction), f"test|{salt}")
        frames["test"] = train_df[in_test].reset_index(drop=True)
        descs["test"] = f"{train_desc} (held-out {data.test_fraction:.0%} of formulas, split_seed={salt})"
    remaining = ~in_test
    if data.validation is not None:
        frames["validation"], descs["validation"] = load_source(data.validation, "data.validation", data.formula_column)
        _require_columns(frames["validation"], needed, f"data.validation ({descs['validation']})",
                         data.formula_column)
    elif data.validation_fraction > 0:
        in_val = split_buckets(groups, float(data.validation_fraction), f"validation|{salt}") & remaining
        frames["validation"] = train_df[in_val].reset_index(drop=True)
        descs["validation"] = f"{train_desc} (validation: {data.validation_fraction:.0%} of training formulas)"
        remaining &= ~in_val
    frames["train"] = train_df[remaining].reset_index(drop=True)
    if data.max_train_rows:
        frames["train"] = frames["train"].iloc[: int(data.max_train_rows)]
    labels = _text_class_labels(frames, target_columns, kind.target_key, data, recipe.card.get("class_labels"))
    rejects = Rejects()
    task = "classification" if labels else data.task
    splits: dict[str, TensorSplit] = {}
    for name in ("train", "validation", "test"):
        if name in frames and len(frames[name]):
            splits[name], task = _frame_to_split(frames[name], name, kind, data, tokenizer, rejects, task, target_columns)
    if "train" not in splits or len(splits["train"]) == 0:
        raise DataError(f"data.train ({train_desc}): no usable training rows")
    extra = kind.finish_splits(splits, data, task)  # e.g. duplicates, target statistics, embedding size
    info: dict[str, Any] = {
        "sources": descs,
        "rows": {k: len(v) for k, v in splits.items()},
        "rejected_rows": len(rejects.rows),
        "task": task if target_columns else None,
        "target_columns": target_columns,
        "formula_column": data.formula_column,
        **({"class_labels": labels} if labels else {}),
        **extra,
    }
    rejected = pd.DataFrame(rejects.rows) if rejects.rows else None
    return StageData(splits["train"], splits.get("validation"), splits.get("test"), info, rejected)


def _safe_canonical(formula: str) -> str:
    try:
        return canonical_formula(formula)
    except FormulaError:
        return formula
