"""Tokenizer: exact amounts, round trip, AutoTokenizer reload (with and without the package), fast path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pymatgen.core import Composition
from transformers import AutoTokenizer

from crossmat.tokenization import VOCAB, CrossMatTokenizerFast, FormulaError, canonical_formula


@pytest.fixture(scope="module")
def tokenizer() -> CrossMatTokenizerFast:
    return CrossMatTokenizerFast()


def _sample(matbench_formulas, per_task=300):
    return [f for fs in matbench_formulas.values() for f in fs[:per_task]]


def test_vocab_has_elements_digits_groups_specials():
    for tok in ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "(", ")", ".", "H", "Og", "Fe", "0", "9"]:
        assert tok in VOCAB
    assert len(VOCAB) == 5 + 10 + 3 + 118


def test_round_trip_real_formulas(tokenizer, matbench_formulas):
    sample = _sample(matbench_formulas)
    enc = tokenizer(sample)
    decoded = tokenizer.batch_decode(enc["input_ids"], skip_special_tokens=True)
    for original, back in zip(sample, decoded, strict=True):
        assert Composition(back).almost_equals(Composition(original), rtol=1e-12, atol=1e-15), (original, back)
    assert not any(tokenizer.unk_token_id in ids for ids in enc["input_ids"])


def test_steel_amounts_are_exact_tokens(tokenizer, matbench_formulas):
    steel = max(matbench_formulas["matbench_steels"], key=len)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(steel)["input_ids"])
    assert "".join(tokens[1:-1]) == steel  # digit by digit, nothing rounded
    assert len(Composition(steel)) >= 12


def test_groups_and_hydrates_are_canonicalised(tokenizer):
    ids = tokenizer(["(NH4)2SO4", "CuSO4·5H2O"])["input_ids"]
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == canonical_formula("(NH4)2SO4")
    assert tokenizer.decode(ids[1], skip_special_tokens=True) == "CuH10SO9"


def test_invalid_formula_names_the_row(tokenizer):
    with pytest.raises(FormulaError, match=r"'Xx2O'.*row 1: unknown element"):
        tokenizer(["Fe2O3", "Xx2O"])
    with pytest.raises(FormulaError, match="row 2: amount 0 is not positive"):
        tokenizer.encode_formulas(["Fe2O3", "NaCl", "Fe0O"])


def test_fast_batch_path_matches_rust_tokenizer(tokenizer, matbench_formulas):
    sample = _sample(matbench_formulas, per_task=500) + ["(NH4)2SO4", "CH3COOH", "D2O"]
    fast = tokenizer.encode_formulas(sample)
    rust = tokenizer(sample, padding=True, return_tensors="np")
    np.testing.assert_array_equal(fast["input_ids"], rust["input_ids"])
    np.testing.assert_array_equal(fast["attention_mask"], rust["attention_mask"])


def test_autotokenizer_reload_with_package(tokenizer, tmp_path):
    import crossmat.modeling  # noqa: F401  (registers CrossMatTokenizerFast for model_type crossmat)

    tokenizer.save_pretrained(tmp_path)
    crossmat.modeling.CrossMatConfig().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, CrossMatTokenizerFast)
    assert loaded("Fe2O3")["input_ids"] == tokenizer("Fe2O3")["input_ids"]


def test_autotokenizer_reload_without_package(tokenizer, tmp_path):
    """Without the package the folder's remote-code tokenizer validates with the same grammar."""
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "formula_grammar.py").is_file() and (tmp_path / "tokenization_crossmat_base.py").is_file()
    expected = tokenizer(["Fe2O3", "Li0.5Co0.5O2", "H8SN2O4"])["input_ids"]
    code = textwrap.dedent(
        f"""
        import json, sys
        from blocker import block; block()
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        enc = tok(["Fe2O3", "Li0.5Co0.5O2", "H8SN2O4"])["input_ids"]
        errors = []
        for bad in ["((Fe)", "Fe2O3 LiCoO2", "Fe1e3O", "Fe\\x00O"]:
            try:
                tok(bad)
            except ValueError as err:
                errors.append(str(err))
        print("RESULT:" + json.dumps({{"ids": enc, "decoded": tok.decode(enc[1], skip_special_tokens=True),
                                      "cls": type(tok).__name__, "group": tok.prepare_formula("(NH4)2SO4·H2O"),
                                      "errors": errors}}))
        """
    )
    out = _run_isolated(code, tmp_path)
    assert out["cls"] == "CrossMatBaseTokenizerFast"
    assert out["ids"] == expected
    assert out["decoded"] == "Li0.5Co0.5O2"
    assert out["group"] == "N2H10S O5".replace(" ", "")  # groups, hydrates and repeats expanded
    assert len(out["errors"]) == 4
    for err, reason in zip(out["errors"], ["unclosed", "whitespace", "scientific", "control character"], strict=True):
        assert reason in err


BLOCKER = '''
import sys
PROJECT = {"crossmat", "modeling", "tokenization", "dataset_builders", "training", "evaluation", "interpretability",
           "inference", "explicit_transfer", "model_cards"}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PROJECT:
            raise ImportError(f"project package {name!r} is blocked in this test")
        return None
def block():
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    sys.meta_path.insert(0, _Block())
'''


def _run_isolated(code: str, workdir) -> dict:
    """Run ``code`` in a fresh interpreter that cannot import any project package."""
    (workdir / "blocker.py").write_text(BLOCKER)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(workdir)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT:")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT:"))


def remote_property_outputs(path, formulas: list[str], field: str) -> list[float]:
    """``out.<field>[:, 0]`` of the property model folder ``path`` on ``formulas``, loaded through the Auto classes
    with ``trust_remote_code`` in a fresh interpreter that cannot import any project package."""
    code = textwrap.dedent(f"""
        import json
        from blocker import block; block()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        path = {str(path)!r}
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
        out = model(**tok({formulas!r}, padding=True, return_tensors="pt"))
        print("RESULT:" + json.dumps(out.{field}[:, 0].tolist()))
    """)
    return _run_isolated(code, path)
