"""Learned site-arrangement ranker: decoys, training, safetensors round trip, ranking order, clear errors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

import crossmat.explicit_transfer as et
from crossmat.explicit_transfer.data import load_perov5
from crossmat.explicit_transfer.site_ranker import (
    SITE_FEATURE_NAMES,
    decoy_accuracy,
    decoy_species,
    site_features,
)

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def train(data_dir):
    return load_perov5("train", limit=160).structure.tolist()


@pytest.fixture(scope="module")
def ranker(train, tmp_path_factory):
    path = tmp_path_factory.mktemp("ranker")
    model = et.train_site_ranker(train[:120], output_dir=path, max_decoys=8, epochs=2, batch_groups=32, hidden=16)
    return model, path


def test_decoys_preserve_composition_and_exclude_the_real_arrangement(train):
    for s in train[:20]:
        decoys = et.make_decoys(s, max_decoys=200)
        counts = [int(a) for a in s.composition.values()]
        expected = math.factorial(len(s)) // math.prod(math.factorial(c) for c in counts) - 1  # e.g. ABX3: 19
        assert len(decoys) == expected
        real = [str(sp) for sp in s.species]
        seen = set()
        for d in decoys:
            assert d.composition == s.composition
            assert np.allclose(d.frac_coords, s.frac_coords) and d.lattice == s.lattice
            order = tuple(str(sp) for sp in d.species)
            assert list(order) != real and order not in seen
            seen.add(order)
    capped = decoy_species(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), max_decoys=5, rng=np.random.default_rng(0))
    assert capped.shape == (5, 10) and len({tuple(r) for r in capped}) == 5
    assert decoy_species(np.array([8, 8, 8])).shape == (0, 3)  # one element: nothing to swap


def test_site_features_shape_and_finite(train):
    x, owner = site_features(train[:10])
    assert x.shape == (50, len(SITE_FEATURE_NAMES)) and np.isfinite(x).all()
    assert np.array_equal(owner, np.repeat(np.arange(10), 5))


def test_ranker_save_load_bit_identical(ranker, train):
    model, path = ranker
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    again = et.SiteRanker.from_pretrained(path)
    held = train[120:]
    a, b = model.score_structures(held), again.score_structures(held)
    assert a.shape == (len(held),) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    acc = decoy_accuracy(again, held[:10], max_decoys=8)
    assert acc["n"] == 10 and 0.0 <= acc["top1"] <= 1.0 and acc["mean_rank"] >= 1.0


def test_learned_ranking_puts_higher_scores_first(ranker, train):
    model, path = ranker
    gen = et.PrototypeGenerator(templates=train[:120], use_aflow=False)
    formulas = [s.composition.reduced_formula for s in train[120:125]]
    batch = gen.generate(formulas, n_candidates=6)
    for r in (model, path):  # a SiteRanker or its folder
        ranked = et.rank_candidates(batch, method="learned", ranker=r)
        for cands in ranked:
            assert len(cands) == 6
            scores = [c.score for c in cands]
            assert scores == sorted(scores, reverse=True)
            assert all(c.metadata["learned_score"] == c.score for c in cands)
    ranked = et.rank_candidates(batch, method="learned+energy", ranker=model, energy_weight=0.0)
    assert all("energy_per_atom" in c.metadata for c in ranked[0])
    assert et.rank_candidates(batch, method="similarity") is batch


def test_clear_errors(ranker, tmp_path):
    model, _ = ranker
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        et.SiteRanker.from_pretrained(tmp_path / "nope")
    helium = Structure(Lattice.cubic(4.0), ["He", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="He has no electronegativity"):
        model.score_structures([helium])
    batch = et.GenerationBatch([[et.Candidate(helium, 0.0, "test")]])
    out = et.rank_candidates(batch, method="learned", ranker=model)
    assert out[0] == [] and "He" in out.failures[0].reason
    with pytest.raises(ValueError, match="unknown ranking method"):
        et.rank_candidates(batch, method="magic")
    with pytest.raises(ValueError, match="needs a site ranker"):
        et.rank_candidates(batch, method="learned")


def test_cli_generate_with_learned_rank(ranker, tmp_path, capsys):
    from crossmat.explicit_transfer.__main__ import main

    _, path = ranker
    out = tmp_path / "g.jsonl"
    main(["generate", "SrTiO3", "BaZrO3", "-n", "3", "--rank", "learned", "--ranker", str(path), "--output", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["candidates"]) for r in recs] == [3, 3]
    for r in recs:
        scores = [c["score"] for c in r["candidates"]]
        assert scores == sorted(scores, reverse=True) and "learned_score" in r["candidates"][0]["metadata"]
    with pytest.raises(SystemExit, match="lacks config.json"):
        main(["generate", "SrTiO3", "--rank", "learned", "--ranker", str(tmp_path / "missing"),
              "--output", str(tmp_path / "h.jsonl")])
    with pytest.raises(SystemExit, match="needs --ranker"):
        main(["generate", "SrTiO3", "--rank", "learned", "--output", str(tmp_path / "h.jsonl")])
