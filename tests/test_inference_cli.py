"""crossmat-predict: CSV/Parquet streaming, per-row errors, bad files, resume."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossmat.inference import FormulaPredictor
from crossmat.inference.predict import main, predict_file

from .test_inference_support import make_pretrained_model, make_property_model

GOOD = ["Fe2O3", "NaCl", "(NH4)2SO4", "Li0.5Co0.5O2", "SrTiO3", "CuSO4·5H2O"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_property_model(tmp_path_factory.mktemp("models") / "tiny-gap")


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> FormulaPredictor:
    return FormulaPredictor(model_dir)


def _bad_csv(path: Path) -> Path:
    rows = [b"id,formula,note"]
    rows += [f"g{i},{f},ok".encode() for i, f in enumerate(GOOD)]
    rows += [
        b"b0,Xx2O3,unknown element",
        b"b1,,empty cell",
        b"b2," + b"H" * 10_000 + b",very long",
        b"b3,Fe\xff\xfeO3,not utf-8 in the formula",
        b"b4,NaCl,caf\xe9 (not utf-8 elsewhere)",
        b'b5,"Fe(O",unclosed',
    ]
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


def test_csv_good_and_bad_rows(tmp_path: Path, model_dir: Path, predictor: FormulaPredictor, capsys) -> None:
    src = _bad_csv(tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    assert main(["--model", str(model_dir), "--input", str(src), "--output", str(out), "--no-progress"]) == 0
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["id", "formula", "note", "predicted_band_gap", "error"]
    assert df["id"].tolist() == [f"g{i}" for i in range(6)] + [f"b{i}" for i in range(6)]
    expected = predictor.predict(GOOD + ["NaCl"]).values[:, 0]
    got = df["predicted_band_gap"].replace("", np.nan).astype(float).to_numpy()
    assert np.allclose(got[[0, 1, 2, 3, 4, 5, 10]], expected, atol=1e-6)
    assert np.isnan(got[[6, 7, 8, 9, 11]]).all()
    err = df["error"].tolist()
    assert err[:6] == [""] * 6 and err[10] == ""
    assert err[6] == "unknown element 'Xx'" and err[7] == "empty string"
    assert err[8] == "10000 characters long; the limit is 512"
    assert err[9] == "formula contains bytes that are not valid UTF-8" and "unclosed" in err[11]
    assert df["note"][10] == "caf\ufffd (not utf-8 elsewhere)"  # output stays valid UTF-8
    report = capsys.readouterr().err
    assert "12 rows" in report and "7 predicted, 5 invalid" in report and "row 6: 'Xx2O3'" in report


def test_parquet_streaming_in_small_chunks_matches_one_chunk(
    tmp_path: Path, model_dir: Path, matbench_formulas
) -> None:
    formulas = matbench_formulas["matbench_expt_gap"][:200]
    src = tmp_path / "in.parquet"
    pd.DataFrame({"id": np.arange(200), "composition": formulas}).to_parquet(src)
    one = predict_file(model_dir, src, tmp_path / "one.parquet", formula_column="composition", progress=False)
    many = predict_file(
        model_dir,
        src,
        tmp_path / "many.csv",
        formula_column="composition",
        chunk_size=37,
        batch_size=16,
        progress=False,
    )
    assert one.rows == many.rows == 200 and one.invalid == many.invalid == 0
    a = pd.read_parquet(tmp_path / "one.parquet")
    b = pd.read_csv(tmp_path / "many.csv", keep_default_na=False)
    assert a["id"].tolist() == list(range(200)) == b["id"].tolist()
    assert np.allclose(a["predicted_band_gap"], b["predicted_band_gap"], atol=1e-6)


def test_resume_after_interruption(tmp_path: Path, model_dir: Path, matbench_formulas) -> None:
    formulas = matbench_formulas["matbench_expt_gap"][:200]
    src = tmp_path / "in.csv"
    pd.DataFrame({"formula": formulas, "k": range(200)}).to_csv(src, index=False)
    full = tmp_path / "full.csv"
    predict_file(model_dir, src, full, chunk_size=50, progress=False)
    lines = full.read_bytes().splitlines(keepends=True)
    partial = tmp_path / "partial.csv"
    partial.write_bytes(b"".join(lines[:121]) + lines[121][:7])  # 120 rows done, a torn 121st
    summary = predict_file(model_dir, src, partial, chunk_size=50, resume=True, progress=False)
    assert summary.resumed_from == 120 and summary.rows == 80
    assert partial.read_bytes() == full.read_bytes()


def test_bad_files_and_arguments(tmp_path: Path, model_dir: Path, capsys) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,composition\n1,Fe2O3\n")
    args = ["--model", str(model_dir), "--output", str(tmp_path / "o.csv"), "--no-progress"]
    assert main([*args, "--input", str(src)]) == 2
    assert "column 'formula' not found" in capsys.readouterr().err
    src.write_text("id,composition\n1,Fe2O3\n2,LiCoO2\n")  # a header of another name: the column that reads as formulas
    assert main([*args, "--input", str(src)]) == 2
    assert "(column 'composition' holds formulas: --formula-column composition)" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main([*args, "--input", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main([*args, "--input", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*args, "--input", str(tmp_path / "in.xlsx")]) == 2
    assert "unknown file type" in capsys.readouterr().err
    header_only = tmp_path / "header.csv"
    header_only.write_text("formula,x\n")
    assert main([*args, "--input", str(header_only)]) == 0
    assert (tmp_path / "o.csv").read_text().strip() == "formula,x,predicted_band_gap,error"
    assert main([*args, "--input", str(src), "--formula-column", "composition", "--strict"]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("formula\nQq\n")
    assert main([*args, "--input", str(bad), "--strict"]) == 3
    mlm = make_pretrained_model(tmp_path / "mlm")  # a pretrained CLM has no property head: refuse, don't guess
    assert main(["--model", str(mlm), "--input", str(bad), "--output", str(tmp_path / "m.csv"), "--no-progress"]) == 2
    assert "is not a property model" in capsys.readouterr().err
    assert main([*args, "--input", str(bad), "--model", str(tmp_path / "no-such-model")]) == 2
    assert "no-such-model' is not a model folder, a shipped model" in capsys.readouterr().err


def test_console_script(tmp_path: Path, model_dir: Path) -> None:
    exe = shutil.which("crossmat-predict")
    assert exe, "crossmat-predict is not on PATH: pip install -e ."
    src = tmp_path / "c.csv"
    src.write_text("formula\nFe2O3\nXx\n")
    proc = subprocess.run(
        [exe, "--model", str(model_dir), "--input", str(src), "--output", str(tmp_path / "c_out.csv")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 predicted, 1 invalid" in proc.stderr and "unknown element 'Xx'" in proc.stderr


def test_formulas_on_the_command_line(tmp_path: Path, model_dir: Path, predictor: FormulaPredictor, capsys) -> None:
    """``--formula`` (repeatable) predicts without a file: the same columns and per-row errors as a file, printed as
    CSV to stdout (pipeable) or written to ``--output``; ``--input`` and ``--formula`` exclude each other."""
    assert main(["--model", str(model_dir), "--formula", "Fe2O3", "--formula", "Xx2O", "--formula", "Li0.5CoO2"]) == 0
    out = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    assert out["formula"].tolist() == ["Fe2O3", "Xx2O", "Li0.5CoO2"]
    assert out["error"].tolist() == ["", "unknown element 'Xx'", ""]
    expected = predictor.predict(["Fe2O3", "Li0.5CoO2"]).values[:, 0]
    np.testing.assert_allclose(out.loc[[0, 2], predictor.output_columns()[0]].astype(float), expected, rtol=1e-5)
    assert main(["--model", str(model_dir), "--formula", "NaCl", "--output", str(tmp_path / "o.csv")]) == 0
    assert pd.read_csv(tmp_path / "o.csv")["formula"].tolist() == ["NaCl"]
    assert main(["--model", str(model_dir), "--formula", "Xx", "--strict"]) == 3
    for argv in (["--model", str(model_dir)], ["--model", str(model_dir), "--formula", "NaCl", "--input", "a.csv"],
                 ["--model", str(model_dir), "--input", "a.csv"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "give either --input FILE (with --output) or one or more --formula" in err
    assert "--output is required with --input" in err


def test_a_single_string_is_one_formula(predictor: FormulaPredictor) -> None:
    """``predict("Fe2O3")`` used to iterate the string: five one-character 'formulas', 'F' predicted as fluorine."""
    one = predictor.predict("Fe2O3")
    assert one.values.shape[0] == 1 and one.errors == [None]
    np.testing.assert_array_equal(one.values, predictor.predict(["Fe2O3"]).values)


def test_tables_and_file_names_are_refused_with_what_to_pass(predictor: FormulaPredictor, tmp_path: Path) -> None:
    """A DataFrame used to be iterated over its column names ('formula' predicted as a row of NaN), and a CSV's
    name read as a formula; any other iterable of cells (Series, array, generator) is one row per cell."""
    frame = pd.DataFrame({"formula": ["Fe2O3", "NaCl"]})
    with pytest.raises(TypeError, match=r"columns \['formula'\]; pass its formula column \(e.g. df\['formula'\]\)"):
        predictor.predict(frame)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    for name in (tmp_path / "rows.csv", str(tmp_path / "rows.csv")):
        with pytest.raises(ValueError, match="is a file, not a formula: predict a file with crossmat predict"):
            predictor.predict(name)
    with pytest.raises(TypeError, match="got int"):
        predictor.predict(5)
    expected = predictor.predict(["Fe2O3", "NaCl"]).values
    for rows in (frame["formula"], frame["formula"].to_numpy(), (f for f in ["Fe2O3", "NaCl"])):
        np.testing.assert_array_equal(predictor.predict(rows).values, expected)


def test_ctrl_c_says_the_written_rows_are_kept_and_resume_continues(tmp_path: Path, model_dir: Path, capsys,
                                                                    monkeypatch) -> None:
    """Ctrl-C used to end in a traceback; now one line says what is kept and how to continue."""
    import crossmat.inference.predict as predict_module

    src = tmp_path / "in.csv"
    src.write_text("formula\nFe2O3\nNaCl\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "predict_file", interrupted)
    rc = main(["--model", str(model_dir), "--input", str(src), "--output", str(tmp_path / "o.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err
    assert err.strip().endswith(f"interrupted; the rows already written to {tmp_path / 'o.csv'} are kept: rerun the "
                                "same command with --resume to continue (an uncompressed CSV output)")
