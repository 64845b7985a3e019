"""Issue 13, silent wrong answers: one formula grammar everywhere (fuzzed), CSV cells, duplicate targets."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Composition

from crossmat.inference import FormulaPredictor, load_pipeline
from crossmat.inference.app import predict_markdown
from crossmat.inference.predict import predict_file
from crossmat.interpretability.players import formula_players_batch
from crossmat.modeling import decode_composition
from crossmat.tokenization import CrossMatTokenizerFast, FormulaError, parse_formula
from crossmat.tokenization.formula_grammar import _HYDRATE_SEP, check_formula
from crossmat.tokenization.tokenization_crossmat_base import CrossMatBaseTokenizerFast
from crossmat.training.data import DataError, Rejects, _canonicalise, prepare_stage_data
from crossmat.training.recipe import resolve_stage

from .test_inference_support import last_json, make_property_model, run_without_package

FUZZ = settings(max_examples=int(os.environ.get("CROSSMAT_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_property_model(tmp_path_factory.mktemp("models") / "tiny-gap")


@pytest.fixture(scope="module")
def entry(model_dir: Path):
    """Every in-process entry point, each answering "accepted?" for one string."""
    tok = CrossMatTokenizerFast()
    pipe = load_pipeline(model_dir)
    predictor = FormulaPredictor(model_dir)

    def ok(fn) -> bool:
        try:
            fn()
        except ValueError:
            return False
        return True

    def verdicts(s: str) -> dict[str, bool]:
        _, keep = _canonicalise(pd.Series([s], dtype=object), "train", "skip", Rejects())
        return {
            "grammar": check_formula(s) == "",
            "parse_formula": ok(lambda: parse_formula(s)),
            "tokenizer.prepare_formula": ok(lambda: tok.prepare_formula(s)),
            "tokenizer()": ok(lambda: tok(s)),
            "remote tokenizer class": ok(lambda: CrossMatBaseTokenizerFast.prepare_formula(s)),
            "pipeline": "error" not in pipe(s, on_error="return"),
            "predictor (CLI, app)": predictor.predict([s]).errors[0] is None,
            "training loader": bool(keep[0]),
            "app": predict_markdown(predictor, s)[1],
            "interpretability": ok(lambda: formula_players_batch([s], tok)),
        }

    return tok, verdicts


# -- generators ---------------------------------------------------------------------------------------
SYMBOLS = ["H", "Li", "C", "N", "O", "F", "Na", "Si", "S", "Cl", "Fe", "Co", "Cu", "Sr", "Ba", "La", "Bi", "U", "D"]
amounts = st.one_of(
    st.none(),
    st.integers(1, 30).map(str),
    st.tuples(st.integers(0, 9), st.integers(1, 999)).map(lambda t: f"{t[0]}.{t[1]:03d}".rstrip("0")),
)


def _unit(depth: int):
    element = st.tuples(st.sampled_from(SYMBOLS), amounts).map(lambda t: t[0] + (t[1] or ""))
    if depth == 0:
        return element
    group = st.tuples(
        st.sampled_from(["()", "[]", "{}"]), st.lists(_unit(depth - 1), min_size=1, max_size=3), amounts
    ).map(lambda t: t[0][0] + "".join(t[1]) + t[0][1] + (t[2] or ""))
    return st.one_of(element, element, group)


part = st.lists(_unit(2), min_size=1, max_size=4).map("".join)
valid = st.one_of(
    part,
    st.tuples(part, st.sampled_from(["·", "*", " · "]), st.sampled_from(["", "2", "5", "0.5"]), part).map(
        lambda t: t[0] + t[1] + t[2] + t[3]
    ),
)
NASTY = [" ", "\n", "\t", "\x00", "\x07", ".", "..", "(", ")", "()", "e", "e3", "1e3", "-", "0", "x", "$", "Xx", "·", "\u00a0",
         "\u0663", "\uff12", "\u200b", "\u2003", "\r"]


@st.composite
def mutated(draw) -> str:
    s = draw(valid)
    for _ in range(draw(st.integers(1, 2))):
        i = draw(st.integers(0, len(s)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate"]))
        if op == "insert":
            s = s[:i] + draw(st.sampled_from(NASTY)) + s[i:]
        elif op == "delete" and i < len(s):
            s = s[:i] + s[i + 1 :]
        elif i < len(s):
            s = s[:i] + s[i] + s[i:]
    return s


formulas = st.one_of(valid, mutated(), mutated())


def _pymatgen_amounts(s: str) -> dict[str, float]:
    """The oracle: pymatgen's own string parser (hydrate parts parsed separately, times their multiplier)."""
    total: dict[str, float] = {}
    for sep in ("·", "*"):
        s = s.replace(f" {sep} ", sep).replace(sep, "|")
    for piece in s.strip().split("|"):
        mult = 1.0
        head = piece.lstrip("0123456789.")
        if head != piece:
            mult = float(piece[: len(piece) - len(head)])
        for el, amt in Composition(head).items():
            total[el.symbol] = total.get(el.symbol, 0.0) + amt * mult
    return total


def _fractions(amounts: dict[str, float]) -> dict[str, float]:
    norm = sum(amounts.values())
    return {k: v / norm for k, v in amounts.items()}


def _decoded(tok: CrossMatTokenizerFast, text: str) -> dict[str, float]:
    """What the model reads: ``decode_composition`` over the token ids of ``text``."""
    from crossmat.modeling import CrossMatConfig

    enc = tok(text, return_tensors="pt")
    slot, frac = decode_composition(enc["input_ids"], CrossMatConfig())
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    return {tokens[i]: float(frac[0, i]) for i in torch.nonzero(slot[0]).flatten().tolist()}


# -- the property tests ---------------------------------------------------------------------------------
@FUZZ
@given(s=formulas)
def test_every_entry_point_accepts_and_rejects_the_same_strings(entry, s: str) -> None:
    tok, verdicts = entry
    got = verdicts(s)
    assert len(set(got.values())) == 1, (s, got)


@FUZZ
@given(s=valid)
def test_accepted_formulas_decode_to_the_pymatgen_composition(entry, s: str) -> None:
    tok, _ = entry
    assert check_formula(s) == "", s
    expected = _fractions({("H" if k in ("D", "T") else k): v for k, v in _pymatgen_amounts(s).items()})
    for text in (tok.prepare_formula(s), CrossMatBaseTokenizerFast.prepare_formula(s)):
        got = _decoded(tok, text)
        assert set(got) == set(expected), (s, text)
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, rel=1e-5), (s, text, k)


@FUZZ
@given(s=mutated())
def test_accepted_mutants_decode_to_the_pymatgen_composition(entry, s: str) -> None:
    """Mutants the grammar accepts (plain formulas: no separators, no leading multiplier) read as pymatgen reads them."""
    tok, _ = entry
    plain = s.strip()
    if check_formula(s) or plain[:1].isdigit() or len(_HYDRATE_SEP.split(plain.replace(" ", ""))) > 1:
        return
    expected = _fractions({("H" if k in ("D", "T") else k): v for k, v in _pymatgen_amounts(plain).items()})
    got = _decoded(tok, CrossMatBaseTokenizerFast.prepare_formula(s))
    assert set(got) == set(expected), s
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-5), (s, k)


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(batch=st.lists(formulas, min_size=80, max_size=80))
def test_remote_code_and_csv_agree_with_the_package(model_dir: Path, tmp_path_factory, batch: list[str]) -> None:
    """One subprocess without the package (pipeline + text-classification) and one ``crossmat-predict`` CSV."""
    tmp = tmp_path_factory.mktemp("fuzz")
    expected = [check_formula(s) == "" for s in batch]
    (tmp / "batch.json").write_text(json.dumps(batch))
    code = f"""
import json
from transformers import pipeline
batch = json.load(open({str(tmp / "batch.json")!r}))
pipe = pipeline("composition-property-prediction", model={str(model_dir)!r}, trust_remote_code=True)
clf = pipeline("text-classification", model={str(model_dir)!r}, trust_remote_code=True)
out = {{"pipe": ["error" not in r for r in pipe(batch, on_error="return")], "clf": []}}
for s in batch:
    try:
        clf(s)
        out["clf"].append(True)
    except ValueError:
        out["clf"].append(False)
print(json.dumps(out))
"""
    proc = run_without_package(code, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = last_json(proc.stdout)
    assert res["pipe"] == expected
    assert res["clf"] == expected
    src = tmp / "in.csv"
    with open(src, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
        writer.writerow(["formula"])
        writer.writerows([s] for s in batch)
    predict_file(model_dir, src, tmp / "out.csv", chunk_size=7, progress=False)
    out = pd.read_csv(tmp / "out.csv", dtype=str, keep_default_na=False, engine="python")
    assert out["formula"].tolist() == batch
    assert (out["error"] == "").tolist() == expected


# -- CSV cells --------------------------------------------------------------------------------------
def test_predict_csv_keeps_cell_text_and_rejects_nul_and_ragged_rows(model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(
        b"id,formula\n1,Fe2O3\n2,Fe\x00O\n3,NA\n4,\n5,None\n6,NaCl,extra\n7,LiCoO2\n8,Fe2O3 LiCoO2\n9,Fe1e3O\n"
    )
    for chunk in (1, 2, 3, 50_000):
        out_path = tmp_path / f"out{chunk}.csv"
        predict_file(model_dir, src, out_path, chunk_size=chunk, progress=False)
        out = pd.read_csv(out_path, dtype=str, keep_default_na=False, engine="python")
        assert out["formula"].tolist() == ["Fe2O3", "Fe\x00O", "NA", "", "None", "NaCl", "LiCoO2", "Fe2O3 LiCoO2", "Fe1e3O"]
        err = dict(zip(out["id"], out["error"], strict=True))
        assert err["1"] == "" and err["7"] == "", chunk
        assert "NUL" in err["2"] and err["3"] == "'NA' is a missing-value marker, not a formula"
        assert err["4"] == "empty string" and "missing-value marker" in err["5"]
        assert "3 fields, the header 2" in err["6"], (chunk, err)
        assert "whitespace" in err["8"] and "scientific" in err["9"]


def _finetune_recipe(path: Path, **data) -> dict:
    return resolve_stage(
        {
            "stage": "finetune",
            "data": {
                "train": str(path),
                "target_column": "y",
                "validation_fraction": 0.0,
                "test_fraction": 0.0,
                "group_by_formula": False,
                **data,
            },
        }
    )


def test_training_loader_rejects_nul_and_reports_original_cell_text(tmp_path: Path) -> None:
    src = tmp_path / "train.csv"
    src.write_bytes(b"formula,y\nFe2O3,1.0\nFe\x00O,2.0\nNA,3.0\n,4.0\nNone,5.0\nNaCl,\nLiCoO2,6.0\n")
    data = prepare_stage_data(_finetune_recipe(src, on_invalid="skip"), CrossMatTokenizerFast())
    assert sorted(data.train.formulas) == ["Fe2O3", "LiCoO2"]
    rejected = dict(zip(data.rejected["formula"], data.rejected["reason"], strict=True))
    assert set(rejected) == {"Fe\x00O", "NA", "", "None", "NaCl"}
    assert "NUL" in rejected["Fe\x00O"] and "empty string" in rejected[""]
    assert rejected["NaCl"] == "target missing or not finite"


@pytest.mark.parametrize("ragged_line", [2, 3])
def test_training_loader_refuses_ragged_rows(tmp_path: Path, ragged_line: int) -> None:
    """pandas shifts the columns when the first data row is ragged (the formula column then holds '2')."""
    rows = ["Fe2O3,1.0", "LiCoO2,2.0"]
    rows.insert(ragged_line - 2, "NaCl,2,extra")
    src = tmp_path / "train.csv"
    src.write_text("formula,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"line {ragged_line} \(data row {ragged_line - 2}\) has 3 fields, the header 2"):
        prepare_stage_data(_finetune_recipe(src), CrossMatTokenizerFast())


def test_duplicate_compositions_with_conflicting_targets(tmp_path: Path) -> None:
    src = tmp_path / "train.csv"
    src.write_text("formula,y\nFe2O3,1.0\nO3Fe2,3.0\nFe4O6,5.0\nNaCl,2.0\nNaCl,2.0\nLiCoO2,7.0\n")
    tok = CrossMatTokenizerFast()
    kept = prepare_stage_data(_finetune_recipe(src), tok)  # default: keep every row, but report
    assert len(kept.train) == 6
    assert kept.info["duplicates"]["conflicting_compositions"] == 1
    assert kept.info["duplicates"]["examples"] == {"Fe2O3": [1.0, 3.0, 5.0]}
    mean = prepare_stage_data(_finetune_recipe(src, duplicates="mean"), tok)
    labels = dict(zip(mean.train.formulas, mean.train.tensors["labels"].flatten().tolist(), strict=True))
    assert labels == {"Fe2O3": 3.0, "NaCl": 2.0, "LiCoO2": 7.0}
    first = prepare_stage_data(_finetune_recipe(src, duplicates="first"), tok)
    assert dict(zip(first.train.formulas, first.train.tensors["labels"].flatten().tolist(), strict=True))["Fe2O3"] == 1.0
    with pytest.raises(DataError, match=r"1 composition\(s\) appear with different targets \(e\.g\. Fe2O3"):
        prepare_stage_data(_finetune_recipe(src, duplicates="error"), tok)


def test_length_limit_counts_the_stripped_formula_everywhere(entry) -> None:
    _, verdicts = entry
    at_limit = "  " + "NaCl" * 128 + " \n"  # 512 characters once stripped
    assert set(verdicts(at_limit).values()) == {True}
    assert set(verdicts(at_limit.strip() + "H").values()) == {False}


@pytest.mark.parametrize("text", ["Fe\u0663", "Fe\uff12O3", "Fe\u200bO"])
def test_non_ascii_digits_are_refused_by_the_fast_path_too(text: str) -> None:
    """The package's simple-form fast path used ``\\d``, which matches Arabic-Indic and full-width digits."""
    with pytest.raises(FormulaError, match="unexpected character"):
        CrossMatTokenizerFast.prepare_formula(text)
    assert "unexpected character" in check_formula(text)


@pytest.mark.parametrize(("written", "plain"), [("Fe₂O₃", "Fe2O3"), ("LiFePO₄", "LiFePO4"), ("CuSO₄·5H₂O", "CuSO4·5H2O"),
                                               ("Ba(Ti₀.₈Zr₀.₂)O₃", "Ba(Ti0.8Zr0.2)O3")])
def test_subscript_digits_copied_from_papers_read_as_digits(written: str, plain: str) -> None:
    assert CrossMatTokenizerFast.prepare_formula(written) == CrossMatTokenizerFast.prepare_formula(plain)
    assert CrossMatBaseTokenizerFast.prepare_formula(written) == CrossMatBaseTokenizerFast.prepare_formula(plain)
    assert check_formula(written) == ""
    assert "unexpected character" in check_formula("Fe³⁺")  # superscripts (charges) stay refused


@pytest.mark.parametrize(("written", "hint"), [("FE2O3", "'Fe', not 'FE'"), ("NaCL", "'Cl', not 'CL'"),
                                              ("XE", "'Xe', not 'XE'"), ("LIFEPO4", "'Li', not 'LI'")])
def test_wrong_case_symbols_get_the_symbol_they_spell(written: str, hint: str) -> None:
    assert check_formula(written).endswith(f"(symbols are case-sensitive: {hint}?)")
    assert "capitalised" in check_formula("fe2o3")
    assert check_formula("QQ") == "unknown element 'Q'"  # no symbol to suggest
    assert check_formula("Na") == "" and check_formula("CO") == ""  # carbon monoxide stays what it says


def test_missing_value_markers_are_named_as_such() -> None:
    for marker in ("NA", "N/A", "nan", "None", "NULL", "#N/A"):
        assert check_formula(marker) == f"{marker!r} is a missing-value marker, not a formula"
    assert check_formula("Na") == "" and check_formula("NaN") == ""  # sodium and a sodium nitride formula stay valid


def test_grammar_refuses_tiny_amounts_pymatgen_would_drop() -> None:
    with pytest.raises(FormulaError, match="below 1e-08"):
        CrossMatTokenizerFast.prepare_formula("Fe0.0000000001O")
    assert np.isclose(sum(parse_formula("Fe0.00000002O").values()), 1.00000002)


# -- exKT ---------------------------------------------------------------------------------------------
def test_exkt_predict_missing_file_corrupt_line_and_broken_cif(tmp_path: Path, monkeypatch, capsys) -> None:
    import transformers
    from pymatgen.core import Lattice, Structure

    from crossmat.explicit_transfer.__main__ import main

    with pytest.raises(SystemExit, match="not found"):
        main(["predict", "--model", str(tmp_path), "--generated", str(tmp_path / "nope.jsonl"), "--output",
              str(tmp_path / "p.csv")])
    assert not (tmp_path / "p.csv").exists()

    class _Fake:  # a structure predictor: one value per structure (its number of sites)
        def predict_structures(self, structs):
            return np.array([[float(len(s))] for s in structs])

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda *a, **k: _Fake())
    cif = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")
    lines = [
        json.dumps({"row": 0, "formula": "NaCl", "candidates": [{"cif": cif}], "failure": None}),
        '{"row": 1, "formula": "Fe2O3", "candi',  # corrupt line in the middle
        json.dumps({"row": 2, "formula": "KBr", "candidates": [{"cif": "data_broken\n_cell_length_a 3\n"}], "failure": None}),
        json.dumps({"row": 3, "formula": "NaCl", "candidates": [{"cif": cif}], "failure": None}),
    ]
    (tmp_path / "gen.jsonl").write_text("\n".join(lines) + "\n")
    main(["predict", "--model", "x", "--generated", str(tmp_path / "gen.jsonl"), "--output", str(tmp_path / "p.csv")])
    out = pd.read_csv(tmp_path / "p.csv")
    assert out["row"].tolist() == [0, 2, 3]  # the rows after the corrupt line still load
    assert out["prediction"].tolist()[0] == 2.0 and out["prediction"].tolist()[2] == 2.0
    assert np.isnan(out["prediction"].tolist()[1]) and "CIF does not parse" in out["failure"][1]
    assert "line 2 is not valid JSON" in capsys.readouterr().err


def test_exkt_train_predictor_rejects_unknown_elements(tmp_path: Path, monkeypatch) -> None:
    from pymatgen.core import Lattice, Structure

    import crossmat.explicit_transfer.potentials as potentials
    import crossmat.explicit_transfer.predictor as predictor
    from crossmat.explicit_transfer.__main__ import main

    seen = {}
    monkeypatch.setattr(potentials, "crystal_features", lambda structs, enc: seen.setdefault("n", len(structs)) and np.zeros((len(structs), 4)))
    monkeypatch.setattr(predictor, "train_structure_predictor", lambda *a, **k: Path(a[2]).mkdir(parents=True, exist_ok=True))
    good = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")
    pd.DataFrame({"cif": [good, good.replace("Cl", "Xx"), good.replace("Na", "Am")], "y": [1.0, 2.0, 3.0]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    main(["train-predictor", "--input", str(tmp_path / "train.csv"), "--target", "y", "--output", str(tmp_path / "m")])
    assert seen["n"] == 1
    reasons = pd.read_csv(tmp_path / "m" / "rejected_rows.csv")["reason"].tolist()
    assert any("dummy species" in r or "not parse" in r for r in reasons) and any("Z=95" in r for r in reasons)


def test_interpretability_reads_formula_cells_as_written(tmp_path: Path) -> None:
    from crossmat.interpretability.cli import _read_formula_csv

    src = tmp_path / "in.csv"
    src.write_bytes(b"formula,test_fold\nFe\x00O,0\nNA,0\n,1\nLiCoO2,\n")
    df = _read_formula_csv(str(src), "formula")
    assert df["formula"].tolist() == ["Fe\x00O", "NA", "", "LiCoO2"]  # pandas' C parser: 'Fe', nan, nan
    assert df["test_fold"].isna().tolist() == [False, False, False, True]
    assert "NUL" in check_formula(df["formula"][0])


def test_pipeline_refuses_a_tokenizer_without_the_grammar(model_dir: Path) -> None:
    """A plain PreTrainedTokenizerFast would read '((Fe)' silently; the pipeline says how to load the grammar."""
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

    from crossmat.modeling.pipeline_crossmat import CompositionPropertyPipeline

    plain = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), unk_token="[UNK]", pad_token="[PAD]")
    pipe = CompositionPropertyPipeline(model=AutoModelForSequenceClassification.from_pretrained(model_dir), tokenizer=plain)
    with pytest.raises(TypeError, match="trust_remote_code=True"):
        pipe("((Fe)")


def test_exkt_generate_input_keeps_formula_cells_as_written(tmp_path: Path) -> None:
    from crossmat.explicit_transfer.__main__ import _read_table

    src = tmp_path / "in.csv"
    src.write_bytes(b"id,formula\n1,Fe\x00O\n2,NA\n3,\nNA,NaCl\n")
    df = _read_table(str(src), "formula")
    assert df["formula"].tolist() == ["Fe\x00O", "NA", "", "NaCl"]
    assert df["id"].isna().tolist() == [False, False, False, True]
