"""Decision thresholds: from scores to tags.

:func:`fit_thresholds` picks, for each class, the score threshold that maximises F1 on out-of-fold predictions
(scores the head gave clips it was not trained on; in-sample scores would put every threshold too high). A class
with fewer than ``min_positives`` positive clips has too few points for its own curve: it gets the single
threshold that maximises micro-F1 over all classes. A class whose best out-of-fold F1 stays below ``min_f1`` is one
the head cannot detect: its F1-optimal threshold is near 0 (tagging nearly every clip is the best of bad options
for a rare class), which floods the tags with false positives, so it keeps the conservative default 0.5.

:func:`decide` applies thresholds (single-label heads answer their top label), :func:`threshold_metrics` scores
the decisions (precision, recall, F1 per class, micro, macro).
"""

from __future__ import annotations

import numpy as np

from embedtag.errors import ParamError

#: thresholds are kept in [FLOOR, 1 - FLOOR]: a class whose OOF positives all scored ~0 would otherwise get a
#: threshold of ~0 and be tagged on every clip
FLOOR = 0.02
MIN_POSITIVES = 3
MIN_F1 = 0.3
DEFAULT = 0.5


def _f1_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate thresholds (midpoints between consecutive distinct scores, descending) and the F1 of
    ``p >= t`` at each. Midpoints, not the scores themselves, so that a slightly different score on new data
    does not flip the decision."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    last = np.r_[ps[1:] != ps[:-1], True]  # the last row of each run of equal scores
    ps, tp, fp = ps[last], tp[last], fp[last]
    below = np.r_[ps[1:], ps[-1] - 1e-3]
    cut = (ps + below) / 2
    n_pos = max(ys.sum(), 1e-12)
    f1 = 2 * tp / (tp + fp + n_pos)
    return cut, f1


def fit_thresholds(Y, P, *, min_positives: int = MIN_POSITIVES, floor: float = FLOOR,
                   min_f1: float = MIN_F1) -> np.ndarray:
    """Per-class thresholds (vocabulary order) maximising F1 of ``P >= t`` against the 0/1 matrix ``Y``.

    ``P`` should be out-of-fold scores. Rows with any NaN (clips never scored) are ignored. Classes with fewer than
    ``min_positives`` positives get the global threshold that maximises micro-F1; classes whose best F1 is
    below ``min_f1`` get 0.5."""
    Y = np.asarray(Y, np.float64)
    P = np.asarray(P, np.float64)
    if Y.shape != P.shape or Y.ndim != 2:
        raise ParamError(f"fit_thresholds: truth {Y.shape} and scores {P.shape} must be equal 2-d shapes")
    ok = ~np.isnan(P).any(1)
    Y, P = (Y[ok] > 0).astype(np.float64), P[ok]
    lo, hi = floor, 1 - floor
    if len(Y) == 0 or Y.sum() == 0:
        return np.full(Y.shape[1], 0.5)
    cut, f1 = _f1_curve(Y.ravel(), P.ravel())
    best = int(np.argmax(f1))
    global_t = float(np.clip(cut[best], lo, hi)) if f1[best] >= min_f1 else DEFAULT
    out = np.full(Y.shape[1], global_t)
    for j in range(Y.shape[1]):
        if Y[:, j].sum() >= min_positives:
            cut, f1 = _f1_curve(Y[:, j], P[:, j])
            best = int(np.argmax(f1))
            out[j] = float(np.clip(cut[best], lo, hi)) if f1[best] >= min_f1 else DEFAULT
    return out


def as_array(thresholds, vocabulary) -> np.ndarray:
    """Thresholds as an array in ``vocabulary`` order, from None (0.5), a float, a sequence or a dict."""
    from embedtag.frames import _thresholds

    if isinstance(thresholds, (int, float)):
        return np.full(len(vocabulary), float(thresholds))
    return _thresholds(thresholds, list(vocabulary))


def decide(P, thresholds, multi_label: bool = True) -> np.ndarray:
    """0/1 decisions: ``P >= thresholds`` for multi-label heads; the top label for single-label ones."""
    P = np.asarray(P, np.float64)
    if not multi_label:
        D = np.zeros(P.shape, bool)
        D[np.arange(len(P)), np.argmax(P, 1)] = True
        return D
    return P >= np.asarray(thresholds, np.float64)[None, :]


def labels_column(P, vocabulary, thresholds, multi_label: bool = True) -> list[str]:
    """Comma-separated labels decided for each row of ``P``."""
    D = decide(P, thresholds, multi_label)
    return [",".join(vocabulary[j] for j in np.flatnonzero(row)) for row in D]


def threshold_metrics(Y, D) -> dict:
    """Precision, recall and F1 of decisions ``D`` against truth ``Y`` (both 0/1 matrices): per class arrays
    and micro / macro averages (macro over classes with at least one positive)."""
    Y = np.asarray(Y) > 0
    D = np.asarray(D) > 0
    tp = (Y & D).sum(0).astype(float)
    fp = (~Y & D).sum(0).astype(float)
    fn = (Y & ~D).sum(0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        rec = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    present = Y.sum(0) > 0
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    micro_p = TP / (TP + FP) if TP + FP else 0.0
    micro_r = TP / (TP + FN) if TP + FN else 0.0
    micro_f1 = 2 * TP / (2 * TP + FP + FN) if TP + FP + FN else 0.0
    return {"precision": prec, "recall": rec, "f1": f1,
            "micro_precision": float(micro_p), "micro_recall": float(micro_r), "micro_f1": float(micro_f1),
            "macro_precision": float(prec[present].mean()) if present.any() else 0.0,
            "macro_recall": float(rec[present].mean()) if present.any() else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0}
