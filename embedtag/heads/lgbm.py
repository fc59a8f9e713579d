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

from embedtag.errors import ArtifactError
from embedtag.heads.base import Head, check_param, is_int, is_number, sigmoid

SUBDIR = "lightgbm"


class LightGBMHead(Head):
    kind = "lightgbm"

    def __init__(self, n_estimators: int = 100, learning_rate: float = 0.1, num_leaves: int = 15,
                 min_child_samples: int = 5, feature_fraction: float = 0.5, subsample: float = 1.0,
                 max_bin: int = 63, n_components: int | None = None, n_jobs: int = 1, multi_label: bool = True,
                 seed: int = 0):
        super().__init__(multi_label=multi_label, seed=seed)
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.subsample = subsample
        self.max_bin = max_bin
        self.n_components = n_components
        self.n_jobs = n_jobs

    def _validate_params(self):
        check_param(is_int(self.n_estimators) and self.n_estimators >= 1, "n_estimators", self.n_estimators,
                    ">= 1")
        check_param(is_number(self.learning_rate) and 0 < self.learning_rate <= 1, "learning_rate",
                    self.learning_rate, "in (0, 1]")
        check_param(is_int(self.num_leaves) and self.num_leaves >= 2, "num_leaves", self.num_leaves, ">= 2")
        check_param(is_int(self.min_child_samples) and self.min_child_samples >= 1, "min_child_samples",
                    self.min_child_samples, ">= 1")
        check_param(is_number(self.feature_fraction) and 0 < self.feature_fraction <= 1, "feature_fraction",
                    self.feature_fraction, "in (0, 1]")
        check_param(is_number(self.subsample) and 0 < self.subsample <= 1, "subsample", self.subsample,
                    "in (0, 1] (row bagging per tree)")
        check_param(is_int(self.max_bin) and 2 <= self.max_bin <= 255, "max_bin", self.max_bin, "in [2, 255]")
        check_param(self.n_components is None or (is_int(self.n_components) and self.n_components >= 1),
                    "n_components", self.n_components, "None or an integer >= 1")
        check_param(is_int(self.n_jobs) and self.n_jobs >= 0, "n_jobs", self.n_jobs, ">= 0 (0: LightGBM's default)")

    def _params(self) -> dict:
        return {"objective": "binary", "learning_rate": float(self.learning_rate), "num_leaves": int(self.num_leaves),
                "min_data_in_leaf": int(self.min_child_samples), "feature_fraction": float(self.feature_fraction),
                "bagging_fraction": float(self.subsample), "bagging_freq": 1 if self.subsample < 1 else 0,
                "max_bin": int(self.max_bin), "num_threads": int(self.n_jobs), "seed": int(self.seed),
                "deterministic": True, "verbose": -1}

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

            k = min(int(self.n_components), len(X))
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
            self.boosters_.append(lgb.train(params, data, num_boost_round=int(self.n_estimators)))

    def _decision(self, X):
        X = np.ascontiguousarray(self._project(X), dtype=np.float32)
        z = np.empty((len(X), len(self.boosters_)), np.float64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sliced data.*")
            for j, b in enumerate(self.boosters_):
                z[:, j] = self.constant_[j] if b is None else b.predict(X, raw_score=True,
                                                                        num_threads=int(self.n_jobs))
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
        from embedtag import artifacts

        written = []
        for j, b in enumerate(self.boosters_):
            if b is not None:
                written.append(artifacts.atomic_write(directory / SUBDIR / f"label_{j:03d}.txt",
                                                      lambda tmp, b=b: b.save_model(tmp)))
        return written

    def _load_extra(self, directory: Path):
        import lightgbm as lgb

        self.boosters_ = []
        for j in range(self.n_labels_):
            if not np.isnan(self.constant_[j]):
                self.boosters_.append(None)
                continue
            f = directory / SUBDIR / f"label_{j:03d}.txt"
            if not f.is_file():
                raise ArtifactError(f"{f} is missing (LightGBM model of label {j}); refit the head")
            try:
                self.boosters_.append(lgb.Booster(model_file=str(f)))
            except lgb.basic.LightGBMError as exc:
                raise ArtifactError(f"{f} is corrupt: {str(exc).splitlines()[0] if str(exc) else exc}") from None
