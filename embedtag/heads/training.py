"""Training with noisy labels, and cross-validation.

Noisy-label strategies (combinable):

* ``noisy_weight``: every clip of the ``noisy`` subset weighs this much in the loss (0 = curated only).
* MLP ``bootstrap_beta`` (soft bootstrapping, Lsoft) and ``label_smoothing``: head parameters, see mlp.py.
* ``confidence``: two-stage confidence weighting. Stage 1 fits the head on the clean clips only; it then scores the
  noisy clips, and a noisy clip's confidence is the mean predicted probability of its own labels. ``"weight"``
  multiplies the clip's weight by that confidence, ``"drop"`` keeps it (at ``noisy_weight``) only when the
  confidence reaches ``confidence_threshold``. Stage 2 refits on everything with those weights.

Cross-validation: multi-label stratified K-fold (iterative stratification, Sechidis et al. 2011) over the scored
clips, that is, the labelled clips outside the noisy subset. Noisy clips are added to every training fold and are
never scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from embedtag.errors import DataError
from embedtag.heads.base import Head, ParamError, check_param
from embedtag.metrics import lwlrap, lwlrap_per_class

CONFIDENCE_MODES = (None, "weight", "drop")


def noisy_mask(subset, n: int) -> np.ndarray:
    return np.zeros(n, bool) if subset is None else (np.asarray(subset, dtype=object) == "noisy")


def train_head(make: Callable[[], Head], X, Y, subset=None, noisy_weight: float = 1.0,
               confidence: str | None = None, confidence_threshold: float = 0.5, sample_weight=None,
               X_val=None, Y_val=None) -> Head:
    """Fit a fresh head from ``make()`` with the noisy-label strategy given; returns the fitted head, whose
    ``metrics`` record how many noisy clips were kept and their mean weight."""
    check_param(isinstance(noisy_weight, (int, float)) and noisy_weight >= 0, "noisy_weight", noisy_weight, ">= 0")
    check_param(confidence in CONFIDENCE_MODES, "confidence", confidence, "None, 'weight' or 'drop'")
    check_param(0 <= confidence_threshold <= 1, "confidence_threshold", confidence_threshold, "in [0, 1]")
    X = np.asarray(X, np.float32)
    Y = np.asarray(Y, np.float32)
    noisy = noisy_mask(subset, len(X))
    w = np.ones(len(X), np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32).copy()
    w[noisy] *= noisy_weight
    if confidence is not None and noisy.any() and noisy_weight > 0:
        clean = ~noisy
        if not clean.any():
            raise DataError("confidence weighting needs clean (non-noisy) clips to fit its first stage")
        first = make().fit(X[clean], Y[clean], sample_weight=w[clean], X_val=X_val, Y_val=Y_val)
        p = first.predict_proba(X[noisy])
        own = Y[noisy]
        conf = (p * own).sum(1) / np.maximum(own.sum(1), 1)
        if confidence == "weight":
            w[noisy] *= conf
        else:
            w[noisy] *= conf >= confidence_threshold
    keep = w > 0  # zero-weight clips teach nothing; dropping them also keeps them out of the kNN index
    head = make()
    head.fit(X[keep], Y[keep], sample_weight=w[keep], subset=None if subset is None else np.asarray(subset)[keep],
             X_val=X_val, Y_val=Y_val)
    if noisy.any():
        head.metrics = {**head.metrics, "noisy_clips": int(noisy.sum()), "noisy_kept": int((keep & noisy).sum()),
                        "noisy_mean_weight": float(w[noisy].mean())}
    return head


@dataclass
class CVResult:
    """Out-of-fold predictions on the scored clips and their lwlrap."""

    lwlrap: float
    fold_lwlrap: list[float]
    oof: np.ndarray  # (n_clips, n_labels); NaN rows for clips never scored (noisy or unlabelled)
    scored: np.ndarray  # (n_clips,) bool
    fold_of: np.ndarray  # (n_clips,) int, -1 when never scored
    per_class: np.ndarray = field(default_factory=lambda: np.zeros(0))
    class_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def summary(self) -> dict:
        return {"cv_lwlrap": self.lwlrap, "cv_fold_lwlrap": self.fold_lwlrap,
                "cv_folds": len(self.fold_lwlrap), "cv_scored_clips": int(self.scored.sum())}


def stratified_folds(Y: np.ndarray, n_splits: int, seed: int = 0) -> np.ndarray:
    """Fold number of each row of the 0/1 matrix ``Y`` (multi-label stratified K-fold, shuffled with ``seed``)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if len(Y) < n_splits:
        raise DataError(f"{len(Y)} labelled clips cannot be split into {n_splits} folds")
    fold = np.full(len(Y), -1, int)
    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros((len(Y), 1)), Y)):
        fold[test] = k
    return fold


def cross_validate(make: Callable[[], Head], X, Y, subset=None, folds: int = 5, seed: int = 0,
                   fold_ids=None, progress: bool = False, **train_kwargs) -> CVResult:
    """K-fold cross-validated lwlrap of the head built by ``make`` (with ``train_head``'s noisy-label options).

    ``fold_ids`` (n,) uses a dataset's own folds (e.g. ESC-50) instead of stratified ones."""
    check_param(isinstance(folds, int) and folds >= 2, "folds", folds, "an integer >= 2")
    X = np.asarray(X, np.float32)
    Y = np.asarray(Y, np.float32)
    noisy = noisy_mask(subset, len(X))
    scored = ~noisy & (Y.sum(1) > 0)
    fold_of = np.full(len(X), -1, int)
    if fold_ids is not None:
        ids = np.asarray(fold_ids)
        values = sorted(set(ids[scored].tolist()))
        for k, v in enumerate(values):
            fold_of[scored & (ids == v)] = k
        folds = len(values)
        if folds < 2:
            raise DataError("the dataset's own folds give fewer than 2 folds")
    else:
        fold_of[scored] = stratified_folds(Y[scored], folds, seed)
    oof = np.full(Y.shape, np.nan, np.float32)
    fold_scores = []
    steps = range(folds)
    if progress:
        from rich.progress import track

        steps = track(steps, description=f"{folds}-fold CV")
    for k in steps:
        test = fold_of == k
        train = ~test  # noisy and unscored-but-labelled clips always train
        train &= Y.sum(1) > 0
        head = train_head(make, X[train], Y[train], subset=None if subset is None else np.asarray(subset)[train],
                          **train_kwargs)
        oof[test] = head.predict_proba(X[test])
        fold_scores.append(lwlrap(Y[test], oof[test]))
    per_class, weights = lwlrap_per_class(Y[scored], oof[scored])
    return CVResult(lwlrap(Y[scored], oof[scored]), fold_scores, oof, scored, fold_of, per_class, weights)


def check_labels(Y: np.ndarray) -> None:
    if Y.ndim != 2 or Y.shape[1] == 0:
        raise ParamError("labels must be a (n_clips, n_labels) matrix with at least one label")
