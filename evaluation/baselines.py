"""Baselines run by the same harness on the same folds: a dummy predictor (train mean / majority class)
and the classic composition baseline, Magpie features (matminer ``ElementProperty`` "magpie" preset)
with a scikit-learn random forest, as in MatBench's "RF-SCM/Magpie" entry (composition part)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crossmat.dataset_builders import paths
from crossmat.dataset_builders.tables import read_table

from .tasks import TaskInfo

logger = logging.getLogger(__name__)


@dataclass
class FoldData:
    """One fold: fit rows, validation rows (carved from the fold's training rows) and test rows."""

    fold: int
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


@dataclass
class FoldPrediction:
    """Test predictions (values, positive-class probabilities, or rows x classes probabilities of a task of three
    classes or more), free-form parameters and, for models
    that estimate it (ensembles), a per-row uncertainty (std of the members, same units as predictions)."""

    predictions: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    uncertainty: np.ndarray | None = None
    labels: np.ndarray | None = None  # the predicted class of a task of three classes or more (default: most probable)


class DummyBaseline:
    """Predicts the training mean (regression), the training positive rate (binary classification) or the training
    class frequencies (a task of more classes)."""

    name = "dummy"

    def fit_predict(self, data: FoldData, task: TaskInfo, workdir: Path, seed: int) -> FoldPrediction:
        y = pd.concat([data.train["target"], data.validation["target"]]).to_numpy(dtype=np.float64)
        if task.task_type == "classification" and task.num_classes > 2:
            freq = np.bincount(y.astype(np.int64), minlength=task.num_classes) / len(y)
            return FoldPrediction(np.tile(freq, (len(data.test), 1)), {"strategy": "class_frequencies",
                                                                       "value": freq.tolist()})
        value = float(y.mean())
        strategy = "mean" if task.task_type == "regression" else "positive_rate"
        return FoldPrediction(np.full(len(data.test), value), {"strategy": strategy, "value": value})


class MagpieFeaturizer:
    """Batch Magpie featurisation with an on-disk cache keyed by formula (parquet)."""

    def __init__(self, cache_dir: Path | None = None, n_jobs: int = 1) -> None:
        self.cache_path = Path(cache_dir or paths.cache_dir()) / "magpie_features.parquet"
        self.n_jobs = n_jobs
        self._cache: pd.DataFrame | None = None

    def _load(self) -> pd.DataFrame:
        if self._cache is None:
            cache = read_table(self.cache_path).frame if self.cache_path.is_file() else pd.DataFrame()
            if len(cache):  # a formula that failed before is tried again (cheap; the parser may have improved)
                cache = cache[np.isfinite(cache.to_numpy(dtype=np.float64)).all(axis=1)]
            self._cache = cache
        return self._cache

    def transform(self, formulas: pd.Series) -> tuple[np.ndarray, list[str]]:
        """Feature matrix for ``formulas`` (NaN rows for unparsable ones) and messages naming rejected rows."""
        from matminer.featurizers.composition import ElementProperty
        from pymatgen.core import Composition

        from crossmat.tokenization import CrossMatTokenizerFast

        cache = self._load()
        unique = pd.Index(pd.unique(formulas.astype(str)))
        todo = unique.difference(cache.index) if len(cache) else unique
        if len(todo):
            comps, ok = [], []
            for f in todo:  # parsing only; featurisation below is batched
                # the formula as CrossMat reads it (hydrate dots, brackets), so both models see the same rows; one
                # CrossMat cannot read raises here (an unknown element would reach matminer and fail the whole batch)
                try:
                    comps.append(Composition(CrossMatTokenizerFast.prepare_formula(f)))
                    ok.append(f)
                except Exception as err:  # noqa: BLE001 - any parse failure rejects the row
                    logger.warning("Magpie: cannot parse formula %r: %s", f, err)
            ep = ElementProperty.from_preset("magpie", impute_nan=True)
            ep.set_n_jobs(self.n_jobs)
            feats = np.asarray(ep.featurize_many(comps, pbar=False), dtype=np.float64) if comps else np.zeros((0, 0))
            new = pd.DataFrame(feats, index=pd.Index(ok, name="formula"), columns=ep.feature_labels() if comps else None)
            if len(new):
                cache = pd.concat([cache, new]) if len(cache) else new
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                cache.to_parquet(self.cache_path)  # parsed formulas only: failures are not remembered
                self._cache = cache
        X = (cache.reindex(formulas.astype(str)).to_numpy(dtype=np.float64) if cache.shape[1]
             else np.full((len(formulas), 1), np.nan))
        bad_rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
        msgs = [f"row {i} ({formulas.iloc[i]!r}): Magpie features unavailable" for i in bad_rows]
        return X, msgs


class MagpieRandomForest:
    """Magpie features + random forest (regressor or classifier); trains on the fold's training rows."""

    name = "rf_magpie"

    def __init__(self, n_estimators: int = 500, n_jobs: int = 1, cache_dir: Path | None = None) -> None:
        self.n_estimators = n_estimators
        self.n_jobs = n_jobs
        self.featurizer = MagpieFeaturizer(cache_dir, n_jobs=1)

    def signature(self) -> str:
        return f"rf_magpie(n_estimators={self.n_estimators})"

    def fit_predict(self, data: FoldData, task: TaskInfo, workdir: Path, seed: int) -> FoldPrediction:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        train = pd.concat([data.train, data.validation], ignore_index=True)
        X, rej = self.featurizer.transform(train["formula"])
        keep = np.isfinite(X).all(axis=1)
        if rej:
            logger.warning("rf_magpie fold %d: %d training rows rejected: %s", data.fold, len(rej), rej[:5])
        Xt, rej_t = self.featurizer.transform(data.test["formula"])
        if rej_t:
            raise ValueError(f"rf_magpie fold {data.fold}: test rows without features: {rej_t[:5]}")
        cls = RandomForestRegressor if task.task_type == "regression" else RandomForestClassifier
        model = cls(n_estimators=self.n_estimators, n_jobs=self.n_jobs, random_state=seed)
        y = train["target"].to_numpy()[keep]
        model.fit(X[keep], y if task.task_type == "regression" else y.astype(int))
        if task.task_type == "regression":
            pred = model.predict(Xt)
        else:  # P(class 1), or every class's probability (a class without training rows gets 0)
            prob = np.zeros((len(Xt), task.num_classes))
            prob[:, model.classes_.astype(int)] = model.predict_proba(Xt)
            pred = prob[:, 1] if task.num_classes == 2 else prob
        params = {"n_estimators": self.n_estimators, "features": "magpie", "rejected_train_rows": len(rej)}
        return FoldPrediction(np.asarray(pred, dtype=np.float64), params)
