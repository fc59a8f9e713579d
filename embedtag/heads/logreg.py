"""Standardised logistic regression (scikit-learn): one-vs-rest binary models in multi-label mode, one
multinomial model in single-label mode."""

from __future__ import annotations

import numpy as np

from embedtag.heads.base import Head, check_param, is_bool, is_int, is_number


class LogisticHead(Head):
    """``StandardScaler`` then ``LogisticRegression`` per label (multi-label) or multinomial (single-label).

    Parameters: ``C`` inverse L2 strength, ``max_iter`` of lbfgs, ``standardize`` the embeddings first,
    ``class_weight`` None or "balanced" (per binary problem), ``n_jobs`` for the one-vs-rest loop."""

    kind = "logreg"

    def __init__(self, C: float = 1.0, max_iter: int = 200, standardize: bool = True,
                 class_weight: str | None = None, n_jobs: int = 1, multi_label: bool = True, seed: int = 0):
        super().__init__(multi_label=multi_label, seed=seed)
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize
        self.class_weight = class_weight
        self.n_jobs = n_jobs

    def _validate_params(self):
        check_param(is_number(self.C) and self.C > 0, "C", self.C, "a finite number > 0")
        check_param(is_int(self.max_iter) and self.max_iter >= 1, "max_iter", self.max_iter, "an integer >= 1")
        check_param(is_bool(self.standardize), "standardize", self.standardize, "True or False")
        check_param(self.class_weight in (None, "balanced"), "class_weight", self.class_weight,
                    "None or 'balanced'")
        check_param(is_int(self.n_jobs) and (self.n_jobs >= 1 or self.n_jobs == -1), "n_jobs", self.n_jobs,
                    "-1 or >= 1")

    def _fit(self, X, Y, sample_weight, subset, X_val, Y_val):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        if self.standardize:
            self.mean_ = X.mean(0).astype(np.float32)
            self.scale_ = X.std(0).astype(np.float32)
            self.scale_[self.scale_ < 1e-8] = 1.0  # constant dimensions stay constant instead of dividing by 0
        else:
            self.mean_ = np.zeros(X.shape[1], np.float32)
            self.scale_ = np.ones(X.shape[1], np.float32)
        Xs = (X - self.mean_) / self.scale_
        n_labels = Y.shape[1]

        def one(y):
            # a label that is always (or never) on has no decision boundary: a constant logit does the job
            p = np.average(y, weights=sample_weight) if sample_weight.sum() > 0 else y.mean()
            if y.min() == y.max():
                p = np.clip(p, 1e-4, 1 - 1e-4)
                return np.zeros(X.shape[1], np.float32), np.float32(np.log(p / (1 - p)))
            clf = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter), class_weight=self.class_weight,
                                     random_state=int(self.seed))
            clf.fit(Xs, y, sample_weight=sample_weight)
            return clf.coef_[0].astype(np.float32), np.float32(clf.intercept_[0])

        from threadpoolctl import threadpool_limits

        # One BLAS thread per fit: lbfgs makes many small matrix products, and multi-threaded OpenBLAS spinning on
        # busy cores made a 220-clip fit take 5 s instead of 0.05 s; parallelism comes from n_jobs over labels.
        with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
            # a capped lbfgs is the point of max_iter; the converged-or-not state is not an error
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.multi_label:
                if self.n_jobs == 1:
                    parts = [one(Y[:, j]) for j in range(n_labels)]
                else:
                    from joblib import Parallel, delayed

                    parts = Parallel(n_jobs=self.n_jobs, prefer="threads")(
                        delayed(one)(Y[:, j]) for j in range(n_labels))
                self.coef_ = np.stack([c for c, _ in parts])
                self.intercept_ = np.array([b for _, b in parts], np.float32)
            else:
                y = Y.argmax(1)
                present = np.unique(y)
                self.coef_ = np.zeros((n_labels, X.shape[1]), np.float32)
                # a class absent from training never wins
                self.intercept_ = np.full(n_labels, -30.0, np.float32)
                if len(present) == 1:
                    self.intercept_[present[0]] = 0.0
                else:
                    clf = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter),
                                             class_weight=self.class_weight, random_state=int(self.seed))
                    clf.fit(Xs, y, sample_weight=sample_weight)
                    coef, icpt = clf.coef_, clf.intercept_
                    if len(present) == 2:  # sklearn returns one binary row for two classes
                        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
                        icpt = np.array([-icpt[0] / 2, icpt[0] / 2])
                    self.coef_[present] = coef
                    self.intercept_[present] = icpt

    def _decision(self, X):
        Xs = (X - self.mean_) / self.scale_
        return Xs.astype(np.float64) @ self.coef_.T.astype(np.float64) + self.intercept_

    def _state(self):
        return {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_, "intercept": self.intercept_}

    def _set_state(self, state):
        self.mean_, self.scale_ = state["mean"], state["scale"]
        self.coef_, self.intercept_ = state["coef"], state["intercept"]
