"""The one table reader (``dataset_builders.tables``), the one task-type decision (``dataset_builders.targets``),
that no other module reads tables itself, and the one flag vocabulary of the ``crossmat`` subcommands."""

from __future__ import annotations

import ast
import bz2
import gzip
import json
import lzma
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossmat.dataset_builders.tables import TableError, iter_table, read_header, read_table
from crossmat.dataset_builders.targets import TaskTypeError, apply_labels, class_labels, decide_task_type

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("cli", "dataset_builders", "evaluation", "explicit_transfer", "inference", "interpretability",
                   "model_cards", "modeling", "tokenization", "training", "crossmat", "configs")
CSV = b"id,formula,y\n1,Fe2O3,1.5\n2,NA,NA\n3,NaCl,\n4,None,2\n"
RECORDS = [{"id": 1, "formula": "Fe2O3", "y": 1.5}, {"id": 2, "formula": "NA", "y": None},
           {"id": 3, "formula": "NaCl", "y": "NA"}, {"id": 4, "formula": "None", "y": 2}]


def _write(path: Path, data: bytes) -> Path:
    opener = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}.get(path.suffix)
    path.write_bytes(opener(data) if opener else data)
    return path


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.csv.bz2", "t.csv.xz", "t.tsv", "t.jsonl", "t.jsonl.gz",
                                  "t.json", "t.parquet"])
def test_every_format_same_frame_and_na_rule(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if ".csv" in name:
        _write(path, CSV)
    elif name.endswith(".tsv"):
        _write(path, CSV.replace(b",", b"\t"))
    elif ".jsonl" in name:
        _write(path, "".join(json.dumps(r) + "\n" for r in RECORDS).encode())
    elif name.endswith(".json"):
        path.write_text(json.dumps(RECORDS))
    else:
        pd.DataFrame({"id": [1, 2, 3, 4], "formula": ["Fe2O3", "NA", "NaCl", "None"],
                      "y": ["1.5", None, "NA", "2"]}).to_parquet(path)
    table = read_table(path, text_columns=["formula"])
    frame = table.frame
    assert list(frame.columns) == ["id", "formula", "y"] and table.rejected == []
    assert frame["formula"].tolist() == ["Fe2O3", "NA", "NaCl", "None"]  # the text column is kept as written
    y = pd.to_numeric(frame["y"])
    assert y.isna().tolist() == [False, True, True, False] and y[0] == 1.5  # NA, empty, null: missing everywhere
    assert read_header(path) == ["id", "formula", "y"]


def test_ragged_rows_reported_with_row_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.csv", b"formula,y\nFe2O3,1\n\nNaCl,2,extra\nLiF\nKBr,4\n")
    with pytest.raises(TableError, match=r"r\.csv line 4 \(data row 1\) has 3 fields, the header 2"):
        read_table(path)
    table = read_table(path, on_bad="report")
    assert table.frame["formula"].tolist() == ["Fe2O3", "KBr"]
    assert [(b.row, b.line, b.kind) for b in table.rejected] == [(1, 4, "ragged"), (2, 5, "ragged")]
    report = table.report()
    assert "line 4 (data row 1) has 3 fields, the header 2" in report and "line 5 (data row 2) has 1 fields" in report
    assert table.rejected_frame()[["row", "line"]].values.tolist() == [[1, 4], [2, 5]]
    kept = read_table(path, on_bad="keep", text_columns="all")
    assert kept.frame.values.tolist() == [["Fe2O3", "1"], ["NaCl", "2"], ["LiF", ""], ["KBr", "4"]]


def test_non_utf8_and_bad_json_lines_are_bad_rows(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.csv.gz", "formula,y\nFe2O3,1\nCaF\xe9,3\n".encode("latin-1"))
    with pytest.raises(TableError, match=r"line 3 \(data row 1\) is not UTF-8 text \(byte b'\\xe9'\)"):
        read_table(path)
    assert read_table(path, on_bad="keep", text_columns="all").frame["formula"].tolist() == ["Fe2O3", "CaF\ufffd"]
    path = _write(tmp_path / "j.jsonl", b'{"formula": "Fe"}\n[1]\n{broken\n{"formula": "O"}\n')
    table = read_table(path, on_bad="report")
    assert table.frame["formula"].tolist() == ["Fe", "O"]
    assert [(b.row, b.line, b.kind) for b in table.rejected] == [(1, 2, "json"), (2, 3, "json")]


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(TableError, match="unknown file type.*save the sheet as CSV"):
        read_table(_write(tmp_path / "x.xlsx", b""))
    with pytest.raises(TableError, match=r"unknown file type; use .*\.parquet$"):
        read_table(_write(tmp_path / "x.txt", b""))
    with pytest.raises(TableError, match=r"s\.csv line 1 \(the header\) 'formula;gap' is separated by semicolons"):
        read_table(_write(tmp_path / "s.csv", b"formula;gap\nNaCl;8,5\n"))
    with pytest.raises(TableError, match=r"e\.csv is empty \(no header row\)"):
        read_table(_write(tmp_path / "e.csv", b""))
    with pytest.raises(TableError, match="column 'formula' not found"):
        read_table(_write(tmp_path / "c.csv", b"a\n1\n"), required=["formula"])
    with pytest.raises(TableError, match=r"column 'formula' not found in \S+ \(did you mean 'Formula '\?\); columns"):
        read_table(_write(tmp_path / "d.csv", b"Formula ,gap\nNaCl,8.5\n"), required=["formula"])


def test_a_missing_column_names_the_one_that_is_nearly_it() -> None:
    from crossmat.dataset_builders.tables import similar_column

    assert similar_column("band_gap", ["id", "formula", "band_gap "]) == " (did you mean 'band_gap '?)"
    assert similar_column("band_gap", ["Band Gap"]) == " (did you mean 'Band Gap'?)"
    assert similar_column("formula", ["id", "formla"]) == " (did you mean 'formla'?)"
    assert similar_column("y", ["a", "b"]) == ""


def test_chunked_reading_is_the_same_parser(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", b"formula,y\nA,1\nB,2\nC,3,x\nD,4\nE,5\n")
    chunks = list(iter_table(path, chunk_size=2, on_bad="keep", text_columns="all"))
    assert [c.rows for c in chunks] == [[0, 1], [2, 3], [4]]
    assert [b.row for c in chunks for b in c.rejected] == [2]
    assert pd.concat([c.frame for c in chunks])["formula"].tolist() == list("ABCDE")
    resumed = list(iter_table(path, chunk_size=2, skip=3, on_bad="keep", text_columns="all"))
    assert [c.rows for c in resumed] == [[3, 4]] and resumed[0].frame["formula"].tolist() == ["D", "E"]
    with pytest.raises(TableError, match=r"line 4 \(data row 2\)"):
        list(iter_table(path, chunk_size=2))


@pytest.mark.parametrize("values", [[0, 1, 1], [True, False, True], ["true", "FALSE", "True"], ["yes", "No", "YES"],
                                    ["1", "0", None], [0.0, 1.0, np.nan]])
def test_binary_labels_are_classification(values: list) -> None:
    task, y = decide_task_type({"label": pd.Series(values, dtype=object)})
    assert task == "classification" and set(y[np.isfinite(y)].ravel().tolist()) <= {0.0, 1.0}


def test_numbers_are_regression_and_bad_values_are_named() -> None:
    assert decide_task_type({"gap": pd.Series([0.0, 1.5, 2.0])})[0] == "regression"
    assert decide_task_type({"gap": pd.Series([0, 1])}, "regression")[0] == "regression"
    with pytest.raises(TaskTypeError, match=r"target column 'gap' is not numeric \(row 1 holds 'metallic'.*'high'"):
        decide_task_type({"gap": pd.Series([1.0, "metallic", "high", "metallic"], dtype=object)})
    with pytest.raises(TaskTypeError, match=r"'flag' mixes true/false/yes/no labels with numbers \[2\.5\]"):
        decide_task_type({"flag": pd.Series(["true", 2.5], dtype=object)})
    with pytest.raises(TaskTypeError, match=r"classification needs class labels in target column 'gap' .* \[0\.5\]"):
        decide_task_type({"gap": pd.Series([0.0, 1.0, 0.5])}, "classification")
    assert decide_task_type({"gap": pd.Series([0.0, 1.0, 2.0])}, "classification")[0] == "classification"  # indices
    with pytest.raises(TaskTypeError, match="regression needs numbers"):
        decide_task_type({"flag": pd.Series(["yes", "no"])}, "regression")



def test_class_labels_of_text_and_whole_number_targets() -> None:
    """Text labels that repeat make a classifier of that many classes (sorted names); whole numbers other than 0/1 do
    when classification is asked for (numeric order, named as written); units, free text and 0/1 columns do not."""
    systems = pd.Series(["cubic", "hexagonal", "cubic", " tetragonal", "hexagonal", None, "NA", "tetragonal"])
    labels = class_labels([systems.iloc[:4], systems.iloc[4:]], "system")
    assert labels == ("cubic", "hexagonal", "tetragonal")
    assert apply_labels(systems, labels).tolist()[:5] == [0.0, 1.0, 0.0, 2.0, 1.0]
    numbers = pd.Series([7, 10, 2, 7, 10])  # numeric order: 2 < 7 < 10, not '10' < '2'
    assert class_labels([numbers], "sg") is None  # auto: numbers are regression
    assert class_labels([numbers], "sg", task_type="classification") == ("2", "7", "10")
    assert apply_labels(pd.Series([10.0, 2.0, "7"], dtype=object), ("2", "7", "10")).tolist() == [2.0, 0.0, 1.0]
    assert class_labels([pd.Series([0, 1, 1])], "y", task_type="classification") is None  # already 0/1
    assert class_labels([pd.Series(["2.7 eV", "1.1 eV", "2.7 eV", "1.1 eV", "0.5 eV", "0.5 eV"])], "gap") is None
    assert class_labels([pd.Series(["red", "green", "blue", "cyan"])], "y") is None  # no label repeats
    assert class_labels([pd.Series(["metal", "insulator"])], "y", positive_label="insulator") == ("metal", "insulator")
    with pytest.raises(TaskTypeError, match=r"--positive-label 'cubic': .* exactly two labels.*'cubic', 'hexagonal', "
                                            r"'tetragonal'"):
        class_labels([systems], "system", positive_label="cubic")
    with pytest.raises(TaskTypeError, match="task type regression: target column 'system' holds the text labels"):
        class_labels([systems], "system", task_type="regression")


def _package_files() -> list[Path]:
    return [p for folder in PACKAGE_FOLDERS for p in (REPO / folder).rglob("*.py")] + \
        [REPO / "train.py", REPO / "evaluate.py", REPO / "app.py"]


def test_one_table_reading_home() -> None:
    """No package module calls pandas' readers (or the csv module's) itself: dataset_builders/tables.py is the
    one place a table is parsed."""
    readers = {"read_csv", "read_parquet", "read_json", "read_table", "read_excel", "reader", "DictReader"}
    bad = []
    for path in _package_files():
        if path.relative_to(REPO).as_posix() == "dataset_builders/tables.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in readers:
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id in ("pd", "pandas", "csv", "pq"):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} {owner.id}.{node.func.attr}")
    assert not bad, "tables are read only by dataset_builders/tables.py:\n" + "\n".join(bad)


def test_one_repo_root_and_one_scores_home() -> None:
    """The checkout root is computed only by dataset_builders.paths.repo_root (crossmat/__init__.py bootstraps
    the import of the parts before it exists; evaluate.py must find HF evaluate before importing crossmat);
    softmax/sigmoid turn logits into scores only in modeling/pipeline_crossmat.py (and the model's own
    ensemble averaging in modeling_crossmat.py)."""
    root_ok = {"dataset_builders/paths.py", "crossmat/__init__.py", "evaluate.py"}
    score_ok = {"modeling/pipeline_crossmat.py", "modeling/modeling_crossmat.py"}
    bad = []
    for path in _package_files():
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text()
        if rel not in root_ok and (".parent.parent" in text or "parents[1]" in text) and "__file__" in text:
            bad.append(f"{rel}: computes the repo root (use dataset_builders.paths.repo_root)")
        if rel not in score_ok and any(s in text for s in ("torch.softmax(", "torch.sigmoid(", "F.softmax(")):
            bad.append(f"{rel}: turns logits into scores (use scores_from_logits)")
    assert not bad, "\n".join(bad)


FOLDER_OUTPUTS = {  # crossmat subcommand (+ its own subcommand) -> a folder it writes
    ("train",): "--output-dir", ("evaluate",): "--output-dir", ("explain",): "--output-dir",
    ("explain", "aggregate"): "--output-dir", ("build", "matbench"): "--output-dir",
    ("build", "corpus"): "--output-dir", ("build", "embeddings"): "--output-dir",
    ("build", "alignment"): "--output-dir", ("build", "llm4mat"): "--output-dir",
    ("generate", "train-cif-lm"): "--output-dir", ("generate", "convert-crystallm"): "--output-dir",
    ("generate", "train-predictor"): "--output-dir",
}
FILE_OUTPUTS = {("predict",): "--output", ("generate",): "--output", ("generate", "predict"): "--output"}


@pytest.mark.parametrize("argv,flag", [*FOLDER_OUTPUTS.items(), *FILE_OUTPUTS.items()])
def test_every_subcommand_uses_the_flag_vocabulary(argv: tuple[str, ...], flag: str, capsys) -> None:
    from crossmat.cli import main

    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"{flag} " in out or f"{flag}\n" in out, out
    if flag == "--output-dir":
        assert "  --out " not in out and "  --output " not in out  # no second spelling in the help
    for old in ("--column ", "--out "):
        assert f"  {old}" not in out


def test_old_spellings_still_parse_with_a_notice(capsys) -> None:
    from crossmat.dataset_builders.cli import build_parser as build
    from crossmat.interpretability.cli import build_parser as explain

    args = build().parse_args(["matbench", "--out", "o", "--tasks", "matbench_steels"])
    assert args.output_dir == "o"
    assert "DeprecationWarning: --out is deprecated; use --output-dir" in capsys.readouterr().err
    args = explain().parse_args(["explain", "--model", "m", "--out=o", "--output", "probability", "--column", "f"])
    assert (args.output_dir, args.explained_output, args.formula_column) == ("o", "probability", "f")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("DeprecationWarning" in line for line in err)
    import crossmat.explicit_transfer.__main__ as exkt

    parsed = {}
    monkey = exkt.cmd_convert
    try:
        exkt.cmd_convert = lambda a: parsed.update(vars(a))  # type: ignore[assignment]
        exkt.main(["convert-crystallm", "ckpt.pt", "--output", "hf"])
    finally:
        exkt.cmd_convert = monkey
    assert parsed["output_dir"] == "hf"


@pytest.mark.parametrize(("cells", "hint"), [
    (["2,709", "1,5"], "commas in the numbers"),
    (["2.7 eV", "310 K", "1e3 MPa"], "units in the cells"),
    (["<0.1", ">= 5", "~3"], "bounds or approximations"),
])
def test_bad_target_cells_that_look_alike_say_what_they_probably_are(cells: list[str], hint: str) -> None:
    """A spreadsheet export with decimal commas, units or bounds in the target cells gets the likely cause, and a
    mixed bag of bad cells gets none (the message does not guess)."""
    with pytest.raises(TaskTypeError, match=hint):
        decide_task_type({"y": pd.Series([1.0, *cells], dtype=object)})
    with pytest.raises(TaskTypeError) as err:
        decide_task_type({"y": pd.Series([1.0, *cells, "metallic"], dtype=object)})
    assert hint not in str(err.value)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_missing_formula_column_names_the_column_that_holds_formulas(tmp_path: Path, suffix: str) -> None:
    """Every reader that is told which column holds formulas (crossmat predict streams, crossmat explain reads
    whole) names the one that does when it is missing, from the first rows; other columns are not guessed."""
    frame = pd.DataFrame({"material_id": ["mp-1", "mp-2"], "formula_pretty": ["Fe2O3", "LiCoO2"], "y": [1.0, 2.0]})
    path = tmp_path / f"t{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    hint = "(column 'formula_pretty' holds formulas: --formula-column formula_pretty)"
    with pytest.raises(TableError, match=re.escape(hint)):
        read_table(path, required=["formula"], formula_column="formula")
    with pytest.raises(TableError, match=re.escape(hint)):
        next(iter_table(path, required=["formula"], formula_column="formula"))
    with pytest.raises(TableError) as err:
        read_table(path, required=["target"], formula_column="formula")
    assert "holds formulas" not in str(err.value)
