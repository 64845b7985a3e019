"""A scikit-learn forest held as TreeEnsemble tensors predicts what scikit-learn predicts, and survives
safetensors (no pickle) on real MatBench compositions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("sklearn")
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor  # noqa: E402

from crossmat.modeling.forest import tree_ensemble_from_sklearn  # noqa: E402
from crossmat.modeling.modeling_crossmat import TreeEnsemble  # noqa: E402


@pytest.fixture(scope="module")
def steels_features(data_dir):
    from pymatgen.core import Composition

    from crossmat.evaluation.tasks import load_matbench_frame

    frame = load_matbench_frame("matbench_steels", data_dir)

    elements = sorted({e.symbol for f in frame.formula for e in Composition(f)})
    x = np.array([[Composition(f).get_atomic_fraction(e) for e in elements] for f in frame.formula])
    return x, frame.target.to_numpy()


def test_regressor_matches_sklearn(steels_features):
    x, y = steels_features
    forest = RandomForestRegressor(50, random_state=0).fit(x[:250], y[:250])
    ensemble = tree_ensemble_from_sklearn(forest)
    got = ensemble(torch.as_tensor(x[250:])).numpy()[:, 0]
    np.testing.assert_allclose(got, forest.predict(x[250:]), rtol=1e-5)


def test_classifier_matches_predict_proba(steels_features):
    x, y = steels_features
    labels = (y > np.median(y)).astype(int)
    forest = RandomForestClassifier(50, random_state=0).fit(x[:250], labels[:250])
    got = tree_ensemble_from_sklearn(forest)(torch.as_tensor(x[250:])).numpy()
    np.testing.assert_allclose(got, forest.predict_proba(x[250:]), atol=1e-6)


def test_round_trip_through_safetensors(tmp_path, steels_features):
    x, y = steels_features
    ensemble = tree_ensemble_from_sklearn(RandomForestRegressor(10, random_state=0).fit(x, y))
    save_file(ensemble.state_dict(), tmp_path / "forest.safetensors")
    loaded = TreeEnsemble(len(ensemble.feature), len(ensemble.roots), ensemble.value.shape[1], ensemble.depth)
    loaded.load_state_dict(load_file(tmp_path / "forest.safetensors"))
    torch.testing.assert_close(loaded(torch.as_tensor(x)), ensemble(torch.as_tensor(x)))
