"""Scores for multi-label and single-label tagging.

``lwlrap`` (label-weighted label-ranking average precision) is the FSDKaggle2019 / DCASE 2019 task 2 metric. It
equals scikit-learn's :func:`~sklearn.metrics.label_ranking_average_precision_score` with every clip weighted by
its number of true labels and clips without labels dropped, so every true (clip, label) pair counts the same.
Ties are resolved the way scikit-learn does it: a label is ranked below every label with an equal score.

All functions take ``truth`` as an (n_clips, n_labels) 0/1 array and ``scores`` as real numbers of the same shape
(probabilities, logits or any monotone score), except :func:`retrieval_metrics`, which scores ranked neighbours
(similar-sound search).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedtag.errors import DataError

__all__ = ["lwlrap", "lwlrap_per_class", "macro_map", "accuracy", "accuracy_multi", "precision_at_k",
           "retrieval_metrics"]


def _check(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 2 or scores.shape != truth.shape:
        raise DataError(f"truth and scores must be (n_clips, n_labels) arrays of one shape; got {truth.shape} "
                        f"and {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise DataError("scores contain NaN or infinite values")
    if not np.isin(truth, (0, 1)).all():
        raise DataError("truth must hold only 0 and 1")
    return truth.astype(bool), scores


def _positive_precisions(truth: np.ndarray, scores: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(n_clips, n_labels): for each true (clip, label), the precision of the ranked list cut at that label;
    zero elsewhere. Precision = true labels scoring >= it / all labels scoring >= it (sklearn's tie rule)."""
    n, n_labels = truth.shape
    out = np.zeros((n, n_labels), dtype=np.float64)
    # Broadcast in chunks so memory stays at chunk * n_labels^2 booleans (80 labels: ~6 MB per 1024 clips).
    for start in range(0, n, chunk):
        s = scores[start:start + chunk]
        t = truth[start:start + chunk]
        ge = s[:, None, :] >= s[:, :, None]  # ge[c, j, k]: label k scores >= label j
        rank = ge.sum(-1)
        hits = (ge & t[:, None, :]).sum(-1)
        out[start:start + chunk] = np.where(t, hits / rank, 0.0)
    return out


def lwlrap_per_class(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """Per-class lwlrap and the class weights (share of all true labels), such that
    ``(per_class * weights).sum() == lwlrap(truth, scores)``. Classes with no true label get 0 and weight 0."""
    truth, scores = _check(truth, scores)
    prec = _positive_precisions(truth, scores)
    n_pos = truth.sum(0)
    total = n_pos.sum()
    if total == 0:
        raise DataError("lwlrap needs at least one true label")
    per_class = np.divide(prec.sum(0), n_pos, out=np.zeros(truth.shape[1]), where=n_pos > 0)
    return per_class, n_pos / total


def lwlrap(truth, scores) -> float:
    """Label-weighted label-ranking average precision (the FSDKaggle2019 metric), in [0, 1]."""
    truth, scores = _check(truth, scores)
    total = truth.sum()
    if total == 0:
        raise DataError("lwlrap needs at least one true label")
    return float(_positive_precisions(truth, scores).sum() / total)


def macro_map(truth, scores) -> float:
    """Mean over classes (those with at least one true clip) of scikit-learn's average precision."""
    from sklearn.metrics import average_precision_score

    truth, scores = _check(truth, scores)
    present = truth.any(0)
    if not present.any():
        raise DataError("macro mAP needs at least one true label")
    return float(average_precision_score(truth[:, present], scores[:, present], average="macro"))


def accuracy(truth, scores) -> float:
    """Single-label accuracy: share of clips whose top-scoring label is their label.

    ``truth`` is either class indices (n_clips,) or a one-hot (n_clips, n_labels) array."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth)
    if truth.ndim == 2:
        if not (truth.sum(1) == 1).all():
            raise DataError("accuracy is for single-label data: every clip needs exactly one true label")
        truth = truth.argmax(1)
    if scores.ndim != 2 or truth.shape != (scores.shape[0],):
        raise DataError(f"accuracy: truth {truth.shape} does not match scores {scores.shape}")
    return float((scores.argmax(1) == truth).mean())


def accuracy_multi(truth, probs, threshold: float = 0.5) -> float:
    """fastai's ``accuracy_multi``: element-wise accuracy of ``probs > threshold`` over all (clip, label) cells.

    With many mostly-negative labels this is inflated (predicting nothing scores ~99% on 80 labels); report it
    only beside lwlrap."""
    truth, probs = _check(truth, probs)
    return float(((probs > threshold) == truth).mean())


def precision_at_k(truth, scores, k: int) -> float:
    """Mean over clips of the share of true labels among the ``k`` top-scoring ones (ties broken by index)."""
    truth, scores = _check(truth, scores)
    if not 1 <= k <= truth.shape[1]:
        raise DataError(f"k must be in [1, {truth.shape[1]}], got {k}")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(truth, top, axis=1).sum(1).mean() / k)


def retrieval_metrics(neighbour_labels: list[list[list[str] | None]], query_labels: list[list[str] | None],
                      n_relevant: Sequence[int], k: int) -> tuple[float, float]:
    """precision@k and mAP@k of ranked neighbours; a neighbour is relevant when it shares a label with the query
    (unlabelled neighbours never are). ``n_relevant[i]``: how many clips in the collection are relevant to query i
    (mAP@k divides by ``min(k, n_relevant[i])``; a query with none scores 0)."""
    precs, aps = [], []
    for neigh, ql, n_rel in zip(neighbour_labels, query_labels, n_relevant):
        qs = set(ql or ())
        rel = np.array([bool(qs & set(nl or ())) for nl in neigh[:k]] + [False] * (k - len(neigh[:k])))
        precs.append(rel.mean())
        if n_rel == 0:
            aps.append(0.0)
            continue
        hits = np.cumsum(rel)
        aps.append(float((hits / np.arange(1, k + 1) * rel).sum() / min(k, n_rel)))
    if not precs:
        raise DataError("retrieval metrics need at least one query")
    return float(np.mean(precs)), float(np.mean(aps))
