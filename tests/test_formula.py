"""Formula parsing: every real MatBench formula, hard hand-picked cases, and bad inputs."""

from __future__ import annotations

import re

import pytest
from pymatgen.core import Composition

from crossmat.tokenization import FormulaError, canonical_formula, parse_formula


def test_every_matbench_formula_parses(matbench_formulas):
    assert len(matbench_formulas) == 13
    unique = sorted({f for fs in matbench_formulas.values() for f in fs})
    failures = []
    for f in unique:
        try:
            parse_formula(f)
        except FormulaError as err:
            failures.append(str(err))
    total = sum(len(v) for v in matbench_formulas.values())
    print(f"parsed {len(unique)} unique formulas ({total} rows) from 13 MatBench tasks")
    assert total == 408062 and len(unique) > 100_000
    assert not failures, failures[:10]


def test_canonical_form_is_stable_on_real_steels(matbench_formulas):
    for f in matbench_formulas["matbench_steels"][:50]:
        canon = canonical_formula(f)
        assert canonical_formula(canon) == canon
        assert Composition(canon).almost_equals(Composition(f), rtol=1e-9, atol=1e-12)
        assert not re.search(r"\de-?\d", canon)  # positional notation, never 6.16e-05


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("Fe2O3", {"Fe": 2, "O": 3}),
        ("Li0.5Co0.5O2", {"Li": 0.5, "Co": 0.5, "O": 2}),
        ("(NH4)2SO4", {"N": 2, "H": 8, "S": 1, "O": 4}),
        ("Ag(W3Br7)2", {"Ag": 1, "W": 6, "Br": 14}),
        ("K4[Fe(CN)6]", {"K": 4, "Fe": 1, "C": 6, "N": 6}),
        ("CuSO4·5H2O", {"Cu": 1, "S": 1, "O": 9, "H": 10}),
        ("CaSO4*0.5H2O", {"Ca": 1, "S": 1, "O": 4.5, "H": 1}),
        ("CuSO4.H2O", {"Cu": 1, "S": 1, "O": 5, "H": 2}),
        ("  Fe2O3 \n", {"Fe": 2, "O": 3}),
        ("CuSO4 · 5H2O", {"Cu": 1, "S": 1, "O": 9, "H": 10}),
        ("D2O", {"H": 2, "O": 1}),
        ("Fe.5O", {"Fe": 0.5, "O": 1}),
        ("CH3COOH", {"C": 2, "H": 4, "O": 2}),
        (
            "Fe0.620C0.000953Mn0.000521Si0.00102Cr0.000110Ni0.192Mo0.0176V0.000112Nb0.0000616Co0.146Al0.00318Ti0.0185",
            {"Fe": 0.62, "C": 0.000953, "Mn": 0.000521, "Si": 0.00102, "Cr": 0.00011, "Ni": 0.192, "Mo": 0.0176,
             "V": 0.000112, "Nb": 0.0000616, "Co": 0.146, "Al": 0.00318, "Ti": 0.0185},
        ),
    ],
)
def test_hard_formulas(formula, expected):
    comp = parse_formula(formula)
    assert {el.symbol: amt for el, amt in comp.items()} == pytest.approx(expected, rel=1e-12)


def test_canonical_examples():
    assert canonical_formula("Fe4O6") == "Fe2O3"
    assert canonical_formula("O3Fe2") == "Fe2O3"
    assert canonical_formula("NaCl") == "NaCl"
    assert canonical_formula("(NH4)2SO4") == "H8SN2O4"
    assert canonical_formula("Li0.5Co0.5O2") == "Li0.5Co0.5O2"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("Xx2O", "unknown element 'Xx'"),
        ("", "empty string"),
        ("   ", "empty string"),
        ("Fe-1O", "negative"),
        ("Fe0O", "not positive"),
        ("Fe0.000O", "not positive"),
        ("(Fe2O3", "unclosed '('"),
        ("Fe2O3)", "unbalanced ')'"),
        ("[Fe(CN)6)", "unbalanced ')'"),
        ("Fe2O3$", "unexpected character"),
        ("fe2o3", "starts with an element symbol"),
        ("Fe2 O3", "whitespace inside the formula"),
        ("Fe2O3 LiCoO2", "whitespace inside the formula"),
        ("Fe2O3\nLiCoO2", "line break"),
        ("Fe\x00O", "control character"),
        ("Fe1e3O", "scientific notation"),
        ("Fe2.5.3O", "malformed amount '2.5.3'"),
        ("Fe()O", "empty brackets"),
        ("((Fe)", "unclosed '('"),
        ("Fe..5O", "does not follow an element"),
        ("Fe2O3.", "malformed amount '3.'"),
        (".H2O", "separator without a formula"),
        ("Fe2O3·0H2O", "not positive"),
        ("Fe0.000000001O", "below 1e-08"),
        ("Fe2O3·", "separator"),
        (None, "expected a string"),
        (3.5, "expected a string"),
        (["Fe2O3"], "expected a string"),
    ],
)
def test_bad_inputs_name_input_and_reason(bad, reason):
    with pytest.raises(FormulaError) as info:
        parse_formula(bad)
    assert isinstance(info.value, ValueError)
    assert repr(bad) in str(info.value)
    assert reason in str(info.value)


def test_overlong_formula_is_refused_with_a_short_message():
    with pytest.raises(FormulaError, match="10000 characters long; the limit is 512") as info:
        parse_formula("H" * 10_000)
    assert len(str(info.value)) < 200
