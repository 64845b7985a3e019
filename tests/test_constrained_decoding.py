"""Composition-constrained decoding of the CIF LM (explicit_transfer.constrained_decoding)."""

from __future__ import annotations

import random
import warnings

import pandas as pd
import pytest
import torch
from pymatgen.core import Composition
from transformers import LogitsProcessorList

from crossmat.dataset_builders.cif_text import build_cif_tokenizer, encode_cif, prompt_for
from crossmat.explicit_transfer.cif_lm import CIFLanguageModelGenerator, new_cif_lm
from crossmat.explicit_transfer.cif_validation import validate_cif
from crossmat.explicit_transfer.constrained_decoding import CompositionConstrainedLogitsProcessor

# a 3-element perovskite, a 4-element cell, z = 2 of a binary; perov_5 test formulas are added from the data
OTHER = [("BaTiO3", 1), ("Li2FeSiO4", 1), ("NaCl", 2)]


@pytest.fixture(scope="module")
def tok():
    return build_cif_tokenizer()


@pytest.fixture(scope="module")
def tiny(tok):
    torch.manual_seed(0)
    return new_cif_lm(tok, n_embd=32, n_layer=1, n_head=2, n_positions=512)


@pytest.fixture(scope="module")
def targets(data_dir):
    test = pd.read_csv(data_dir / "perov_5" / "test.csv.gz", usecols=["formula"]).sample(n=4, random_state=0)
    return [(f, 1) for f in test.formula] + OTHER


def _parsed_composition(text: str, target: Composition):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = validate_cif(text, target, exact_cell=True)
    return v


@pytest.mark.parametrize("greedy", [False, True])
def test_every_constrained_sample_has_the_prompt_composition(tiny, tok, targets, greedy):
    gen = CIFLanguageModelGenerator(tiny, tok, temperature=1.5, top_k=None, seed=0)
    if greedy:
        gen.temperature = 1.0
    n = 1 if greedy else 4
    for formula, z in targets:
        target = Composition(formula).reduced_composition * z
        prompt = prompt_for(Composition(formula), z)
        if greedy:
            gen.top_k = 1
        for text, score in gen.sample(prompt, n):
            v = _parsed_composition(text, target)
            assert v.structure is not None, (formula, v.reasons, text)
            assert v.structure.composition.almost_equals(target, rtol=0, atol=1e-6), (formula, text)
            assert not [r for r in v.reasons if "composition" in r or "declared" in r], v.reasons
            assert text.endswith("\n\n") and score > float("-inf")


def test_batched_generation_matches_the_prompt_of_each_formula(tiny, tok, targets):
    """batch_formulas > 1: formulas of equal prompt length share a generate call; each formula's samples still have
    its own composition, every draw is counted, and a bad formula becomes a failure record."""
    formulas = [f for f, z in targets if z == 1] + ["Xx2O"]
    gen = CIFLanguageModelGenerator(tiny, tok, n_samples=3, z_values=(1,), temperature=1.5, top_k=None, seed=0,
                                    batch_formulas=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = gen.generate(formulas, n_candidates=3)
    assert len(batch) == len(formulas) and gen.last_stats["samples"] == 3 * (len(formulas) - 1)
    assert [f.row for f in batch.failures if "Xx" in str(f.formula)] == [len(formulas) - 1]
    lengths = {len(encode_cif(tok, prompt_for(Composition(f), 1))) for f in formulas[:-1]}
    assert len(lengths) > 1  # the grouping by prompt length is exercised
    for formula, cands in zip(formulas[:-1], batch[:-1], strict=True):
        for c in cands:
            assert c.structure.composition.almost_equals(Composition(formula).reduced_composition, rtol=0, atol=1e-6)
            assert c.metadata["cif"].startswith(prompt_for(Composition(formula), 1))
    one = CIFLanguageModelGenerator(tiny, tok, n_samples=3, z_values=(1,), temperature=1.5, top_k=None, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = one.sample_batch([prompt_for(Composition(formulas[0]), 1)], 3)
    assert len(single) == 1 and len(single[0]) == 3
    with pytest.raises(ValueError, match="equal token length"):
        one.sample_batch([prompt_for(Composition("NaCl"), 1), prompt_for(Composition("Li2FeSiO4"), 1)], 1)


def test_unconstrained_sampling_can_violate_the_composition(tiny, tok, targets):
    """The same random model without the processor: the check above would fail (so it tests something)."""
    gen = CIFLanguageModelGenerator(tiny, tok, temperature=1.5, top_k=None, seed=0, constrained=False,
                                    max_new_tokens=120)
    formula, z = targets[0]
    target = Composition(formula).reduced_composition * z
    ok = [_parsed_composition(t, target).structure for t, _ in gen.sample(prompt_for(Composition(formula), z), 4)]
    assert not all(s is not None and s.composition.almost_equals(target, rtol=0, atol=1e-6) for s in ok)


def _walk(proc: CompositionConstrainedLogitsProcessor, prompt_ids: list[int], rng: random.Random, budget: int):
    """Drive the processor with random allowed tokens (no model); return the generated ids."""
    ids = list(prompt_ids)
    vocab = proc.vocab_size
    for _ in range(budget):
        scores = torch.zeros(1, vocab)
        out = proc(torch.tensor([ids]), scores)
        allowed = torch.isfinite(out[0]).nonzero().flatten().tolist()
        assert allowed, "every token masked (dead end)"
        if proc.states[0].done:
            return ids
        ids.append(rng.choice(allowed))
        if len(ids) >= 2 and ids[-1] == ids[-2] == proc.NL:
            proc(torch.tensor([ids]), torch.zeros(1, vocab))
            assert proc.states[0].done
            return ids
    raise AssertionError("the CIF did not end within the budget")


@pytest.mark.parametrize("policy", ["p1", "free"])
def test_random_walks_never_dead_end_and_keep_the_counts(tok, policy):
    rng = random.Random(0)
    formulas = ["BaTiO3", "Li2FeSiO4", "Na4Cl4", "TiOsNOF", "Sr2Fe2O5", "Fe"]
    for i in range(60):
        comp = Composition(formulas[i % len(formulas)])
        prompt = encode_cif(tok, prompt_for(comp))
        proc = CompositionConstrainedLogitsProcessor(tok, comp, space_group=policy)
        ids = _walk(proc, prompt, rng, budget=2000)
        text = tok.decode(ids)
        rows = [ln.split() for ln in text.split("_atom_site_occupancy\n")[1].splitlines() if ln.strip()]
        counts = Composition(_sum_rows(rows))
        assert counts.almost_equals(comp, rtol=0, atol=1e-9), (text, comp)  # declared multiplicities add up
        if policy == "p1":  # one atom per row: the parsed cell holds exactly the prompt's composition
            s = _parsed_composition(text, comp).structure
            assert s is not None and s.composition.almost_equals(comp, rtol=0, atol=1e-6), text


def _sum_rows(rows):
    out: dict[str, int] = {}
    for r in rows:
        out[r[0]] = out.get(r[0], 0) + int(r[2])
    return out


def test_processor_in_a_batch_with_several_compositions(tiny, tok):
    """Two prompts of different compositions in one batch, two samples each (state per sequence)."""
    comps = [Composition("BaTiO3"), Composition("Li2FeSiO4")]
    prompts = [encode_cif(tok, prompt_for(c)) for c in comps]
    width = max(map(len, prompts))
    # left-pad with newlines (the pad token) so both prompts end at the same column
    x = torch.tensor([[tok.convert_tokens_to_ids("\n")] * (width - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    proc = CompositionConstrainedLogitsProcessor(tok, comps, num_return_sequences=2, max_new_tokens=400)
    torch.manual_seed(1)
    out = tiny.generate(x, attention_mask=attn, do_sample=True, max_new_tokens=400, num_return_sequences=2,
                        pad_token_id=tok.convert_tokens_to_ids("\n"), logits_processor=LogitsProcessorList([proc]))
    for row in range(4):
        text = tok.decode(out[row, width:].tolist())
        text = "data_x\n" + text[: text.index("\n\n") + 2]
        s = _parsed_composition(text, comps[row // 2]).structure
        assert s is not None and s.composition.almost_equals(comps[row // 2], rtol=0, atol=1e-6), text


def test_processor_refuses_bad_input(tok):
    with pytest.raises(ValueError, match="space_group"):
        CompositionConstrainedLogitsProcessor(tok, "NaCl", space_group="p2")
    with pytest.raises(ValueError, match="whole"):
        CompositionConstrainedLogitsProcessor(tok, Composition({"Na": 0.5, "Cl": 0.5}))


def test_cli_flags_reach_the_generator(monkeypatch, tmp_path):
    from crossmat.explicit_transfer import __main__ as cli

    seen = {}

    def fake(path, **kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(CIFLanguageModelGenerator, "from_pretrained", staticmethod(fake))
    for argv, constrained in ([], True), (["--unconstrained"], False):
        with pytest.raises(SystemExit):
            cli.main(["generate", "NaCl", "--generator", "cif-lm", "--model", str(tmp_path), "--output",
                      str(tmp_path / "o.jsonl"), "--space-group", "free", "--batch-formulas", "8", *argv])
        assert seen["constrained"] is constrained and seen["space_group"] == "free" and seen["batch_formulas"] == 8
