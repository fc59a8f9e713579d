"""LightGBM, one binary booster per label (one-vs-rest). Boosters are saved in LightGBM's own text format.

``n_jobs`` defaults to 1: LightGBM's default OpenMP pool was 50x slower on small data on shared, busy cores.

In single-label mode the one-vs-rest probabilities are renormalised to sum to one per clip.

``n_components`` projects the embeddings on their first principal components before boosting: histogram
building scales with the number of features, so 2048 -> 256 dims makes each booster ~8x cheaper, which is what
brings 80 one-vs-rest boosters on 25k x 2048 embeddings within minutes on a small CPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from embedtag.errors import WeightsError
from embedtag.heads.base import Head, check_param, sigmoid

SUBDIR = "lightgbm"


class LightGBMHead(Head):
    kind = "lightgbm"
    _param_names = ("n_estimators", "learning_rate", "num_leaves", "min_child_samples", "feature_fraction",
                    "subsample", "max_bin", "n_components", "n_jobs")

    def __init__(self, n_estimators: int = 100, learning_rate: float = 0.1, num_leaves: int = 15,
                 min_child_samples: int = 5, feature_fraction: float = 0.5, subsample: float = 1.0,
                 max_bin: int = 63, n_components: int | None = None, n_jobs: int = 1, multi_label: bool = True,
                 seed: int = 0):
        super().__init__(multi_label=multi_label, seed=seed)
        check_param(isinstance(n_estimators, int) and n_estimators >= 1, "n_estimators", n_estimators, ">= 1")
        check_param(isinstance(learning_rate, (int, float)) and 0 < learning_rate <= 1, "learning_rate",
                    learning_rate, "in (0, 1]")
        check_param(isinstance(num_leaves, int) and num_leaves >= 2, "num_leaves", num_leaves, ">= 2")
        check_param(isinstance(min_child_samples, int) and min_child_samples >= 1, "min_child_samples",
                    min_child_samples, ">= 1")
        check_param(isinstance(feature_fraction, (int, float)) and 0 < feature_fraction <= 1, "feature_fraction",
                    feature_fraction, "in (0, 1]")
        check_param(isinstance(subsample, (int, float)) and 0 < subsample <= 1, "subsample", subsample,
                    "in (0, 1] (row bagging per tree)")
        check_param(isinstance(max_bin, int) and 2 <= max_bin <= 255, "max_bin", max_bin, "in [2, 255]")
        check_param(n_components is None or (isinstance(n_components, int) and n_components >= 1), "n_components",
                    n_components, "None or an integer >= 1")
        check_param(isinstance(n_jobs, int) and n_jobs >= 0, "n_jobs", n_jobs, ">= 0 (0: LightGBM's default)")
        self.n_estimators, self.learning_rate, self.num_leaves = n_estimators, float(learning_rate), num_leaves
        self.min_child_samples, self.feature_fraction = min_child_samples, float(feature_fraction)
        self.subsample = float(subsample)
        self.max_bin, self.n_jobs, self.n_components = max_bin, n_jobs, n_components
        self.boosters_: list = []

    def _params(self) -> dict:
        return {"objective": "binary", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "min_data_in_leaf": self.min_child_samples, "feature_fraction": self.feature_fraction,
                "bagging_fraction": self.subsample, "bagging_freq": 1 if self.subsample < 1 else 0,
                "max_bin": self.max_bin, "num_threads": self.n_jobs, "seed": self.seed, "deterministic": True,
                "verbose": -1}

    def _fit(self, X, Y, sample_weight, subset, X_val, Y_val):
        # LightGBM warns about numpy views on every call; the copy it asks for would double peak memory
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sliced data.*")
            self._fit_boosters(X, Y, sample_weight)

    def _project(self, X):
        return X if self.components_.size == 0 else (X - self.pca_mean_) @ self.components_.T

    def _fit_boosters(self, X, Y, sample_weight):
        import lightgbm as lgb

        self.pca_mean_ = np.zeros(0, np.float32)
        self.components_ = np.zeros((0, 0), np.float32)
        if self.n_components is not None and self.n_components < X.shape[1]:
            from sklearn.decomposition import PCA

            k = min(self.n_components, len(X))
            pca = PCA(n_components=k, svd_solver="randomized", random_state=self.seed).fit(X)
            self.pca_mean_ = pca.mean_.astype(np.float32)
            self.components_ = pca.components_.astype(np.float32)
        X = np.ascontiguousarray(self._project(X), dtype=np.float32)

        params = self._params()
        # bin the features once and only swap the label per one-vs-rest problem; the binning must not
        # pre-filter features by the first label's min_data_in_leaf
        data = lgb.Dataset(X, label=Y[:, 0], weight=sample_weight,
                           params={**params, "feature_pre_filter": False}, free_raw_data=False).construct()
        self.boosters_, self.constant_ = [], np.full(Y.shape[1], np.nan, np.float32)
        for j in range(Y.shape[1]):
            y = Y[:, j]
            if y.min() == y.max():  # nothing to split on: a constant logit
                p = np.clip(y.mean(), 1e-4, 1 - 1e-4)
                self.constant_[j] = np.log(p / (1 - p))
                self.boosters_.append(None)
                continue
            data.set_label(y)
            self.boosters_.append(lgb.train(params, data, num_boost_round=self.n_estimators))

    def _decision(self, X):
        X = np.ascontiguousarray(self._project(X), dtype=np.float32)
        z = np.empty((len(X), len(self.boosters_)), np.float64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sliced data.*")
            for j, b in enumerate(self.boosters_):
                z[:, j] = self.constant_[j] if b is None else b.predict(X, raw_score=True,
                                                                        num_threads=self.n_jobs)
        return z

    def _predict_proba(self, X):
        p = sigmoid(self._decision(X))
        return p if self.multi_label else p / p.sum(1, keepdims=True)

    def _state(self):
        return {"constant": self.constant_, "pca_mean": self.pca_mean_, "pca_components": self.components_}

    def _set_state(self, state):
        self.constant_ = state["constant"]
        self.pca_mean_ = state.get("pca_mean", np.zeros(0, np.float32))
        self.components_ = state.get("pca_components", np.zeros((0, 0), np.float32))

    def _save_extra(self, directory: Path):
        sub = directory / SUBDIR
        sub.mkdir(exist_ok=True)
        for j, b in enumerate(self.boosters_):
            if b is not None:
                b.save_model(str(sub / f"label_{j:03d}.txt"))

    def _load_extra(self, directory: Path):
        import lightgbm as lgb

        self.boosters_ = []
        for j in range(self.n_labels_):
            if not np.isnan(self.constant_[j]):
                self.boosters_.append(None)
                continue
            f = directory / SUBDIR / f"label_{j:03d}.txt"
            if not f.is_file():
                raise WeightsError(f"{f} is missing (LightGBM model of label {j})")
            try:
                self.boosters_.append(lgb.Booster(model_file=str(f)))
            except lgb.basic.LightGBMError as exc:
                raise WeightsError(f"{f} is corrupt: {exc}") from None
