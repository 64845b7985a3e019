"""Error handling: specific exceptions become clear records or errors with their cause; programming
errors and broken setups propagate instead of being swallowed."""

from __future__ import annotations

import pytest
from pymatgen.core import Composition

from crossmat.explicit_transfer.base import StructureGenerator


class _Broken(StructureGenerator):
    name = "broken"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def _generate_one(self, composition: Composition, n_candidates: int):
        raise self.error


def test_generation_failures_are_records_but_bugs_propagate():
    batch = _Broken(ValueError("no template for this stoichiometry")).generate(["NaCl", "Xx2"])
    assert [f.row for f in batch.failures] == [0, 1]
    assert "no template" in batch.failures[0].reason and "Xx" in batch.failures[1].reason
    with pytest.raises(TypeError, match="bug"):
        _Broken(TypeError("bug")).generate(["NaCl"])


def test_unknown_element_embedding_keeps_its_cause():
    from crossmat.modeling import CrossMatConfig, CrossMatForMaskedLM
    from crossmat.training import RecipeError, init_element_embeddings

    model = CrossMatForMaskedLM(CrossMatConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=32))
    with pytest.raises(RecipeError, match="cannot be loaded by elementembeddings") as info:
        init_element_embeddings(model, "no-such-representation")
    assert isinstance(info.value.__cause__, KeyError)


def test_exkt_generate_does_not_fall_back_to_one_process(monkeypatch, tmp_path):
    import accelerate

    import crossmat.explicit_transfer.__main__ as cli

    def broken_state():
        raise RuntimeError("distributed init failed")

    monkeypatch.setattr(accelerate, "PartialState", broken_state)
    with pytest.raises(RuntimeError, match="distributed init failed"):
        cli.main(["generate", "NaCl", "--no-aflow", "--output", str(tmp_path / "out.jsonl")])
    assert not (tmp_path / "out.jsonl").exists()
